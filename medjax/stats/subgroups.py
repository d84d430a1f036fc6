"""Metrics of a binary model within subgroups of patients (age band, sex, ICU type), each with
a stratified bootstrap interval of its AUROC and the operating point's metrics."""

import math

import numpy as np

from medjax.stats import bootstrap, metrics, operating_point

AGE_BANDS = ((0, 45, "<45"), (45, 65, "45-64"), (65, 80, "65-79"), (80, math.inf, ">=80"))
SEXES = {0: "female", 1: "male"}
ICU_TYPES = {1: "coronary care", 2: "cardiac surgery recovery", 3: "medical", 4: "surgical"}
ORDER = [*(name for *_, name in AGE_BANDS), *SEXES.values(), *ICU_TYPES.values(), "unknown"]
COLUMNS = ("grouping", "group", "n", "positives", "auroc", "auroc_low", "auroc_high",
           "sensitivity", "specificity", "ppv", "npv")  # fmt: skip


def icu_groups(age, gender, icu_type) -> dict[str, np.ndarray]:
    """{grouping: the group name of each stay [N]} from raw descriptors (NaN: unknown); a
    grouping the data never records (the shared PhysioNet copy has no ICU type) is left out."""
    groups = {
        "age": _names(
            age, lambda a: next(name for low, high, name in AGE_BANDS if low <= a < high)
        ),
        "sex": _names(gender, lambda g: SEXES.get(int(g), "unknown")),
        "icu_type": _names(icu_type, lambda t: ICU_TYPES.get(int(t), "unknown")),
    }
    return {k: v for k, v in groups.items() if not np.all(v == "unknown")}


def _names(values, name_of) -> np.ndarray:
    return np.array(["unknown" if np.isnan(v) else name_of(v) for v in np.asarray(values, float)])


def subgroup_rows(labels, scores, groups: dict[str, np.ndarray], threshold: float) -> list[dict]:
    """One row (COLUMNS) per group: its size, positives, AUROC with its 95% interval, and the
    metrics of the operating point `threshold`; nan where a group has one class only."""
    rows = []
    for grouping, names in groups.items():
        for group in sorted(set(names), key=ORDER.index):
            member = names == group
            y, s = labels[member], scores[member]
            both = 0 < y.sum() < y.size
            low, high = bootstrap.intervals(y, s)["auroc"] if both else (math.nan, math.nan)
            rows.append({
                "grouping": grouping,
                "group": group,
                "n": int(member.sum()),
                "positives": int(y.sum()),
                "auroc": metrics.roc_auc(y, s),
                "auroc_low": low,
                "auroc_high": high,
                **operating_point.at_threshold(y, s, threshold),
            })  # fmt: skip
    return rows
