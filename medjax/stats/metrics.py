"""Exact evaluation metrics, computed on the host in float64 numpy from gathered outputs.

Everything here works on whole evaluation sets (no streaming approximations): the trainer
collects per-example outputs with `OutputGatherer`, then calls `classification_metrics` or the
individual metrics. Sorting-based metrics are O(N log N) and vectorised, so N ~ 1e6 is fast.

Conventions:
- Binary metrics take `labels` in {0, 1} (class 1 is positive) and real-valued `scores`.
- Multi-class metrics take integer `labels` [N] in [0, C) and `probs` [N, C] whose rows sum to 1.
- A metric that is undefined on the data (e.g. AUROC with one class present, sensitivity with no
  positives, precision with no predicted positives) is `nan`; no warning is emitted.
- Bad inputs raise `ValueError` naming the problem and the fix.
"""

import numpy as np

_PROB_SUM_ATOL = 1e-2  # loose enough for bfloat16 models, tight enough to catch logits
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error


def _check_binary(labels, scores):
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got shapes {labels.shape} and "
            f"{scores.shape}; for [N, C] probabilities pass probs[:, 1] as scores."
        )
    if labels.size == 0:
        raise ValueError("labels and scores are empty; pass at least one example.")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise ValueError(
            f"binary labels must be 0 or 1; labels[{bad[0]}] = {labels[bad[0]]}. "
            "Map the positive class to 1 and all others to 0."
        )
    if not np.all(np.isfinite(scores)):
        i = np.flatnonzero(~np.isfinite(scores))[0]
        raise ValueError(f"scores must be finite; scores[{i}] = {scores[i]}. Check model outputs.")
    return labels.astype(bool), scores


def _check_probs(labels, probs):
    """Validates integer labels [N] and probabilities [N, C]; returns (int64, float64) arrays."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(
            f"probs must be 2-D [N, C], got shape {probs.shape}; for binary scores p "
            "pass np.stack([1 - p, p], axis=1)."
        )
    n, c = probs.shape
    if c < 2:
        raise ValueError(f"probs must have C >= 2 class columns, got {c}; include class 0.")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"labels must be 1-D with one entry per row of probs: got labels shape "
            f"{labels.shape} and probs shape {probs.shape}. Pass class indices, not one-hot."
        )
    if n == 0:
        raise ValueError("labels and probs are empty; pass at least one example.")
    if not np.all(np.isfinite(probs)):
        i = np.flatnonzero(~np.all(np.isfinite(probs), axis=1))[0]
        raise ValueError(f"probs must be finite; row {i} is {probs[i]}. Check model outputs.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.issubdtype(labels.dtype, np.floating):
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise ValueError(
                f"labels must be integer class indices; labels[{bad[0]}] = {labels[bad[0]]} "
                "is not an integer. Pass class indices (e.g. argmax of one-hot labels)."
            )
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        raise ValueError(
            f"labels must lie in [0, {c}) for probs with {c} classes; labels[{bad[0]}] = "
            f"{labels[bad[0]]}. Check the label encoding or the model's number of classes."
        )
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PROB_SUM_ATOL)
    if bad.size:
        raise ValueError(
            f"probs rows must sum to 1; row {bad[0]} sums to {sums[bad[0]]:.4g}. "
            "Pass softmax probabilities, not logits."
        )
    return labels.astype(np.int64), probs


def _safe_div(num, den):
    """num / den as float, nan where den == 0 (no warning)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out if out.ndim else float(out)


def _counts_at_thresholds(labels, scores):
    """Cumulative (fps, tps) at each distinct score, from the highest; thresholds descending."""
    order = np.argsort(scores, kind="stable")[::-1]
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last].astype(np.float64)
    fps = last + 1.0 - tps
    return fps, tps, scores[last]


