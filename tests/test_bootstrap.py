"""Bootstrap intervals: the weighted metrics against medjax.stats.metrics, and coverage."""

import numpy as np
import pytest
from scipy.stats import norm

from medjax.stats import bootstrap, metrics


def _data(n=300, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1) * 0.1 + 0.5  # many ties, some at 0.5
    return labels, scores


def _reference(labels, scores):
    probs = np.stack([1 - scores, scores], 1)
    out = metrics.classification_metrics(labels, probs, threshold=0.5)
    (tn, fp), (fn, tp) = metrics.confusion_matrix(labels, (scores >= 0.5).astype(int), 2)
    out |= {"ppv": tp / (tp + fp), "npv": tn / (tn + fn)}
    names = ("auroc", "auprc", *bootstrap.THRESHOLD_METRICS, *bootstrap.CALIBRATION_METRICS)
    return {k: out[k] for k in names}


def _weighted(labels, scores, counts):
    return bootstrap.weighted_metrics(
        labels, scores, counts, threshold=0.5, calibration_bins=metrics.ECE_BINS
    )


def test_unit_weights_are_the_metrics():
    labels, scores = _data()
    got = _weighted(labels, scores, np.ones((1, labels.size)))
    reference = _reference(labels, scores)
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        assert got[name][0] == pytest.approx(value, abs=1e-12), name


def test_counts_are_the_metrics_of_repeated_examples():
    labels, scores = _data(n=120)
    counts = np.random.default_rng(2).integers(0, 4, (3, labels.size)).astype(float)
    got = _weighted(labels, scores, counts)
    for row, count in enumerate(counts.astype(int)):
        repeated = _reference(np.repeat(labels, count), np.repeat(scores, count))
        for name, value in repeated.items():
            assert got[name][row] == pytest.approx(value, abs=1e-12), (row, name)


def test_resamples_keep_the_class_counts_and_the_seed_decides():
    labels, scores = _data()
    counts = bootstrap.resample_counts(labels, 50, np.random.default_rng(0))
    for label in (0, 1):
        np.testing.assert_array_equal(counts[:, labels == label].sum(1), np.sum(labels == label))
    assert bootstrap.intervals(labels, scores, seed=3) == bootstrap.intervals(
        labels, scores, seed=3
    )
    assert bootstrap.intervals(labels, scores, seed=3) != bootstrap.intervals(
        labels, scores, seed=4
    )


def test_auroc_interval_covers_the_true_value_95_percent_of_the_time():
    # Binormal scores, unit variances, means 0 and 1: the true AUROC is Phi(1 / sqrt(2)).
    true_auroc = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(100, int), np.zeros(100, int)]
    repetitions = 300
    covered = 0
    for repetition in range(repetitions):
        scores = rng.normal(labels, 1.0)
        low, high = bootstrap.intervals(labels, scores, seed=repetition)["auroc"]
        covered += low <= true_auroc <= high
    assert 0.92 <= covered / repetitions <= 0.98  # binomial sd at 95%: 0.013


def test_an_undefined_ratio_leaves_its_resamples_out():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])  # one predicted positive at threshold 0.8
    values = bootstrap.weighted_metrics(labels, scores, np.eye(6)[[0, 3, 4]] + 1, threshold=0.8)
    assert values["ppv"] == pytest.approx([1.0, 1.0, 1.0])
    no_positive_called = np.array([[2.0, 2, 2, 1, 1, 0]])  # example 5 not drawn
    assert np.isnan(
        bootstrap.weighted_metrics(labels, scores, no_positive_called, threshold=0.8)["ppv"][0]
    )
    low, high = bootstrap.intervals(labels, scores, threshold=0.8, num_resamples=200)["ppv"]
    assert low == high == 1.0  # resamples without the positive call are left out, not counted 0


def test_one_class_has_no_interval_and_other_labels_are_refused():
    assert bootstrap.intervals(np.zeros(5, int), np.arange(5.0)) == {}
    with pytest.raises(ValueError, match="0/1 labels"):
        bootstrap.intervals(np.array([0, 1, 2]), np.arange(3.0))


def _classes(multilabel, n=240, c=4, seed=3):
    rng = np.random.default_rng(seed)
    if multilabel:
        labels = (rng.random((n, c)) < 0.3).astype(np.int64)
        probs = np.clip(0.3 * labels + rng.random((n, c)) * 0.7, 0, 1)
    else:
        labels = rng.integers(0, c, n)
        logits = np.round(rng.normal(size=(n, c)) + 1.5 * (labels[:, None] == np.arange(c)), 1)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # ties: rounded logits
    return labels, np.round(probs, 2) if multilabel else probs


@pytest.mark.parametrize("multilabel", [False, True])
def test_class_metrics_with_unit_and_integer_weights(multilabel):
    labels, probs = _classes(multilabel)
    compute = metrics.multilabel_metrics if multilabel else metrics.classification_metrics
    got = bootstrap.weighted_class_metrics(labels, probs, np.ones((1, len(labels))))
    for name in ("auroc", "accuracy"):
        assert got[name][0] == pytest.approx(compute(labels, probs)[name], abs=1e-12), name
    # Integer weights are the metrics of the data with each row repeated that often.
    counts = np.random.default_rng(4).integers(1, 4, len(labels))
    got = bootstrap.weighted_class_metrics(labels, probs, counts[None].astype(np.float64))
    repeated = compute(np.repeat(labels, counts, 0), np.repeat(probs, counts, 0))
    for name in ("auroc", "accuracy"):
        assert got[name][0] == pytest.approx(repeated[name], abs=1e-12), name


@pytest.mark.parametrize("multilabel", [False, True])
def test_class_intervals_hold_the_estimate_and_shrink_with_data(multilabel):
    compute = metrics.multilabel_metrics if multilabel else metrics.classification_metrics
    widths = []
    for n in (200, 1600):
        labels, probs = _classes(multilabel, n=n)
        found = bootstrap.class_intervals(labels, probs, num_resamples=400)
        for name in ("auroc", "accuracy"):
            low, high = found[name]
            assert low < compute(labels, probs)[name] < high, (name, n)
        widths.append(found["auroc"][1] - found["auroc"][0])
    # The width falls as 1/sqrt(n): 8 times the data, about a third of the width.
    assert 0.2 < widths[1] / widths[0] < 0.5, widths
