"""Operating point and calibration: against brute force, scikit-learn and closed forms."""

import numpy as np
import pytest
from scipy import special
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from medjax.errors import ConfigError
from medjax.stats import calibration, metrics, operating_point, subgroups
from medjax.tasks import scoring
from medjax.train import evaluation


def _cohort(n, seed, *, overconfidence=1.0):
    """Labels drawn from sigmoid(z) for true log-odds z; the model reports overconfidence * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 2.0, n)
    labels = (rng.random(n) < special.expit(z)).astype(int)
    return labels, overconfidence * z


def _brute_force_youden(labels, scores):
    best, best_j = None, -np.inf
    for t in np.unique(scores)[::-1]:  # highest first: ties keep the highest threshold
        called = scores >= t
        j = called[labels == 1].mean() + (~called[labels == 0]).mean() - 1
        if j > best_j + 1e-12:
            best, best_j = t, j
    return best


def _brute_force_min_se_ppv(labels, scores):
    """(the highest threshold of the maximum, the maximum) of min(Se, PPV) over the scores."""
    best, best_score = None, -np.inf
    for t in np.unique(scores)[::-1]:
        called = scores >= t
        score = min(called[labels == 1].mean(), labels[called].mean())
        if score > best_score + 1e-12:
            best, best_score = t, score
    return best, best_score


class TestOperatingPoint:
    def test_min_se_ppv_is_the_brute_force_maximum_and_the_oracle_its_value(self):
        labels, scores = _cohort(400, 4)
        scores = np.round(scores, 1)  # ties
        threshold, score = _brute_force_min_se_ppv(labels, scores)
        assert operating_point.choose_threshold(labels, scores, "min_se_ppv", 0.9) == threshold
        assert metrics.min_sensitivity_ppv_oracle(labels, scores) == pytest.approx(score)
        precision, recall, _ = sk_metrics.precision_recall_curve(labels, scores)
        assert score == pytest.approx(np.max(np.minimum(precision, recall)))

    def test_youden_is_the_brute_force_maximum(self):
        labels, scores = _cohort(400, 0)
        scores = np.round(scores, 1)  # ties
        assert operating_point.choose_threshold(labels, scores, "youden", 0.9) == (
            _brute_force_youden(labels, scores)
        )

    @pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
    def test_target_sensitivity_is_the_highest_threshold_that_reaches_it(self, target):
        labels, scores = _cohort(300, 1)
        t = operating_point.choose_threshold(labels, scores, "sensitivity", target)
        positives = scores[labels == 1]
        assert np.mean(positives >= t) >= target
        higher = np.unique(scores)[np.unique(scores) > t]
        assert higher.size == 0 or np.mean(positives >= higher.min()) < target

    def test_metrics_at_a_threshold_match_scikit_learn(self):
        labels, scores = _cohort(500, 2)
        got = operating_point.at_threshold(labels, scores, 0.3)
        called = (scores >= 0.3).astype(int)
        tn, fp, fn, tp = sk_metrics.confusion_matrix(labels, called).ravel()
        assert got["sensitivity"] == pytest.approx(sk_metrics.recall_score(labels, called))
        assert got["ppv"] == pytest.approx(sk_metrics.precision_score(labels, called))
        assert got["specificity"] == pytest.approx(tn / (tn + fp))
        assert got["npv"] == pytest.approx(tn / (tn + fn))
        assert got["accuracy"] == pytest.approx(sk_metrics.accuracy_score(labels, called))

    def test_bad_settings_are_refused(self):
        labels, scores = _cohort(50, 3)
        with pytest.raises(ConfigError, match="evaluation.operating_point='f1'; valid: youden"):
            operating_point.choose_threshold(labels, scores, "f1", 0.9)
        with pytest.raises(ConfigError, match=r"target_sensitivity=1.5 must be in \(0, 1\]"):
            operating_point.choose_threshold(labels, scores, "sensitivity", 1.5)


class TestCalibration:
    def test_temperature_recovers_the_overconfidence_and_minimises_the_nll(self):
        labels, log_odds = _cohort(20000, 4, overconfidence=3.0)
        fitted = calibration.fit_temperature(labels, log_odds)
        assert fitted.temperature == pytest.approx(3.0, rel=0.05)
        grid = np.exp(np.linspace(-3, 3, 6001))
        best_on_grid = min(calibration.nll(labels, log_odds / t) for t in grid)
        assert calibration.nll(labels, log_odds / fitted.temperature) <= best_on_grid + 1e-9

    def test_temperature_scaling_lowers_ece_of_an_overconfident_model(self):
        val, test = _cohort(3000, 5, overconfidence=3.0), _cohort(3000, 6, overconfidence=3.0)
        fitted = calibration.fit_temperature(*val)
        labels, log_odds = test

        def ece(probs):
            return metrics.expected_calibration_error(labels, np.stack([1 - probs, probs], 1))

        before, after = ece(special.expit(log_odds)), ece(fitted(log_odds))
        assert before > 0.1 and after < 0.03 and after < before / 3, (before, after)
        # Temperature scaling is monotone: it changes no ranking.
        assert metrics.roc_auc(labels, fitted(log_odds)) == metrics.roc_auc(labels, log_odds)

    def test_platt_scaling_matches_unpenalised_logistic_regression(self):
        labels, z = _cohort(4000, 7)
        scores = 250.0 * z + 1000.0  # e.g. nats: far from unit scale
        fitted = calibration.fit_platt(labels, scores)
        reference = linear_model.LogisticRegression(C=1e12, tol=1e-10, max_iter=1000)
        reference.fit(scores[:, None] / 250.0, labels)
        np.testing.assert_allclose(
            fitted(scores), reference.predict_proba(scores[:, None] / 250.0)[:, 1], atol=1e-5
        )
        # The data's own log-odds are z, so the fitted map is close to sigmoid(z).
        assert np.max(np.abs(fitted(scores) - special.expit(z))) < 0.05

    def test_reliability_bins(self):
        labels = np.array([0, 1, 1, 0, 1])
        probs = np.array([0.05, 0.15, 0.95, 0.99, 1.0])
        mean_prob, observed, counts = calibration.reliability(labels, probs, num_bins=10)
        np.testing.assert_array_equal(counts, [1, 1, 0, 0, 0, 0, 0, 0, 0, 3])
        np.testing.assert_allclose(mean_prob[[0, 1, 9]], [0.05, 0.15, (0.95 + 0.99 + 1) / 3])
        np.testing.assert_allclose(observed[[0, 1, 9]], [0, 1, 2 / 3])
        assert np.isnan(observed[2:9]).all()


def test_binary_evaluation_fits_on_val_and_applies_to_the_evaluated_split(tmp_path):
    val, test = _cohort(2000, 8, overconfidence=2.0), _cohort(1500, 9, overconfidence=2.0)
    config = type("Evaluation", (), {"operating_point": "sensitivity", "target_sensitivity": 0.9})
    path = str(tmp_path / "calibration.png")
    values, intervals = evaluation.binary_evaluation(
        config, val, test, log_odds=True, plot_path=path, final_metrics=scoring.min_se_ppv
    )
    threshold = operating_point.choose_threshold(*val, "sensitivity", 0.9)
    assert values["operating_threshold"] == threshold
    for name, value in operating_point.at_threshold(*test, threshold).items():
        assert values[f"operating_{name}"] == value
        low, high = intervals[f"operating_{name}"]
        assert low <= value <= high, name
    # The task's final metric, the challenge's score: min(Se, PPV) on test at the threshold
    # that maximises it on val, below the oracle's maximum on test itself.
    challenge, _ = _brute_force_min_se_ppv(*val)
    at_challenge = operating_point.at_threshold(*test, challenge)
    assert values["min_se_ppv_threshold"] == challenge
    assert values["min_se_ppv"] == min(at_challenge["sensitivity"], at_challenge["ppv"])
    assert values["min_se_ppv"] < metrics.min_sensitivity_ppv_oracle(*test)
    assert values["temperature"] == calibration.fit_temperature(*val).temperature
    assert values["calibrated_ece"] < 0.05
    assert tmp_path.joinpath("calibration.png").stat().st_size > 0


def test_subgroups_name_the_bands_and_compute_each_group_alone():
    age = np.array([30, 44.9, 45, 64.9, 65, 80, np.nan, 90])
    gender = np.array([0, 1, 1, 0, np.nan, 1, 0, 0])
    groups = subgroups.icu_groups(age, gender, np.full(8, np.nan))
    assert list(groups) == ["age", "sex"]  # no ICU type recorded: that grouping is left out
    assert list(groups["age"]) == ["<45", "<45", "45-64", "45-64", "65-79", ">=80", "unknown",
                                   ">=80"]  # fmt: skip
    assert list(groups["sex"]) == ["female", "male", "male", "female", "unknown", "male",
                                   "female", "female"]  # fmt: skip

    labels, scores = _cohort(600, 10)
    names = np.random.default_rng(0).choice(["female", "male", "unknown"], 600)
    rows = subgroups.subgroup_rows(labels, scores, {"sex": names}, threshold=0.2)
    assert [r["group"] for r in rows] == ["female", "male", "unknown"]
    for row in rows:
        member = names == row["group"]
        assert row["n"] == member.sum() and row["positives"] == labels[member].sum()
        assert row["auroc"] == metrics.roc_auc(labels[member], scores[member])
        assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
        expected = operating_point.at_threshold(labels[member], scores[member], 0.2)
        assert row["sensitivity"] == expected["sensitivity"]
