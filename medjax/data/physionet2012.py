"""PhysioNet/CinC Challenge 2012: ICU stays (first 48 h) with in-hospital death as the label.

Reads the files exactly as PhysioNet distributes them (https://physionet.org/content/
challenge-2012/1.0.0/): `set-<x>.tar.gz` or the extracted folder `set-<x>/` of
`<RecordID>.txt` files, plus `Outcomes-<x>.txt`, for x in a, b, c. A record file holds a
`Time,Parameter,Value` header and lines `HH:MM,Parameter,Value` (hours may pass 24). The general
descriptors (Age, Gender, Height, ICUType, Weight) sit at 00:00; the first Weight at 00:00 is the
descriptor, any later Weight line is the time-varying variable. -1 means unknown.

Every record file must have a row in the outcome file and every row a record file: a mismatch
means an outcome file from another set or copy, and stops the run (set A's four records with
descriptors only are records). Quirks handled, each counted in the `stats` of `read_set` and
logged: record files with no data at all (empty or a header only; left out), lines with an empty
Parameter (skipped), -1 values (a NaN descriptor; a dropped observation), placeholders (below,
dropped), a descriptor given twice (the first is kept), unknown parameter names (skipped), values
outside PHYSIOLOGICAL_RANGES (clipped).

Placeholders: no variable is legitimately negative, and a zero where the plausible range starts
above zero (Weight 0 kg, Temp 0 C, pH 0, ...) is a "not measured" code rather than a measurement.
Set A holds Weight 0 (184 times) and Temp 0 or -17.8 C (= 0 F; 63 times): clipping them would put
fake 20 kg / 20 C values into the series, so they are dropped like -1.
"""

import collections
import dataclasses
import math
import os
import re

import numpy as np
from absl import logging

from medjax.data import physionet2012_files as files
from medjax.data.physionet2012_files import URL
from medjax.errors import ConfigError, NonFiniteValue

SET_NAMES = ("a", "b", "c")
HEADER = "Time,Parameter,Value"

VARIABLES = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP",
    "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na",
    "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2",
    "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
)  # fmt: skip
DESCRIPTORS = ("Age", "Gender", "Height", "ICUType", "Weight")
CLASS_NAMES = ("survived", "in-hospital death")  # the outcome files' In-hospital_death 0, 1

# Plausible extremes in the challenge's units, wide enough that only evident errors (unit slips
# such as pH 735, placeholders such as Temp -17.8 C = 0 F, typos) are touched: bounds of survivable
# physiology and of the instruments' reporting ranges, in the spirit of the outlier tables of
# MIMIC-Extract (Wang et al. 2020). Ages above 100 (200-202 in some copies of set A: de-identified
# very old patients) become 100. Gender (0/1) and ICUType (1-4) are categories: other values are
# unknown, not clipped.
PHYSIOLOGICAL_RANGES = {
    "Albumin": (0.5, 7.0),  # g/dL
    "ALP": (1.0, 5000.0),  # IU/L
    "ALT": (1.0, 20000.0),  # IU/L (ischaemic hepatitis reaches ~10^4)
    "AST": (1.0, 30000.0),  # IU/L
    "Bilirubin": (0.0, 80.0),  # mg/dL
    "BUN": (0.0, 300.0),  # mg/dL
    "Cholesterol": (10.0, 1000.0),  # mg/dL
    "Creatinine": (0.0, 30.0),  # mg/dL
    "DiasABP": (0.0, 250.0),  # mmHg, invasive
    "FiO2": (0.21, 1.0),  # fraction
    "GCS": (3.0, 15.0),  # Glasgow coma score
    "Glucose": (10.0, 2000.0),  # mg/dL
    "HCO3": (0.0, 60.0),  # mmol/L
    "HCT": (5.0, 75.0),  # %
    "HR": (0.0, 300.0),  # bpm
    "K": (1.0, 15.0),  # mEq/L
    "Lactate": (0.0, 40.0),  # mmol/L
    "Mg": (0.0, 10.0),  # mmol/L
    "MAP": (0.0, 300.0),  # mmHg, invasive
    "MechVent": (0.0, 1.0),  # on ventilator
    "Na": (90.0, 200.0),  # mEq/L
    "NIDiasABP": (0.0, 250.0),  # mmHg
    "NIMAP": (0.0, 300.0),  # mmHg
    "NISysABP": (0.0, 300.0),  # mmHg
    "PaCO2": (5.0, 150.0),  # mmHg
    "PaO2": (0.0, 700.0),  # mmHg
    "pH": (6.5, 8.0),
    "Platelets": (0.0, 2000.0),  # 10^3/uL
    "RespRate": (0.0, 100.0),  # breaths/min
    "SaO2": (0.0, 100.0),  # %
    "SysABP": (0.0, 300.0),  # mmHg, invasive
    "Temp": (20.0, 45.0),  # degrees C
    "TroponinI": (0.0, 100.0),  # ug/L
    "TroponinT": (0.0, 50.0),  # ug/L
    "Urine": (0.0, 15000.0),  # mL per charting interval
    "WBC": (0.0, 500.0),  # 10^3/uL
    "Weight": (20.0, 300.0),  # kg, also the descriptor's range
    "Age": (15.0, 100.0),  # years (the challenge admitted adults, 15 and over)
    "Height": (100.0, 230.0),  # cm
}
_CATEGORIES = {"Gender": (0.0, 1.0), "ICUType": (1.0, 2.0, 3.0, 4.0)}
_VARIABLE_INDEX = {name: i for i, name in enumerate(VARIABLES)}
_DESCRIPTOR_INDEX = {name: i for i, name in enumerate(DESCRIPTORS)}
_LOW = np.array([PHYSIOLOGICAL_RANGES[v][0] for v in VARIABLES], np.float32)
_HIGH = np.array([PHYSIOLOGICAL_RANGES[v][1] for v in VARIABLES], np.float32)
_CLOCK = re.compile(r"(\d{1,3}):([0-5]\d)")


