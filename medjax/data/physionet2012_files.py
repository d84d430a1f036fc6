"""The PhysioNet 2012 files as distributed: each set's tarball or extracted folder of
`<RecordID>.txt` files, and its `Outcomes-<x>.txt`; the parsing is physionet2012's."""

import os
import re
import tarfile

from absl import logging

from medjax.errors import ConfigError

URL = "https://physionet.org/content/challenge-2012/1.0.0/"
LABEL_COLUMN = "In-hospital_death"
_RECORD_FILE = re.compile(r"(\d+)\.txt")


def read_outcomes(directory: str, set_name: str) -> dict[int, int]:
    if not os.path.isdir(directory):
        raise ConfigError(
            f"PhysioNet 2012 data folder (data.dir) {directory!r} does not exist; expected a "
            f"folder with set-{set_name}.tar.gz (or set-{set_name}/) and Outcomes-{set_name}.txt "
            f"as downloaded from {URL}; set --config.data.dir to it"
        )
    path = os.path.join(directory, f"Outcomes-{set_name}.txt")
    if not os.path.isfile(path):
        raise ConfigError(
            f"outcome file Outcomes-{set_name}.txt is missing: expected it at {path!r}, next to "
            f"set-{set_name}; download it from {URL} into {directory!r}"
        )
    with open(path, "rb") as f:
        lines = _decode(f.read(), path).splitlines()
    header = [c.strip() for c in lines[0].split(",")] if lines else []
    if "RecordID" not in header or LABEL_COLUMN not in header:
        raise ConfigError(
            f"{path} line 1: {lines[0] if lines else ''!r} lacks the RecordID or {LABEL_COLUMN} "
            f"column; expected RecordID,SAPS-I,SOFA,Length_of_stay,Survival,{LABEL_COLUMN}; use "
            f"the outcome file from {URL}"
        )
    id_col, label_col = header.index("RecordID"), header.index(LABEL_COLUMN)
    outcomes = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [c.strip() for c in line.split(",")]
        valid = len(fields) == len(header) and fields[id_col].isdigit()
        if not valid or fields[label_col] not in ("0", "1"):
            raise ConfigError(
                f"{path} line {number}: {line!r} is not {','.join(header)} with an integer "
                f"RecordID and {LABEL_COLUMN} 0 or 1; fix or re-download the file from {URL}"
            )
        record_id = int(fields[id_col])
        if record_id in outcomes:
            raise ConfigError(f"{path} line {number}: RecordID {record_id} appears twice")
        outcomes[record_id] = int(fields[label_col])
    return outcomes


def record_texts(directory: str, set_name: str):
    """Yields (display name, record id, text) for each `<RecordID>.txt` of the set."""
    folder = os.path.join(directory, f"set-{set_name}")
    tarball = folder + ".tar.gz"
    if os.path.isdir(folder):
        if os.path.isfile(tarball):
            logging.info("reading the folder %s (the tarball next to it is ignored)", folder)
        for name in sorted(os.listdir(folder)):
            match = _RECORD_FILE.fullmatch(name)
            if match and os.path.isfile(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb") as f:
                    display = f"set-{set_name}/{name}"
                    yield display, int(match.group(1)), _decode(f.read(), display)
    elif os.path.isfile(tarball):
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for member in tar:
                    match = _RECORD_FILE.fullmatch(os.path.basename(member.name))
                    if match and member.isfile():
                        data = tar.extractfile(member).read()
                        yield member.name, int(match.group(1)), _decode(data, member.name)
        except (tarfile.TarError, EOFError, OSError) as e:
            reason = " ".join(str(e).split())  # one line
            raise ConfigError(
                f"{tarball} is not a readable .tar.gz ({reason}); download it again from {URL}"
            ) from e
    else:
        present = sorted(os.listdir(directory))
        raise ConfigError(
            f"found neither set-{set_name}.tar.gz nor a set-{set_name}/ folder in {directory!r}, "
            f"which holds: {', '.join(present[:20]) or 'nothing'}"
            f"{', ...' if len(present) > 20 else ''}; put set-{set_name}.tar.gz (or its "
            f"extracted set-{set_name}/ folder) from {URL} there"
        )


def _decode(data: bytes, display: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{display} is not a text file ({e}); re-download it from {URL}") from e