def roc_auc(labels, scores) -> float:
    """Exact area under the ROC curve (Mann-Whitney U, ties count 1/2).

    Returns nan when only one class is present in `labels`.
    """
    labels, scores = _check_binary(labels, scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
    rank_sum = mean_rank[inverse.reshape(-1)][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels, scores):
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) at threshold +inf.

    Same points as `sklearn.metrics.roc_curve(..., drop_intermediate=False)`; a point predicts
    positive iff score >= threshold. fpr (tpr) is all nan when there are no negatives (positives).
    """
    fps, tps, thresholds = _counts_at_thresholds(*_check_binary(labels, scores))
    fpr = _safe_div(np.r_[0.0, fps], fps[-1])
    tpr = _safe_div(np.r_[0.0, tps], tps[-1])
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(labels, scores):
    """(precision, recall, thresholds) as `sklearn.metrics.precision_recall_curve`.

    Thresholds ascend; the last point (precision 1, recall 0) has no threshold. Recall is all nan
    when there are no positives (scikit-learn sets it to 1 with a warning).
    """
    fps, tps, thresholds = _counts_at_thresholds(*_check_binary(labels, scores))
    precision = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    recall = _safe_div(tps, tps[-1])
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(labels, scores) -> float:
    """AUPRC as `sklearn.metrics.average_precision_score`: sum_n (R_n - R_{n-1}) P_n.

    Uninterpolated, over distinct thresholds. nan when there are no positives.
    """
    precision, recall, _ = precision_recall_curve(labels, scores)
    if np.isnan(recall[0]):
        return float("nan")
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def min_sensitivity_ppv_oracle(labels, scores) -> float:
    """min(Se, +P) at the threshold where it is highest on these very labels: an oracle, which
    no PhysioNet 2012 entrant had (the challenge's score fixes the threshold on other data:
    `operating_point.choose_threshold(..., "min_se_ppv")`). nan without positives.
    """
    precision, recall, _ = precision_recall_curve(labels, scores)
    if np.isnan(recall).all():
        return float("nan")
    return float(np.max(np.minimum(precision, recall)))


def macro_roc_auc(labels, probs) -> float:
    """One-vs-rest AUROC averaged over classes, as MedMNIST reports multi-class AUC.

    Equals `sklearn.metrics.roc_auc_score(onehot, probs, average='macro')`. Classes absent from
    `labels` (no positives) are skipped; nan when fewer than 2 classes are present.
    """
    labels, probs = _check_probs(labels, probs)
    present = np.unique(labels)
    if present.size < 2:
        return float("nan")
    return float(np.mean([roc_auc(labels == c, probs[:, c]) for c in present]))


def confusion_matrix(labels, predictions, num_classes) -> np.ndarray:
    """[C, C] int64 counts; rows are true classes, columns predicted classes."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D of the same length, got shapes {labels.shape} "
            f"and {predictions.shape}."
        )
    for name, x in (("labels", labels), ("predictions", predictions)):
        bad = np.flatnonzero((x < 0) | (x >= num_classes) | (x != np.round(x)))
        if bad.size:
            raise ValueError(
                f"{name} must be integers in [0, {num_classes}); {name}[{bad[0]}] = {x[bad[0]]}. "
                "Check num_classes and the label encoding."
            )
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def calibration_bins(probabilities, num_bins: int) -> np.ndarray:
    """The bin of each probability among `num_bins` equal-width bins on (0, 1]: bin b holds
    (b/M, (b+1)/M], and 0 joins the first bin."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return np.clip(np.searchsorted(edges, probabilities, side="left") - 1, 0, num_bins - 1)


def expected_calibration_error(labels, probs, num_bins=ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017) with `num_bins` equal-width bins on (0, 1].

    confidence = max_c probs, correct = (argmax == label); bin b holds confidences in
    (b/M, (b+1)/M]; ECE = sum_b |B_b|/N * |acc_b - conf_b|.
    """
    labels, probs = _check_probs(labels, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = calibration_bins(confidence, num_bins)
    gap = np.bincount(bins, correct - confidence, minlength=num_bins)  # |B|(acc - conf) per bin
    return float(np.abs(gap).sum() / labels.size)


def brier_score(labels, probs) -> float:
    """Brier score. C == 2: mean (p_1 - y)^2 (= sklearn's brier_score_loss); C > 2: mean over
    examples of sum_c (p_c - onehot_c)^2."""
    labels, probs = _check_probs(labels, probs)
    if probs.shape[1] == 2:
        return float(np.mean((probs[:, 1] - labels) ** 2))
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def classification_metrics(labels, probs, *, threshold=0.5) -> dict[str, float]:
    """Headline metrics for integer `labels` [N] in [0, C) and `probs` [N, C].

    C == 2 (class 1 positive, predicted positive iff probs[:, 1] >= threshold): auroc, auprc,
    accuracy, sensitivity, specificity, f1, balanced_accuracy, ece, brier.
    C > 2 (prediction = argmax): auroc (macro one-vs-rest), accuracy, balanced_accuracy and f1
    (macro over classes present in `labels`), ece, brier.
    Undefined values are nan (e.g. sensitivity with no positives, f1 with no positives and none
    predicted). ECE always uses the argmax prediction and its probability.
    """
    labels, probs = _check_probs(labels, probs)
    c = probs.shape[1]
    preds = (probs[:, 1] >= threshold).astype(np.int64) if c == 2 else probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, c).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)  # 2TP / (2TP + FP + FN)
    out = {
        "accuracy": float(tp.sum() / labels.size),
        "balanced_accuracy": float(recall[present].mean()),
        "ece": expected_calibration_error(labels, probs),
        "brier": brier_score(labels, probs),
    }
    if c == 2:
        out.update(
            auroc=roc_auc(labels, probs[:, 1]),
            auprc=average_precision(labels, probs[:, 1]),
            sensitivity=float(recall[1]),
            specificity=float(recall[0]),
            f1=float(f1[1]),
        )
    else:
        out.update(auroc=macro_roc_auc(labels, probs), f1=float(f1[present].mean()))
    return out