@dataclasses.dataclass(frozen=True)
class Record:
    """One ICU stay: irregular observations sorted by time, and the general descriptors.

    `times` float32 [K] hours since admission, `variables` int32 [K] indices into VARIABLES,
    `values` float32 [K] clipped to PHYSIOLOGICAL_RANGES (unknown -1 values dropped),
    `descriptors` float32 [5] in DESCRIPTORS order, NaN where unknown.
    """

    record_id: int
    times: np.ndarray
    variables: np.ndarray
    values: np.ndarray
    descriptors: np.ndarray


def read_set(directory: str, set_name: str) -> tuple[list[Record], np.ndarray, dict]:
    """Reads challenge set `set_name` ('a', 'b' or 'c') from the folder `directory`.

    Returns (records sorted by id, labels int32 [N] in-hospital death, stats). Record files
    without data are left out; a record file without an outcome row, or an outcome row without a
    record file, raises ConfigError. `stats` holds counts: record_files, empty_records (+ _ids),
    records, deaths, observations, empty_parameter_lines, unknown_values_dropped (-1),
    placeholders_dropped (per variable), unknown_descriptors (records with NaN, per descriptor),
    repeated_descriptors, values_clipped (+ clipped_per_variable), unknown_parameters (per name).
    """
    if set_name not in SET_NAMES:
        raise ConfigError(f"unknown PhysioNet 2012 set {set_name!r}; valid: {', '.join(SET_NAMES)}")
    outcomes = files.read_outcomes(directory, set_name)
    counts = collections.Counter()
    unknown_names, clipped, placeholders = (collections.Counter() for _ in range(3))
    parsed, empty, seen = {}, [], set()
    for display, record_id, text in files.record_texts(directory, set_name):
        if record_id in seen:
            raise ConfigError(
                f"record {record_id} appears twice in set-{set_name} ({display}); keep one copy"
            )
        seen.add(record_id)
        record = _parse_record(
            text, display, record_id, counts, unknown_names, clipped, placeholders
        )
        if record is None:
            empty.append(record_id)
        else:
            parsed[record_id] = record
    if not seen:
        raise ConfigError(
            f"the PhysioNet 2012 set-{set_name} in {directory!r} holds no record files named "
            f"<RecordID>.txt (e.g. set-{set_name}/132539.txt); extract or download "
            f"set-{set_name}.tar.gz again from {URL}"
        )
    _check_ids_match(seen, outcomes, set_name)
    records = [parsed[i] for i in sorted(parsed)]
    labels = np.array([outcomes[r.record_id] for r in records], np.int32)
    stats = _stats(records, labels, len(seen), sorted(empty), counts, placeholders, clipped,
                   unknown_names)  # fmt: skip
    _log_stats(set_name, stats)
    return records, labels, stats


