"""DeLong's test for AUROC: the covariance of correlated AUROCs and a paired comparison.

DeLong, DeLong and Clarke-Pearson (1988), computed from midranks as in Sun and Xu (2014):
O(K N log N) for K models scored on the same N examples. With m positives X and n negatives Y,
psi(x, y) = 1 if x > y, 1/2 if x == y, else 0; AUROC = mean psi; V10_i = mean_j psi(X_i, Y_j),
V01_j = mean_i psi(X_i, Y_j); Cov(AUROC) = S10 / m + S01 / n with S10, S01 the sample
covariances (over models) of the V10 and V01 components.
"""

import numpy as np
from scipy import stats


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their mean rank."""
    return np.apply_along_axis(stats.rankdata, -1, x)


def delong_covariance(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(aurocs [K], covariance [K, K]) of `scores` [K, N] (or [N]) for binary `labels` [N]."""
    labels = np.asarray(labels)
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2 or positive.size != scores.shape[1]:
        raise ValueError(
            f"DeLong needs at least 2 positives and 2 negatives and one score per label; got "
            f"{m} positives, {n} negatives, labels {labels.shape}, scores {scores.shape}"
        )
    x, y = scores[:, positive], scores[:, ~positive]
    rank_all = _midranks(np.concatenate([x, y], axis=1))
    v10 = (rank_all[:, :m] - _midranks(x)) / n  # negatives each positive beats (ties 1/2)
    v01 = 1.0 - (rank_all[:, m:] - _midranks(y)) / m
    aurocs = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aurocs, covariance


def delong_test(labels, scores_a, scores_b) -> dict[str, float]:
    """Two-sided test of AUROC(a) == AUROC(b) on the same examples: the difference, its
    standard error, z and the p-value."""
    aurocs, cov = delong_covariance(labels, np.stack([scores_a, scores_b]))
    difference = aurocs[0] - aurocs[1]
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    z = difference / se if se > 0 else (0.0 if difference == 0 else np.inf * np.sign(difference))
    return {
        "auroc_a": float(aurocs[0]),
        "auroc_b": float(aurocs[1]),
        "difference": float(difference),
        "se": se,
        "z": float(z),
        "p_value": float(2 * stats.norm.sf(abs(z))),
    }