def multilabel_metrics(labels, probs, *, threshold=0.5) -> dict[str, float]:
    """MedMNIST's multi-label metrics for 0/1 `labels` [N, C] and independent `probs` [N, C].

    auroc and auprc: the mean over outputs of each output's binary metric (outputs with one
    class present are left out); accuracy: the mean over outputs of the accuracy of
    probs >= threshold; brier: the mean squared error over all entries.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probs.shape:
        raise ValueError(
            f"multi-label labels and probs must both be [N, C]; got {labels.shape} and "
            f"{probs.shape}"
        )
    columns = [(labels[:, c], probs[:, c]) for c in range(labels.shape[1])]
    return {
        "auroc": _mean_defined([roc_auc(y, p) for y, p in columns]),
        "auprc": _mean_defined([average_precision(y, p) for y, p in columns]),
        "accuracy": float(np.mean((probs >= threshold) == (labels == 1))),
        "brier": float(np.mean((probs - labels) ** 2)),
    }


def _mean_defined(values) -> float:
    """The mean of the values that are not nan; nan when none is defined."""
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


class OutputGatherer:
    """Collects per-example eval outputs across padded batches, dropping padding rows.

    >>> g = OutputGatherer()
    >>> for batch in batches: g.add({"label": y, "probs": p}, valid=batch["valid"])
    >>> outputs = g.result()  # {"label": [N], "probs": [N, C]}, in order
    """

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, outputs: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Keeps the rows of each output where `valid` (bool or 0/1, shape [B]) is nonzero."""
        valid = np.asarray(valid)
        if valid.ndim != 1:
            raise ValueError(f"valid must be 1-D [batch], got shape {valid.shape}.")
        if self._parts and set(outputs) != set(self._parts):
            raise ValueError(
                f"outputs keys {sorted(outputs)} differ from earlier batches' "
                f"{sorted(self._parts)}; return the same keys from every eval step."
            )
        keep = valid != 0
        arrays = {k: np.asarray(v) for k, v in outputs.items()}
        for k, v in arrays.items():
            if v.ndim == 0 or v.shape[0] != valid.shape[0]:
                raise ValueError(
                    f"output {k!r} has shape {v.shape} but valid has {valid.shape[0]} rows; "
                    "every output's leading axis must be the batch axis."
                )
        for k, v in arrays.items():
            self._parts.setdefault(k, []).append(v[keep])

    def result(self) -> dict[str, np.ndarray]:
        """All kept rows, concatenated along axis 0 in the order they were added."""
        return {k: np.concatenate(parts, axis=0) for k, parts in self._parts.items()}