def read_record(path: str) -> Record:
    """One record file (`<RecordID>.txt`, as in the sets), cleaned as `read_set` cleans it;
    ConfigError if it is no record file or holds no data."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable PhysioNet 2012 record file ({e})") from None
    first = text.partition("\n")[0].strip()
    if first != HEADER:
        raise ConfigError(
            f"{path}: not a PhysioNet 2012 record file: it starts with {first[:40]!r}, expected "
            f"the header {HEADER!r}"
        )
    stated = re.search(r"^[^,\n]*,\s*RecordID\s*,\s*(\d+)", text, re.MULTILINE)
    stem = os.path.basename(path).removesuffix(".txt")
    record_id = int(stated.group(1)) if stated else int(stem) if stem.isdecimal() else 0
    counters = [collections.Counter() for _ in range(4)]
    record = _parse_record(text, path, record_id, *counters)
    if record is None:
        raise ConfigError(f"{path}: the record holds no observation and no descriptor")
    return record


def _check_ids_match(record_ids, outcomes, set_name) -> None:
    """ConfigError unless every record file has an outcome row and every row a record file."""
    problems = [
        f"{len(ids)} {what} ({few_ids(ids)})"
        for ids, what in [
            (sorted(record_ids - outcomes.keys()), "record file(s) without an outcome row"),
            (sorted(outcomes.keys() - record_ids), "outcome row(s) without a record file"),
        ]
        if ids
    ]
    if problems:
        raise ConfigError(
            f"Outcomes-{set_name}.txt does not match set-{set_name}: {' and '.join(problems)}; "
            f"the outcome file must be the one distributed with set {set_name} ({URL})"
        )


def few_ids(ids) -> str:
    """The first five of `ids`, comma-separated, for messages."""
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


def _stats(records, labels, num_files, empty, counts, placeholders, clipped,
           unknown_names) -> dict:  # fmt: skip
    """read_set's `stats` (see there)."""
    return {
        "record_files": num_files,
        "empty_records": len(empty),
        "empty_records_ids": empty,
        "records": len(records),
        "deaths": int(labels.sum()),
        "observations": int(sum(len(r.times) for r in records)),
        "empty_parameter_lines": counts["empty_parameter_lines"],
        "unknown_values_dropped": counts["unknown_values_dropped"],
        "placeholders_dropped": dict(sorted(placeholders.items())),
        "unknown_descriptors": {
            name: sum(int(np.isnan(r.descriptors[i])) for r in records)
            for i, name in enumerate(DESCRIPTORS)
        },
        "repeated_descriptors": counts["repeated_descriptors"],
        "values_clipped": sum(clipped.values()),
        "clipped_per_variable": dict(sorted(clipped.items())),
        "unknown_parameters": dict(sorted(unknown_names.items())),
    }


def _log_stats(set_name: str, stats: dict) -> None:
    logging.info(
        "PhysioNet 2012 set %s: %d records (%d deaths), %d observations from %d record files; "
        "%d unknown (-1) values dropped; records with unknown descriptors: %s",
        set_name, stats["records"], stats["deaths"], stats["observations"],
        stats["record_files"], stats["unknown_values_dropped"], stats["unknown_descriptors"],
    )  # fmt: skip
    if stats["empty_records"]:
        logging.warning(
            "set %s: %d record files hold no data and are left out: %s",
            set_name, stats["empty_records"], few_ids(stats["empty_records_ids"]),
        )  # fmt: skip
    for name, count in stats["unknown_descriptors"].items():
        if count and count == stats["records"]:
            logging.warning("set %s: no record gives the descriptor %s", set_name, name)
    for key, what in [
        ("empty_parameter_lines", "lines with an empty Parameter skipped"),
        ("repeated_descriptors", "repeated descriptor lines ignored (the first value is kept)"),
        ("unknown_parameters", "lines with unknown parameter names skipped"),
        ("placeholders_dropped", "placeholder values (<0, or 0 where impossible) dropped"),
        ("clipped_per_variable", "values clipped to PHYSIOLOGICAL_RANGES"),
    ]:
        if stats[key]:
            detail = stats[key]
            if isinstance(detail, dict):
                logging.warning("set %s: %d %s: %s", set_name, sum(detail.values()), what, detail)
            else:
                logging.warning("set %s: %d %s", set_name, detail, what)


