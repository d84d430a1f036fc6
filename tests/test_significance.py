"""DeLong's AUROC covariance against its definition, and the paired test."""

import os
import runpy

import numpy as np
import pytest

from medjax.stats import bootstrap, metrics, significance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_models(n=150, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    a = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounded: ties within and across classes
    b = np.round(a + rng.normal(0, 0.8, n), 1)  # correlated with a
    return labels, np.stack([a, b])


def test_covariance_equals_the_direct_computation():
    labels, scores = _two_models()
    x, y = scores[:, labels == 1], scores[:, labels == 0]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # [K, m, n]
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]

    def sample_cov(v):
        centred = v - v.mean(axis=1, keepdims=True)
        return centred @ centred.T / (v.shape[1] - 1)

    aurocs, cov = significance.delong_covariance(labels, scores)
    np.testing.assert_allclose(aurocs, psi.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(aurocs, [metrics.roc_auc(labels, s) for s in scores], rtol=1e-12)
    np.testing.assert_allclose(cov, sample_cov(v10) / m + sample_cov(v01) / n, rtol=1e-12)


def test_variance_agrees_with_the_bootstrap():
    labels, scores = _two_models(n=400, seed=1)
    _, cov = significance.delong_covariance(labels, scores[0])
    counts = bootstrap.resample_counts(labels, 4000, np.random.default_rng(0))
    resampled = bootstrap.weighted_metrics(labels, scores[0], counts)["auroc"]
    assert cov[0, 0] == pytest.approx(resampled.var(), rel=0.15)


def test_paired_test():
    labels, scores = _two_models()
    same = significance.delong_test(labels, scores[0], scores[0])
    assert same["difference"] == 0 and same["p_value"] == 1.0
    rng = np.random.default_rng(3)
    noise = rng.normal(size=labels.size)  # a model that knows nothing
    result = significance.delong_test(labels, scores[0], noise)
    assert result["auroc_a"] == pytest.approx(metrics.roc_auc(labels, scores[0]))
    assert result["difference"] > 0.2 and result["p_value"] < 0.01
    assert result["z"] == pytest.approx(result["difference"] / result["se"])


def test_too_few_of_a_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 positives and 2 negatives"):
        significance.delong_covariance(np.array([1, 0, 0]), np.array([0.3, 0.2, 0.1]))


def _predictions(workdir, ids, labels, probs):
    os.makedirs(workdir / "predictions")
    with open(workdir / "predictions" / "test.csv", "w") as f:
        f.write("id,label,prediction,prob_normal,prob_nodule\n")
        for i, label, p in zip(ids, labels, probs, strict=True):
            f.write(f"{i},{label},{int(p >= 0.5)},{1 - p:.6g},{p:.6g}\n")


def test_compare_two_workdirs(tmp_path):
    compare = runpy.run_path(os.path.join(REPO, "experiments", "compare.py"))["compare"]
    labels, scores = _two_models()
    probs = 1 / (1 + np.exp(-scores))
    ids = [f"p{i:03d}" for i in range(labels.size)]
    _predictions(tmp_path / "a", ids, labels, probs[0])
    order = np.random.default_rng(0).permutation(labels.size)  # rows in another order
    _predictions(tmp_path / "b", [ids[i] for i in order], labels[order], probs[1][order])

    result = compare(str(tmp_path / "a"), str(tmp_path / "b"))
    auroc_a, auroc_b, difference, (low, high) = result["metrics"]["auroc"]
    assert auroc_a == pytest.approx(metrics.roc_auc(labels, probs[0]), abs=1e-9)
    assert auroc_b == pytest.approx(metrics.roc_auc(labels, probs[1]), abs=1e-9)
    assert low < difference < high
    assert result["delong"] == pytest.approx(significance.delong_test(labels, *probs), abs=1e-9)

    _predictions(tmp_path / "c", ids[:-1], labels[:-1], probs[1][:-1])
    with pytest.raises(ValueError, match="scored different examples"):
        compare(str(tmp_path / "a"), str(tmp_path / "c"))
