"""Scoring of class probabilities, shared by the image and ICU classification tasks: metrics
with the loss, bootstrap intervals, log-odds for the operating point, PhysioNet 2012's score,
prediction tables."""

import os

import numpy as np

from medjax.outputs import plots, writers
from medjax.stats import bootstrap, metrics, operating_point


def class_metrics(gathered: dict[str, np.ndarray]) -> dict[str, float]:
    """Classification metrics plus `loss`, the mean negative log-likelihood of the labels."""
    probs, labels = gathered["probs"].astype(np.float64), gathered["label"]
    result = metrics.classification_metrics(labels, probs)
    label_probs = probs[np.arange(len(labels)), labels]
    result["loss"] = float(-np.mean(np.log(np.maximum(label_probs, np.finfo(np.float64).tiny))))
    return result


HEADLINE_BINARY = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "ece", "brier")


def binary_intervals(gathered: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """95% stratified bootstrap intervals of the headline binary metrics (threshold 0.5)."""
    found = bootstrap.intervals(
        gathered["label"],
        gathered["probs"][:, 1],
        threshold=0.5,
        calibration_bins=metrics.ECE_BINS,
    )
    return {name: found[name] for name in HEADLINE_BINARY if name in found}


def binary_log_odds(gathered: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the log-odds of class 1 of a two-class softmax."""
    logits = gathered["logits"].astype(np.float64)
    return gathered["label"], logits[:, 1] - logits[:, 0]


def min_se_ppv(val, evaluated) -> dict[str, float]:
    """PhysioNet 2012's score as the challenge ranked entrants (a Task.final_metrics):
    `min_se_ppv`, min(sensitivity, PPV) of `evaluated` at `min_se_ppv_threshold`, the
    threshold that maximises it on `val` (each a (labels, scores) pair)."""
    threshold = operating_point.choose_threshold(*val, "min_se_ppv", 1.0)
    at_threshold = operating_point.at_threshold(*evaluated, threshold)
    score = float(np.minimum(at_threshold["sensitivity"], at_threshold["ppv"]))
    return {"min_se_ppv_threshold": threshold, "min_se_ppv": score}


def multilabel_metrics(gathered: dict[str, np.ndarray]) -> dict[str, float]:
    """Multi-label metrics plus `loss`, the mean over outputs of the binary cross-entropy."""
    probs, labels = gathered["probs"].astype(np.float64), gathered["label"]
    result = metrics.multilabel_metrics(labels, probs)
    tiny = np.finfo(np.float64).tiny
    likelihood = np.where(labels == 1, probs, 1 - probs)
    result["loss"] = float(-np.mean(np.log(np.maximum(likelihood, tiny))))
    return result


def write_class_outputs(workdir, split, gathered, ids, class_names, dataset_name) -> None:
    """predictions/<split>.csv, plots/roc.png (two classes) and plots/confusion_matrix.png
    (single-label classes)."""
    probs, labels = gathered["probs"], gathered["label"]
    title = f"{dataset_name}, {split}"
    multilabel = labels.ndim == 2
    if len(class_names) == 2 and not multilabel:
        fpr, tpr, _ = metrics.roc_curve(labels, probs[:, 1])
        auroc = metrics.roc_auc(labels, probs[:, 1])
        plots.roc_curve(os.path.join(workdir, "plots", "roc.png"), fpr, tpr, auroc, title)
    if not multilabel:
        counts = metrics.confusion_matrix(labels, probs.argmax(1), len(class_names))
        path = os.path.join(workdir, "plots", "confusion_matrix.png")
        plots.confusion_matrix(path, counts, class_names, title)
    path = os.path.join(workdir, "predictions", f"{split}.csv")
    writers.write_table(path, *prediction_table(gathered, ids))


def prediction_table(gathered, ids) -> tuple[list[str], list[list]]:
    """(header, rows) of per-example predictions: id, the label(s), prediction (argmax;
    single-label only), then prob_<class> columns."""
    probs, labels = gathered["probs"], gathered["label"]
    multilabel = labels.ndim == 2
    classes = range(probs.shape[1])
    label_columns = [f"label_{c}" for c in classes] if multilabel else ["label", "prediction"]
    rows = []
    for index, label, row in zip(gathered["index"], labels, probs):
        label_values = list(label) if multilabel else [label, row.argmax()]
        rows.append([ids[index], *map(int, label_values), *(f"{p:.6g}" for p in row)])
    return ["id", *label_columns, *(f"prob_{c}" for c in classes)], rows