def _parse_record(
    text, display, record_id, counts, unknown_names, clipped, placeholders
) -> Record | None:
    """Parses one record file; None when it holds no data (nothing, a header only, or no
    observation and no known descriptor)."""
    lines = text.splitlines()
    if not "".join(lines).strip():
        return None
    if lines[0].strip() != HEADER:
        raise ConfigError(
            f'{display} line 1: "{lines[0]}" is not the header "{HEADER}"; '
            f"the file is damaged: re-download the set from {URL}"
        )
    descriptors = np.full(len(DESCRIPTORS), np.nan, np.float32)
    described = [False] * len(DESCRIPTORS)
    times, variables, values = [], [], []
    hours = {}  # "HH:MM" -> hours, parsed once per distinct clock string
    for number, line in enumerate(lines[1:], start=2):
        parsed = _parse_line(line, f"{display} line {number}", hours, counts)
        if parsed is None:
            continue
        time, name, value = parsed
        descriptor = _DESCRIPTOR_INDEX.get(name)
        if name == "Weight" and (time > 0 or described[descriptor]):
            descriptor = None  # the time-varying Weight
        if descriptor is not None:
            if described[descriptor]:
                counts["repeated_descriptors"] += 1
                continue
            described[descriptor] = True
            descriptors[descriptor] = _descriptor_value(name, value, clipped, placeholders)
        elif name in _VARIABLE_INDEX:
            if value == -1:
                counts["unknown_values_dropped"] += 1
                continue
            times.append(time)
            variables.append(_VARIABLE_INDEX[name])
            values.append(value)
        elif name == "RecordID":
            if value != record_id:
                raise ConfigError(
                    f"{display} line {number}: RecordID {value:.10g} differs from the file name; "
                    f"name record files <RecordID>.txt as distributed"
                )
        else:
            unknown_names[name] += 1
    series = _cleaned_series(times, variables, values, clipped, placeholders)
    if not len(series[0]) and np.isnan(descriptors).all():
        return None
    return Record(record_id, *series, descriptors)


def _parse_line(line: str, where: str, hours: dict, counts) -> tuple[float, str, float] | None:
    """(hours, parameter, value) of a `HH:MM,Parameter,Value` line; None for a blank line or
    an empty parameter (counted)."""
    fields = line.strip().split(",")
    if fields == [""]:
        return None
    if len(fields) == 3 and not fields[1].strip():
        counts["empty_parameter_lines"] += 1
        return None
    problem = (
        f'{where}: "{line}" is not HH:MM,Parameter,Value (a number); '
        f"fix the line or re-download the set from {URL}"
    )
    try:
        clock, name, raw = fields
        value = float(raw)
        if clock not in hours:
            h, m = _CLOCK.fullmatch(clock.strip()).groups()
            hours[clock] = int(h) + int(m) / 60
    except (ValueError, AttributeError):
        raise ConfigError(problem) from None
    if not math.isfinite(value):  # its own kind: medjax.infer refuses the record, not the file
        raise NonFiniteValue(problem.replace("(a number)", "(a finite number)"))
    return hours[clock], name.strip(), value


def _descriptor_value(name: str, value: float, clipped, placeholders) -> float:
    """A general descriptor's value: NaN where unknown (-1, an unknown category, or a
    placeholder, counted), clipped to PHYSIOLOGICAL_RANGES (counted)."""
    if value == -1 or (name in _CATEGORIES and value not in _CATEGORIES[name]):
        return math.nan
    if name in PHYSIOLOGICAL_RANGES and value <= 0:
        placeholders[name] += 1
        return math.nan
    if name in PHYSIOLOGICAL_RANGES:
        low, high = PHYSIOLOGICAL_RANGES[name]
        if not low <= value <= high:
            clipped[name] += 1
        return min(max(value, low), high)
    return value


def _cleaned_series(times, variables, values, clipped, placeholders):
    """(times, variables, values) sorted by time, placeholders dropped and values clipped to
    PHYSIOLOGICAL_RANGES (both counted per variable)."""
    order = np.argsort(np.asarray(times, np.float32), kind="stable")
    times = np.asarray(times, np.float32)[order]
    variables = np.asarray(variables, np.int32)[order]
    values = np.asarray(values, np.float32)[order]
    placeholder = (values < 0) | ((values == 0) & (_LOW[variables] > 0))
    for v, n in zip(*np.unique(variables[placeholder], return_counts=True)):
        placeholders[VARIABLES[v]] += int(n)
    times, variables, values = times[~placeholder], variables[~placeholder], values[~placeholder]
    outside = (values < _LOW[variables]) | (values > _HIGH[variables])
    for v, n in zip(*np.unique(variables[outside], return_counts=True)):
        clipped[VARIABLES[v]] += int(n)
    return times, variables, np.clip(values, _LOW[variables], _HIGH[variables])
