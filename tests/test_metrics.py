"""Tests for medjax.stats.metrics: scikit-learn as reference, closed forms, validation,
gathering."""

import ast
import inspect
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medjax.stats import metrics

SEEDS = (0, 1, 2)
KINDS = ("continuous", "rounded", "integer")  # the last two are tie-heavy


def _binary_data(seed, kind):
    rng = np.random.default_rng(seed)
    n = 60 + 97 * seed
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.normal(size=n) + labels
    if kind == "rounded":
        scores = np.round(scores, 1)
    elif kind == "integer":
        scores = np.clip(np.round(scores), 0, 2)  # values in {0, 1, 2}
    return labels, scores


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass_data(seed, kind, c=4):
    rng = np.random.default_rng(100 + seed)
    n = 80 + 53 * seed
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    if kind != "continuous":
        logits = np.clip(np.round(logits), 0, 2)  # few distinct probability values: many ties
    return labels, _softmax(logits)


# ---------------------------------------------------------------- binary curves vs sklearn


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_metrics_match_sklearn(seed, kind):
    labels, scores = _binary_data(seed, kind)
    assert metrics.roc_auc(labels, scores) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )
    for ours, ref in zip(
        metrics.roc_curve(labels, scores),
        skm.roc_curve(labels, scores, drop_intermediate=False),
        strict=True,
    ):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    for ours, ref in zip(
        metrics.precision_recall_curve(labels, scores),
        skm.precision_recall_curve(labels, scores),
        strict=True,
    ):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_roc_curve_has_one_point_per_distinct_score():
    labels, scores = _binary_data(0, "integer")
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    assert len(thresholds) == len(np.unique(scores)) + 1
    assert (fpr[0], tpr[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_roc_auc_large_n_matches_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 200_000)
    scores = np.round(rng.normal(size=labels.size) + 0.5 * labels, 2)
    assert metrics.roc_auc(labels, scores) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )


# ---------------------------------------------------------------- closed forms


def test_roc_auc_closed_forms():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.roc_auc(labels, scores) == 1.0
    assert metrics.roc_auc(labels, -scores) == 0.0
    assert metrics.roc_auc(labels, np.full(5, 0.7)) == 0.5
    # Pairs (pos, neg): (.4, .1) -> 1, (.4, .4) -> 1/2, (.8, .1) -> 1, (.8, .4) -> 1: 3.5 / 4.
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8]) == 0.875


def test_average_precision_closed_form():
    # Thresholds .9: P=1, R=1/2; .8: P=1/2, R=1/2; .7: P=2/3, R=1 -> 1/2 * 1 + 0 + 1/2 * 2/3.
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    assert metrics.average_precision([0, 1, 1], [0.1, 0.5, 0.9]) == 1.0


def test_confusion_matrix_closed_form_and_sklearn():
    cm = metrics.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])
    assert np.issubdtype(cm.dtype, np.integer)
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y, p, 6), skm.confusion_matrix(y, p, labels=range(6))
    )


