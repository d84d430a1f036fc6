"""Stratified bootstrap intervals of binary metrics, vectorised over resamples.

A resample draws, within each class, as many examples as the class has, with replacement, so
every resample keeps the class counts and every metric stays defined. It is held as a row of
counts (how often each example was drawn), so R resamples are one weighted computation on an
[R, N] array: no Python loop over resamples or examples. The metrics are those of
`medjax.stats.metrics` (ties count 1/2 in AUROC; AUPRC is average precision over distinct scores;
predicted positive iff score >= threshold), which the counts of a single unweighted resample
reproduce exactly. Intervals are percentile intervals; a resample where a ratio is undefined
(PPV with no predicted positive) is left out of that metric's interval.
"""

import numpy as np

from medjax.stats import metrics

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
CALIBRATION_METRICS = ("ece", "brier")
NUM_RESAMPLES = 1000


def resample_counts(labels: np.ndarray, num_resamples: int, rng) -> np.ndarray:
    """[num_resamples, N] draw counts of a stratified bootstrap of integer `labels` [N]."""
    counts = np.zeros((num_resamples, labels.size))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        uniform = np.full(members.size, 1.0 / members.size)
        counts[:, members] = rng.multinomial(members.size, uniform, size=num_resamples)
    return counts


def weighted_metrics(
    labels, scores, counts, *, threshold=None, calibration_bins=None
) -> dict[str, np.ndarray]:
    """auroc and auprc of binary `labels` [N] and `scores` [N] under each row of example weights
    `counts` [R, N]; [R] each. With a `threshold`, also THRESHOLD_METRICS (positive iff score >=
    threshold); with `calibration_bins`, scores are probabilities of class 1 and ece and brier
    are added, as `metrics.expected_calibration_error` and `metrics.brier_score` compute them."""
    order = np.argsort(-scores, kind="stable")
    scores, positive, counts = scores[order], labels[order] == 1, counts[:, order]
    ties = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # first of each distinct score
    pos = np.add.reduceat(counts * positive, ties, axis=1)  # weight per distinct score, descending
    neg = np.add.reduceat(counts * ~positive, ties, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    out = {
        # Each positive beats the negatives below its score and ties with those at it.
        "auroc": np.sum(pos * (n_neg - fp + 0.5 * neg), axis=1) / (n_pos * n_neg)[:, 0],
        # Precision where a positive is reached; scores no resample drew weigh nothing.
        "auprc": np.sum(pos * np.divide(tp, tp + fp, out=np.zeros_like(tp), where=pos > 0), 1)
        / n_pos[:, 0],
    }
    total = counts.sum(axis=1)
    if threshold is not None:
        predicted = scores >= threshold
        true_pos = counts @ (predicted & positive).astype(np.float64)
        true_neg = counts @ (~(predicted | positive)).astype(np.float64)
        called_pos = counts @ predicted.astype(np.float64)
        out["accuracy"] = (true_pos + true_neg) / total
        out["sensitivity"] = true_pos / n_pos[:, 0]
        out["specificity"] = true_neg / n_neg[:, 0]
        out["ppv"] = _ratio(true_pos, called_pos)
        out["npv"] = _ratio(true_neg, total - called_pos)
    if calibration_bins is not None:
        # Top-label ECE: the argmax of (1 - p, p) is class 1 iff p > 1/2.
        confidence = np.maximum(scores, 1 - scores)
        correct = (scores > 0.5) == positive
        bins = metrics.calibration_bins(confidence, calibration_bins)
        gaps = np.eye(calibration_bins)[bins] * (correct - confidence)[:, None]  # [N, bins]
        out["ece"] = np.abs(counts @ gaps).sum(axis=1) / total
        out["brier"] = counts @ (scores - positive) ** 2 / total
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, nan where den is 0."""
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def intervals(
    labels,
    scores,
    *,
    threshold=None,
    calibration_bins=None,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> dict[str, tuple[float, float]]:
    """Percentile `level` intervals of `weighted_metrics` over a seeded stratified bootstrap of
    binary `labels` [N] and `scores` [N]; {} when one class is absent (the metrics are undefined).

    Resamples are computed `chunk` at a time to bound memory.
    """
    labels, (scores,) = _checked(labels, scores)
    if np.unique(labels).size < 2:
        return {}
    resampled = _resampled(
        labels, [scores], threshold, calibration_bins, num_resamples, seed, chunk
    )
    return _percentiles(resampled[0], level)


def paired_intervals(
    labels,
    scores_a,
    scores_b,
    *,
    threshold=None,
    calibration_bins=None,
    num_resamples=NUM_RESAMPLES,
    seed=0,
    level=0.95,
    chunk=100,
) -> dict[str, tuple[float, float]]:
    """Intervals of metric(a) - metric(b), both models scored on the same resamples."""
    labels, scores = _checked(labels, scores_a, scores_b)
    if np.unique(labels).size < 2:
        return {}
    a, b = _resampled(labels, scores, threshold, calibration_bins, num_resamples, seed, chunk)
    return _percentiles({name: a[name] - b[name] for name in a}, level)  # fmt: skip


def class_intervals(
    labels, probs, *, num_resamples=NUM_RESAMPLES, seed=0, level=0.95, chunk=100
) -> dict[str, tuple[float, float]]:
    """Intervals of `auroc` and `accuracy` as `medjax.stats.metrics` defines them for more than two
    classes: single-label integer `labels` [N] (macro one-vs-rest AUROC, argmax accuracy; the
    bootstrap stratified by class) or multi-label 0/1 `labels` [N, C] (the mean of the outputs'
    AUROCs, each output's accuracy at 0.5; rows resampled without strata, so an output whose
    positives a resample misses is left out of that resample's mean). `probs` is [N, C]."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    if labels.shape[0] != probs.shape[0] or labels.ndim not in (1, 2):
        raise ValueError(
            f"class intervals need labels [N] or [N, C] and probs [N, C]; got {labels.shape} "
            f"and {probs.shape}"
        )
    rng = np.random.default_rng(seed)
    values = {"auroc": [], "accuracy": []}
    for start in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - start)
        if labels.ndim == 2:
            uniform = np.full(labels.shape[0], 1.0 / labels.shape[0])
            counts = rng.multinomial(labels.shape[0], uniform, size=size).astype(np.float64)
        else:
            counts = resample_counts(labels, size, rng)
        for name, value in weighted_class_metrics(labels, probs, counts).items():
            values[name].append(value)
    return _percentiles({name: np.concatenate(v) for name, v in values.items()}, level)


def weighted_class_metrics(labels, probs, counts) -> dict[str, np.ndarray]:
    """`class_intervals`' auroc and accuracy under each row of example weights `counts` [R, N]."""
    multilabel = labels.ndim == 2
    onehot = labels == 1 if multilabel else labels[:, None] == np.arange(probs.shape[1])
    present = [c for c in range(probs.shape[1]) if 0 < onehot[:, c].sum() < len(labels)]
    with np.errstate(invalid="ignore", divide="ignore"):  # a class a resample did not draw
        aurocs = [
            weighted_metrics(onehot[:, c].astype(np.int64), probs[:, c], counts)["auroc"]
            for c in present
        ]
        auroc = np.nanmean(np.stack(aurocs), axis=0) if aurocs else np.full(len(counts), np.nan)
    correct = np.mean((probs >= 0.5) == onehot, 1) if multilabel else probs.argmax(1) == labels
    return {"auroc": auroc, "accuracy": counts @ correct / counts.sum(1)}


def _checked(labels, *scores) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and float64 scores, or ValueError unless they are 1-D, 0/1 and of one length."""
    labels, scores = np.asarray(labels), [np.asarray(s, np.float64) for s in scores]
    if (
        labels.ndim != 1
        or any(s.shape != labels.shape for s in scores)
        or not set(labels.tolist()) <= {0, 1}
    ):
        raise ValueError(
            f"bootstrap intervals need 1-D 0/1 labels and scores of the same shape; got labels "
            f"{labels.shape} with values {np.unique(labels)[:5]} and scores "
            f"{[s.shape for s in scores]}"
        )
    return labels, scores


def _resampled(labels, scores_list, threshold, calibration_bins, num_resamples, seed, chunk):
    """[{metric: [num_resamples] values}] for each scores in `scores_list`, same resamples."""
    rng = np.random.default_rng(seed)
    values = [{} for _ in scores_list]
    for start in range(0, num_resamples, chunk):
        counts = resample_counts(labels, min(chunk, num_resamples - start), rng)
        for out, scores in zip(values, scores_list, strict=True):
            resampled = weighted_metrics(
                labels, scores, counts, threshold=threshold, calibration_bins=calibration_bins
            )
            for name, value in resampled.items():
                out.setdefault(name, []).append(value)
    return [{name: np.concatenate(v) for name, v in out.items()} for out in values]


def _percentiles(values: dict[str, np.ndarray], level: float) -> dict[str, tuple[float, float]]:
    tail = 100 * (1 - level) / 2
    defined = {name: v[~np.isnan(v)] for name, v in values.items()}
    return {
        name: tuple(float(q) for q in np.percentile(v, [tail, 100 - tail]))
        if v.size
        else (float("nan"), float("nan"))
        for name, v in defined.items()
    }
