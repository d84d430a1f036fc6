"""The operating point of a binary model: a threshold chosen on validation, then applied as is
to the split that is reported (never chosen on it).

`youden` maximises Youden's J = sensitivity + specificity - 1; `sensitivity` takes the highest
threshold whose validation sensitivity reaches a target (screening: miss at most 1 - target);
`min_se_ppv` maximises min(sensitivity, PPV), PhysioNet 2012's event-1 score, as an entrant who
could not see the test set had to. Of equal optima, the highest threshold. A case is called
positive iff its score >= the threshold.
"""

import numpy as np

from medjax.errors import ConfigError
from medjax.stats import metrics

METHODS = ("youden", "sensitivity", "min_se_ppv")


def check(method: str, target_sensitivity: float) -> None:
    """Raises ConfigError for an unknown method or a target outside (0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"evaluation.operating_point={method!r}; valid: {', '.join(METHODS)}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ConfigError(f"evaluation.target_sensitivity={target_sensitivity} must be in (0, 1]")


def choose_threshold(labels, scores, method: str, target_sensitivity: float) -> float:
    """The threshold on `scores` that `method` picks on these (validation) labels."""
    check(method, target_sensitivity)
    if method == "min_se_ppv":
        precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
        score = np.minimum(precision, recall)[:-1]  # thresholds ascend; the last point has none
        return float(thresholds[len(score) - 1 - np.argmax(score[::-1])])
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)  # thresholds descend from +inf
    if method == "youden":
        best = 1 + np.argmax((tpr - fpr)[1:])  # the first (highest) threshold of the maximum
    else:
        best = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(thresholds[best])


def at_threshold(labels, scores, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and accuracy of calling score >= threshold positive."""
    labels = np.asarray(labels)
    predicted = (np.asarray(scores) >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = metrics.confusion_matrix(labels, predicted, 2).astype(np.float64)
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": (tp + tn) / labels.size,
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")