def test_ece_hand_computed():
    # num_bins=5, bins (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]; confidence = max prob.
    #   (.4, .6]: conf .60 (pred 1, y 1, right), .55 (pred 0, y 1, wrong): acc .5, conf .575
    #   (.6, .8]: conf .70 (right), .75 (right):                            acc 1., conf .725
    #   (.8, 1.]: conf .90 (right), .95 (pred 1, y 0, wrong):               acc .5, conf .925
    # ECE = 2/6 * (.075 + .275 + .425) = 1.55 / 6.
    probs = np.array([[0.1, 0.9], [0.05, 0.95], [0.3, 0.7], [0.75, 0.25], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([1, 0, 1, 0, 1, 1])
    ece = metrics.expected_calibration_error(labels, probs, num_bins=5)
    assert ece == pytest.approx(1.55 / 6, abs=1e-12)
    # A confidence exactly on an edge belongs to the bin below, (lo, hi]. num_bins=4, edges exact
    # in binary: .75 (right) -> (.5, .75]: |1 - .75|; 1.0 (wrong) -> (.75, 1]: |0 - 1|.
    edge = metrics.expected_calibration_error([0, 0], [[0.75, 0.25], [0.0, 1.0]], num_bins=4)
    assert edge == pytest.approx((0.25 + 1.0) / 2, abs=1e-12)
    # Perfectly confident and right: zero; confident and always wrong: one.
    assert metrics.expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    assert metrics.expected_calibration_error([1, 0], [[1.0, 0.0], [0.0, 1.0]]) == 1.0


def _ece_loop(labels, probs, num_bins):
    """Straightforward reference: for each bin, select its examples and compare acc and conf."""
    n = len(labels)
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        idx = [i for i in range(n) if lo < max(probs[i]) <= hi]
        if idx:
            acc = np.mean([np.argmax(probs[i]) == labels[i] for i in idx])
            conf = np.mean([max(probs[i]) for i in idx])
            total += len(idx) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("num_bins", (1, 10, 15))
@pytest.mark.parametrize("seed", SEEDS)
def test_ece_matches_loop_reference(seed, num_bins):
    labels, probs = _multiclass_data(seed, "continuous", c=3)
    assert metrics.expected_calibration_error(labels, probs, num_bins) == pytest.approx(
        _ece_loop(labels, probs, num_bins), abs=1e-12
    )


def test_brier_closed_forms():
    assert metrics.brier_score([0], [[0.5, 0.3, 0.2]]) == pytest.approx(0.25 + 0.09 + 0.04)
    assert metrics.brier_score([1, 0], [[0.2, 0.8], [0.6, 0.4]]) == pytest.approx(
        (0.2**2 + 0.4**2) / 2
    )


# ---------------------------------------------------------------- classification_metrics


@pytest.mark.parametrize("threshold", (0.5, 0.3))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_classification_metrics_match_sklearn(seed, kind, threshold):
    labels, scores = _binary_data(seed, kind)
    p1 = 1 / (1 + np.exp(-(scores - 0.5)))
    if kind != "continuous":
        p1 = np.round(p1, 1)  # predictions exactly at the threshold occur
    probs = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= threshold).astype(int)
    got = metrics.classification_metrics(labels, probs, threshold=threshold)
    want = {
        "auroc": skm.roc_auc_score(labels, p1),
        "auprc": skm.average_precision_score(labels, p1),
        "accuracy": skm.accuracy_score(labels, pred),
        "sensitivity": skm.recall_score(labels, pred, pos_label=1),
        "specificity": skm.recall_score(labels, pred, pos_label=0),
        "f1": skm.f1_score(labels, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "ece": _ece_loop(labels, probs, 15),
        "brier": skm.brier_score_loss(labels, p1),
    }
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
        assert isinstance(got[key], float), key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_classification_metrics_match_sklearn(seed, kind):
    labels, probs = _multiclass_data(seed, kind)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    onehot = np.eye(c)[labels]
    got = metrics.classification_metrics(labels, probs)
    want = {
        "auroc": skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"),
        "accuracy": skm.accuracy_score(labels, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "f1": skm.f1_score(labels, pred, average="macro"),
        "ece": _ece_loop(labels, probs, 15),
        "brier": np.mean(np.sum((probs - onehot) ** 2, axis=1)),
    }
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert metrics.macro_roc_auc(labels, probs) == pytest.approx(
        skm.roc_auc_score(onehot, probs, average="macro"), abs=1e-12
    )
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, pred, c), skm.confusion_matrix(labels, pred)
    )


def test_multiclass_absent_class_is_skipped():
    labels, probs = _multiclass_data(0, "rounded", c=4)
    keep = labels != 2  # class 2 never occurs; it may still be predicted
    labels, probs = labels[keep], probs[keep]
    present = [0, 1, 3]
    want_auc = skm.roc_auc_score(np.eye(4)[labels][:, present], probs[:, present], average="macro")
    assert metrics.macro_roc_auc(labels, probs) == pytest.approx(want_auc, abs=1e-12)
    pred = probs.argmax(axis=1)
    got = metrics.classification_metrics(labels, probs)
    assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, labels=present, average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(
        skm.recall_score(labels, pred, labels=present, average="macro")
    )


def test_float_and_bool_labels_accepted():
    labels, probs = _multiclass_data(1, "continuous", c=2)
    want = metrics.classification_metrics(labels, probs)
    assert metrics.classification_metrics(labels.astype(np.float32), probs) == want
    assert metrics.classification_metrics(labels.astype(bool), probs) == want


# ---------------------------------------------------------------- undefined cases: nan, quietly


def test_single_class_gives_nan_without_warnings():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neg = metrics.classification_metrics([0, 0, 0], probs)
        pos = metrics.classification_metrics([1, 1, 1], probs)
        none_predicted = metrics.classification_metrics([0, 0, 0], probs, threshold=0.9)
        fpr, tpr, _ = metrics.roc_curve([1, 1, 1], probs[:, 1])
        _, recall, _ = metrics.precision_recall_curve([0, 0, 0], probs[:, 1])
        multi = metrics.macro_roc_auc([2, 2], [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    assert np.isnan(metrics.roc_auc([1, 1], [0.1, 0.9]))
    assert np.isnan(neg["auroc"]) and np.isnan(neg["auprc"]) and np.isnan(neg["sensitivity"])
    assert neg["specificity"] == pytest.approx(2 / 3) and neg["f1"] == 0.0
    assert neg["balanced_accuracy"] == pytest.approx(2 / 3)
    assert np.isnan(none_predicted["f1"]) and none_predicted["specificity"] == 1.0
    assert np.isnan(pos["auroc"]) and np.isnan(pos["specificity"]) and pos["auprc"] == 1.0
    assert pos["sensitivity"] == pytest.approx(1 / 3)
    assert np.all(np.isnan(fpr)) and tpr[-1] == 1.0
    assert np.all(np.isnan(recall[:-1]))
    assert np.isnan(multi)


def test_no_predicted_positives_gives_zero_f1_when_positives_exist():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = metrics.classification_metrics([0, 1], [[0.9, 0.1], [0.8, 0.2]])
    assert got["sensitivity"] == 0.0 and got["f1"] == 0.0 and got["specificity"] == 1.0


# ---------------------------------------------------------------- validation

GOOD_PROBS = np.array([[0.7, 0.3], [0.2, 0.8]])


@pytest.mark.parametrize(
    "labels, probs, match",
    [
        ([0, 1], [0.3, 0.8], r"probs must be 2-D"),
        ([0, 1], [[1.0], [1.0]], r"C >= 2"),
        ([0, 1, 1], GOOD_PROBS, r"one entry per row"),
        ([[1, 0], [0, 1]], GOOD_PROBS, r"one entry per row.*not one-hot"),
        ([0, 0.5], GOOD_PROBS, r"labels\[1\] = 0.5 is not an integer"),
        (["a", "b"], GOOD_PROBS, r"integer class indices, got dtype"),
        ([0, 2], GOOD_PROBS, r"\[0, 2\).*labels\[1\] = 2"),
        ([-1, 0], GOOD_PROBS, r"labels\[0\] = -1"),
        ([0, 1], [[0.5, 0.5], [np.nan, 0.5]], r"finite; row 1"),
        ([0, 1], [[0.5, 0.5], [np.inf, 0.5]], r"finite; row 1"),
        ([], np.zeros((0, 2)), r"empty"),
        ([0, 1], [[2.0, -1.5], [0.2, 0.8]], r"sum to 1; row 0.*not logits"),
    ],
)
def test_classification_metrics_validation(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.classification_metrics(labels, probs)


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 2], [0.1, 0.2], r"0 or 1; labels\[1\] = 2"),
        ([0, 1], [0.1], r"same length"),
        ([], [], r"empty"),
        ([0, 1], [0.1, np.nan], r"scores\[1\] = nan"),
    ],
)
def test_binary_validation(labels, scores, match):
    for fn in (metrics.roc_auc, metrics.roc_curve, metrics.average_precision):
        with pytest.raises(ValueError, match=match):
            fn(labels, scores)


def test_confusion_matrix_validation():
    with pytest.raises(ValueError, match=r"predictions\[0\] = 3"):
        metrics.confusion_matrix([0, 1], [3, 0], 3)
    with pytest.raises(ValueError, match=r"same length"):
        metrics.confusion_matrix([0, 1], [0], 3)


# ---------------------------------------------------------------- OutputGatherer


def _padded_batches(labels, probs, batch_size, valid_dtype):
    n = len(labels)
    for start in range(0, n, batch_size):
        y, p = labels[start : start + batch_size], probs[start : start + batch_size]
        pad = batch_size - len(y)
        valid = np.r_[np.ones(len(y)), np.zeros(pad)].astype(valid_dtype)
        yield (
            {"label": np.r_[y, np.zeros(pad, y.dtype)], "probs": np.pad(p, ((0, pad), (0, 0)))},
            valid,
        )


@pytest.mark.parametrize("valid_dtype", (bool, np.float32))
def test_gatherer_drops_padding(valid_dtype):
    labels, probs = _multiclass_data(2, "continuous", c=3)
    labels, probs = labels[:10], probs[:10]
    gatherer = metrics.OutputGatherer()
    for outputs, valid in _padded_batches(labels, probs, 4, valid_dtype):
        gatherer.add(outputs, valid)
    result = gatherer.result()
    np.testing.assert_array_equal(result["label"], labels)
    np.testing.assert_array_equal(result["probs"], probs)


def test_gatherer_valid_anywhere_equals_boolean_indexing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 2))
    valid = rng.integers(0, 2, (3, 8))
    gatherer = metrics.OutputGatherer()
    for xb, vb in zip(x, valid, strict=True):
        gatherer.add({"x": xb}, vb)
    np.testing.assert_array_equal(gatherer.result()["x"], x[valid.astype(bool)])


def test_gatherer_validation():
    gatherer = metrics.OutputGatherer()
    with pytest.raises(ValueError, match=r"'probs' has shape \(3, 2\) but valid has 4 rows"):
        gatherer.add({"label": np.zeros(4), "probs": np.zeros((3, 2))}, np.ones(4, bool))
    gatherer.add({"label": np.zeros(4)}, np.ones(4, bool))
    with pytest.raises(ValueError, match=r"differ from earlier batches"):
        gatherer.add({"probs": np.zeros((4, 2))}, np.ones(4, bool))


def test_module_imports_only_numpy():
    tree = ast.parse(inspect.getsource(metrics))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"numpy"}, imported
