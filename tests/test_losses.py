"""Tests for medjax.losses: closed forms, optax and float64 numpy references, extremes, gradients.

Every loss runs through jax.jit with the options closed over, as the trainer calls it.
"""

import jax
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from medjax import losses

B, C = 8, 5
WEIGHTS = np.array([0.5, 1.0, 2.0, 3.0, 0.25])
# (options, masked): each is checked against the numpy reference and by check_grads.
OPTION_CASES = {
    "plain": ({}, False),
    "weighted": ({"class_weights": WEIGHTS}, False),
    "smoothed": ({"label_smoothing": 0.1}, False),
    "focal": ({"focal_gamma": 2.0}, False),
    "masked": ({}, True),
    "all": ({"class_weights": WEIGHTS, "label_smoothing": 0.2, "focal_gamma": 0.5}, True),
}


def jit_loss(fn, **options):
    """fn through jax.jit: logits, labels and mask traced, options closed over."""
    return jax.jit(lambda logits, labels, mask=None: fn(logits, labels, mask=mask, **options))


def jit_value_and_grad(fn, **options):
    """(loss, d loss / d logits) through jax.jit."""

    def loss(logits, labels, mask=None):
        return fn(logits, labels, mask=mask, **options)

    return jax.jit(jax.value_and_grad(loss))


def _data(seed, shape, num_classes=C):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.normal(size=shape)).astype(np.float32)
    ids = rng.integers(0, num_classes, shape[0])
    mask = np.ones(shape[0], np.float32)
    mask[rng.permutation(shape[0])[: shape[0] // 3]] = 0.0  # a third masked out
    return rng, logits, ids, mask


def _masked_weighted_mean(per_example, weights, mask):
    mask = np.ones(len(per_example)) if mask is None else np.asarray(mask, np.float64)
    return np.sum(mask * weights * per_example) / max(mask.sum(), 1.0)


def np_softmax_ce(
    logits, onehot, mask=None, class_weights=None, label_smoothing=0.0, focal_gamma=0.0
):
    """float64 reference: log-sum-exp by hand, focal and smoothing from their definitions."""
    x, y = np.asarray(logits, np.float64), np.asarray(onehot, np.float64)
    top = x.max(axis=1, keepdims=True)
    log_p = x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))
    targets = y * (1.0 - label_smoothing) + label_smoothing / x.shape[1]
    per_example = -(targets * (1.0 - np.exp(log_p)) ** focal_gamma * log_p).sum(axis=1)
    weights = 1.0 if class_weights is None else y @ np.asarray(class_weights, np.float64)
    return _masked_weighted_mean(per_example, weights, mask)


def np_sigmoid_ce(
    logits, labels, mask=None, class_weights=None, label_smoothing=0.0, focal_gamma=0.0
):
    """float64 reference: -(w t (1-p)^g log p + (1-t) p^g log(1-p)), mean over outputs."""
    x = np.asarray(logits, np.float64).reshape(len(logits), -1)
    y = np.asarray(labels, np.float64).reshape(x.shape)
    p = 1.0 / (1.0 + np.exp(-x))
    t = y * (1.0 - label_smoothing) + label_smoothing / 2.0
    w = 1.0 if class_weights is None else np.asarray(class_weights, np.float64)
    per_output = -(
        w * t * (1 - p) ** focal_gamma * np.log(p) + (1 - t) * p**focal_gamma * np.log1p(-p)
    )
    return _masked_weighted_mean(per_output.mean(axis=1), 1.0, mask)


class TestSoftmaxCrossEntropy:
    f = staticmethod(losses.softmax_cross_entropy)

    @pytest.mark.parametrize(
        "logits, label, options, expected",
        [
            ([0.0, 0.0], 0, {}, np.log(2.0)),
            ([0.0, 0.0, 0.0], 2, {}, np.log(3.0)),
            ([0.0, np.log(3.0)], 0, {}, np.log(4.0)),  # p = (1/4, 3/4)
            ([0.0, np.log(3.0)], 1, {}, np.log(4.0 / 3.0)),
            ([0.0, 0.0], 0, {"focal_gamma": 2.0}, np.log(2.0) / 4.0),
            ([0.0, np.log(3.0)], 1, {"focal_gamma": 1.0}, np.log(4.0 / 3.0) / 4.0),
            (
                [0.0, np.log(3.0)],
                0,
                {"label_smoothing": 0.5},
                0.75 * np.log(4.0) + 0.25 * np.log(4.0 / 3.0),
            ),
            ([0.0, 0.0], 1, {"class_weights": [1.0, 3.0]}, 3.0 * np.log(2.0)),
        ],
    )
    def test_closed_form(self, logits, label, options, expected):
        value = jit_loss(self.f, **options)(np.array([logits], np.float32), np.array([label]))
        np.testing.assert_allclose(value, expected, rtol=1e-6)

    def test_matches_optax_and_numpy(self):
        rng, logits, ids, _ = _data(0, (B, C))
        onehot = np.eye(C, dtype=np.float32)[ids]
        soft = rng.dirichlet(np.ones(C), B).astype(np.float32)
        loss = jit_loss(self.f)
        for labels in (onehot, soft):
            value = loss(logits, labels)
            np.testing.assert_allclose(
                value, optax.softmax_cross_entropy(logits, labels).mean(), rtol=1e-6
            )
            np.testing.assert_allclose(value, np_softmax_ce(logits, labels), rtol=1e-5)
        np.testing.assert_allclose(loss(logits, ids), np_softmax_ce(logits, onehot), rtol=1e-5)

    @pytest.mark.parametrize("case", OPTION_CASES)
    def test_options_match_numpy(self, case):
        options, masked = OPTION_CASES[case]
        _, logits, ids, mask = _data(1, (B, C))
        mask = mask if masked else None
        value = jit_loss(self.f, **options)(logits, ids, mask)
        expected = np_softmax_ce(logits, np.eye(C)[ids], mask, **options)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("case", OPTION_CASES)
    def test_gradients(self, case, x64):
        options, masked = OPTION_CASES[case]
        _, logits, ids, mask = _data(2, (4, C))
        mask = mask if masked else None
        loss = jax.jit(lambda x: self.f(x, ids, mask=mask, **options))
        check_grads(
            loss, (logits.astype(np.float64),), order=2, modes=["rev"], atol=1e-6, rtol=1e-6
        )

    @pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
    def test_extreme_logits(self, gamma):
        # Example 0 confidently right (loss 0), example 1 confidently wrong (loss = gap = 2 scale).
        value_and_grad = jit_value_and_grad(self.f, focal_gamma=gamma)
        for scale in (100.0, 1e4):
            logits = np.array([[scale, -scale], [scale, -scale]], np.float32)
            value, grad = value_and_grad(logits, np.array([0, 1]))
            np.testing.assert_allclose(value, scale, rtol=1e-6)  # mean of 0 and 2 scale
            np.testing.assert_allclose(grad, [[0.0, 0.0], [0.5, -0.5]], atol=1e-6)

    @pytest.mark.parametrize("scale", [100.0, 1e4])
    def test_extreme_logits_all_options_finite(self, scale):
        _, _, ids, mask = _data(3, (B, C))
        logits = scale * np.sign(np.random.default_rng(3).normal(size=(B, C))).astype(np.float32)
        options = OPTION_CASES["all"][0]
        value, grad = jit_value_and_grad(self.f, **options)(logits, ids, mask)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(
            value, np_softmax_ce(logits, np.eye(C)[ids], mask, **options), rtol=1e-5
        )

    def test_integer_labels_equal_one_hot(self):
        _, logits, ids, mask = _data(4, (B, C))
        value_and_grad = jit_value_and_grad(self.f, **OPTION_CASES["all"][0])
        value, grad = value_and_grad(logits, np.eye(C, dtype=np.float32)[ids], mask)
        for dtype in (np.uint8, np.int16, np.int32, np.int64):
            from_ids = value_and_grad(logits, ids.astype(dtype), mask)
            assert from_ids[0] == value, dtype  # the same value, bit for bit
            # XLA may fuse the two graphs differently: gradients agree to rounding.
            np.testing.assert_allclose(from_ids[1], grad, rtol=1e-6, atol=1e-9)

    @pytest.mark.parametrize("options", [{}, {"focal_gamma": 2.0, "class_weights": WEIGHTS}])
    def test_masked_equals_sliced(self, options):
        _, logits, ids, mask = _data(5, (B, C))
        loss = jit_loss(self.f, **options)
        keep = mask > 0
        sliced = loss(logits[keep], ids[keep])
        np.testing.assert_allclose(loss(logits, ids, mask), sliced, rtol=1e-6)
        np.testing.assert_allclose(loss(logits, ids, keep), sliced, rtol=1e-6)  # bool mask

    def test_all_masked_is_zero_with_zero_gradient(self):
        _, logits, ids, _ = _data(6, (B, C))
        value, grad = jit_value_and_grad(self.f, focal_gamma=2.0)(logits, ids, np.zeros(B))
        assert value == 0.0
        np.testing.assert_array_equal(grad, np.zeros_like(logits))

    def test_focal_tends_to_cross_entropy_as_gamma_goes_to_0(self):
        _, logits, ids, _ = _data(7, (B, C))
        np.testing.assert_allclose(
            jit_loss(self.f, focal_gamma=1e-7)(logits, ids),
            jit_loss(self.f)(logits, ids),
            rtol=1e-5,
        )

    def test_unit_class_weights_and_zero_smoothing_change_nothing(self):
        _, logits, ids, mask = _data(8, (B, C))
        plain = jit_loss(self.f)(logits, ids, mask)
        # Weights of 1 are exact, but XLA may order the weighted sum differently (jax 0.5.1
        # differs in the last bit): equal up to float32 rounding.
        weighted = jit_loss(self.f, class_weights=np.ones(C))(logits, ids, mask)
        np.testing.assert_allclose(weighted, plain, rtol=1e-6, atol=0)
        assert jit_loss(self.f, label_smoothing=0.0)(logits, ids, mask) == plain

    def test_label_smoothing_equals_smoothed_targets(self):
        _, logits, ids, _ = _data(9, (B, C))
        eps, onehot = 0.3, np.eye(C, dtype=np.float32)[ids]
        np.testing.assert_allclose(
            jit_loss(self.f, label_smoothing=eps)(logits, ids),
            jit_loss(self.f)(logits, onehot * (1 - eps) + eps / C),
            rtol=1e-6,
        )

    def test_class_weights_equal_resampling(self):
        # Integer weights: the weighted loss equals the unweighted loss on a dataset where example
        # i appears w_{y_i} times, up to the documented normalisation sum_i w_i / B.
        _, logits, ids, _ = _data(10, (B, 3), num_classes=3)
        weights = np.array([1.0, 2.0, 3.0])
        repeat = np.repeat(np.arange(B), weights[ids].astype(int))
        weighted = jit_loss(self.f, class_weights=weights)(logits, ids)
        resampled = jit_loss(self.f)(logits[repeat], ids[repeat])
        np.testing.assert_allclose(weighted * B / weights[ids].sum(), resampled, rtol=1e-6)

    @pytest.mark.parametrize(
        "logits_shape, labels, options, match",
        [
            ((B,), np.zeros(B, int), {}, r"expected \[B, C\] with C >= 2"),
            ((B, 1), np.zeros(B, int), {}, r"C >= 2.*sigmoid_cross_entropy"),
            ((B, C, 2), np.zeros(B, int), {}, r"expected \[B, C\]"),
            ((B, C), np.zeros(B - 1, int), {}, "same batch size"),
            ((B, C), np.zeros((), int), {}, "same batch size"),
            ((B, C), np.zeros((B, C + 1)), {}, r"expected \[B\] = \(8,\) integer class ids"),
            ((B, C), np.zeros(B), {}, r"must be integer.*astype\(int\)"),
            ((B, C), np.zeros(B, int), {"mask": np.ones((B, 1))}, r"mask has shape \(8, 1\)"),
            (
                (B, C),
                np.zeros(B, int),
                {"class_weights": np.ones(C - 1)},
                r"class_weights has shape \(4,\), expected \[C\] = \(5,\)",
            ),
            ((B, C), np.zeros(B, int), {"label_smoothing": 1.0}, r"label_smoothing=1.0.*\[0, 1\)"),
            ((B, C), np.zeros(B, int), {"label_smoothing": -0.1}, "label_smoothing=-0.1"),
            ((B, C), np.zeros(B, int), {"focal_gamma": -1.0}, "focal_gamma=-1.0"),
        ],
    )
    def test_shape_and_option_errors(self, logits_shape, labels, options, match):
        options = dict(options)
        mask = options.pop("mask", None)
        with pytest.raises(ValueError, match=match):
            jit_loss(self.f, **options)(np.zeros(logits_shape, np.float32), labels, mask)


class TestSigmoidCrossEntropy:
    f = staticmethod(losses.sigmoid_cross_entropy)

    @pytest.mark.parametrize(
        "logit, label, options, expected",
        [
            (0.0, 1, {}, np.log(2.0)),
            (np.log(3.0), 1, {}, np.log(4.0 / 3.0)),  # p = 3/4
            (np.log(3.0), 0, {}, np.log(4.0)),
            (0.0, 1, {"focal_gamma": 2.0}, np.log(2.0) / 4.0),
            (np.log(3.0), 0, {"focal_gamma": 1.0}, 0.75 * np.log(4.0)),
            (
                np.log(3.0),
                1,
                {"label_smoothing": 0.5},
                0.75 * np.log(4.0 / 3.0) + 0.25 * np.log(4.0),
            ),
            (0.0, 1, {"class_weights": [3.0]}, 3.0 * np.log(2.0)),
            (0.0, 0, {"class_weights": [3.0]}, np.log(2.0)),  # weight on positives only
        ],
    )
    def test_closed_form(self, logit, label, options, expected):
        value = jit_loss(self.f, **options)(np.array([logit], np.float32), np.array([label]))
        np.testing.assert_allclose(value, expected, rtol=1e-6)

    def test_multilabel_is_mean_over_outputs(self):
        # Outputs with losses log 2, log 4 and log(4/3): the example's loss is their mean.
        logits = np.array([[0.0, np.log(3.0), np.log(3.0)]], np.float32)
        value = jit_loss(self.f)(logits, np.array([[1, 0, 1]]))
        np.testing.assert_allclose(value, np.log(2.0 * 4.0 * 4.0 / 3.0) / 3.0, rtol=1e-6)

    def test_matches_optax_and_numpy(self):
        rng, logits, _, _ = _data(0, (B, C))
        hard = rng.integers(0, 2, (B, C))
        soft = rng.uniform(size=(B, C)).astype(np.float32)
        for labels in (hard, soft):
            value = jit_loss(self.f)(logits, labels)
            expected = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
            np.testing.assert_allclose(value, expected, rtol=1e-6)
            np.testing.assert_allclose(value, np_sigmoid_ce(logits, labels), rtol=1e-5)
        binary = jit_loss(self.f)(logits[:, 0], hard[:, 0])
        np.testing.assert_allclose(binary, np_sigmoid_ce(logits[:, 0], hard[:, 0]), rtol=1e-5)

    @pytest.mark.parametrize("gamma", [0.5, 2.0])
    def test_focal_matches_optax_for_hard_labels(self, gamma):
        rng, logits, _, _ = _data(1, (B, C))
        labels = rng.integers(0, 2, (B, C))
        expected = optax.sigmoid_focal_loss(logits, labels, alpha=None, gamma=gamma).mean()
        value = jit_loss(self.f, focal_gamma=gamma)(logits, labels)
        np.testing.assert_allclose(value, expected, rtol=1e-5)

    @pytest.mark.parametrize("case", OPTION_CASES)
    def test_options_match_numpy(self, case):
        options, masked = OPTION_CASES[case]
        rng, logits, _, mask = _data(2, (B, C))
        labels = rng.uniform(size=(B, C)).round(1)  # hard and soft targets
        mask = mask if masked else None
        value = jit_loss(self.f, **options)(logits, labels, mask)
        expected = np_sigmoid_ce(logits, labels, mask, **options)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("case", OPTION_CASES)
    def test_gradients(self, case, x64):
        options, masked = OPTION_CASES[case]
        rng, logits, _, mask = _data(3, (4, C))
        labels = rng.uniform(size=(4, C)).round(1)
        mask = mask if masked else None
        loss = jax.jit(lambda x: self.f(x, labels, mask=mask, **options))
        check_grads(
            loss, (logits.astype(np.float64),), order=2, modes=["rev"], atol=1e-6, rtol=1e-6
        )

    @pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
    def test_extreme_logits(self, gamma):
        # Right, wrong, wrong, right: per-output losses 0, scale, scale, 0.
        value_and_grad = jit_value_and_grad(self.f, focal_gamma=gamma)
        for scale in (100.0, 1e4):
            logits = np.array([scale, -scale, scale, -scale], np.float32)
            value, grad = value_and_grad(logits, np.array([1, 1, 0, 0]))
            np.testing.assert_allclose(value, scale / 2.0, rtol=1e-6)
            np.testing.assert_allclose(grad, [0.0, -0.25, 0.25, 0.0], atol=1e-6)

    @pytest.mark.parametrize("scale", [100.0, 1e4])
    def test_extreme_logits_all_options_finite(self, scale):
        rng, _, _, mask = _data(4, (B, C))
        logits = scale * np.sign(rng.normal(size=(B, C))).astype(np.float32)
        labels = rng.integers(0, 2, (B, C))
        options = OPTION_CASES["all"][0]
        value, grad = jit_value_and_grad(self.f, **options)(logits, labels, mask)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        # Smoothed targets keep eps/2 on the wrong side: each output costs about eps/2 * scale.
        assert value > 0.01 * scale

    def test_integer_and_float_labels_agree(self):
        rng, logits, _, mask = _data(5, (B, C))
        labels = rng.integers(0, 2, (B, C))
        loss = jit_loss(self.f, **OPTION_CASES["all"][0])
        assert loss(logits, labels.astype(np.int8), mask) == loss(
            logits, labels.astype(np.float32), mask
        )

    @pytest.mark.parametrize("options", [{}, {"focal_gamma": 2.0, "class_weights": WEIGHTS}])
    def test_masked_equals_sliced(self, options):
        rng, logits, _, mask = _data(6, (B, C))
        labels = rng.integers(0, 2, (B, C))
        loss = jit_loss(self.f, **options)
        keep = mask > 0
        sliced = loss(logits[keep], labels[keep])
        np.testing.assert_allclose(loss(logits, labels, mask), sliced, rtol=1e-6)
        np.testing.assert_allclose(loss(logits, labels, keep), sliced, rtol=1e-6)

    def test_all_masked_is_zero_with_zero_gradient(self):
        rng, logits, _, _ = _data(7, (B, C))
        labels = rng.integers(0, 2, (B, C))
        value, grad = jit_value_and_grad(self.f, focal_gamma=2.0)(logits, labels, np.zeros(B, bool))
        assert value == 0.0
        np.testing.assert_array_equal(grad, np.zeros_like(logits))

    def test_focal_tends_to_cross_entropy_as_gamma_goes_to_0(self):
        rng, logits, _, _ = _data(8, (B, C))
        labels = rng.uniform(size=(B, C))
        np.testing.assert_allclose(
            jit_loss(self.f, focal_gamma=1e-7)(logits, labels),
            jit_loss(self.f)(logits, labels),
            rtol=1e-5,
        )

    def test_unit_class_weights_and_zero_smoothing_change_nothing(self):
        rng, logits, _, mask = _data(9, (B, C))
        labels = rng.integers(0, 2, (B, C))
        plain = jit_loss(self.f)(logits, labels, mask)
        assert jit_loss(self.f, class_weights=np.ones(C))(logits, labels, mask) == plain
        assert jit_loss(self.f, label_smoothing=0.0)(logits, labels, mask) == plain

    def test_label_smoothing_equals_smoothed_targets(self):
        rng, logits, _, _ = _data(10, (B, C))
        eps, labels = 0.3, rng.integers(0, 2, (B, C)).astype(np.float32)
        np.testing.assert_allclose(
            jit_loss(self.f, label_smoothing=eps)(logits, labels),
            jit_loss(self.f)(logits, labels * (1 - eps) + eps / 2),
            rtol=1e-6,
        )

    def test_positive_weight_equals_resampling_positives(self):
        # Binary: pos weight w (integer) equals repeating each positive example w times, up to the
        # documented normalisation sum_i w_{y_i} / B.
        rng, logits, _, _ = _data(11, (B,))
        labels = rng.integers(0, 2, B)
        labels[:2] = [0, 1]
        w = 3
        repeat = np.repeat(np.arange(B), np.where(labels == 1, w, 1))
        weighted = jit_loss(self.f, class_weights=[float(w)])(logits, labels)
        resampled = jit_loss(self.f)(logits[repeat], labels[repeat])
        np.testing.assert_allclose(weighted * B / len(repeat), resampled, rtol=1e-6)

    @pytest.mark.parametrize(
        "logits_shape, labels, options, match",
        [
            ((B, C, 2), np.zeros((B, C, 2)), {}, r"expected \[B\] \(binary\) or \[B, C\]"),
            ((), np.zeros(()), {}, r"expected \[B\] \(binary\) or \[B, C\]"),
            ((B, C), np.zeros(B, int), {}, r"expected the logits shape.*jax.nn.one_hot"),
            ((B,), np.zeros((B, 1)), {}, r"labels have shape \(8, 1\), expected .* \(8,\)"),
            ((B, C), np.zeros((B - 1, C)), {}, "same batch size"),
            ((B, C), np.zeros((B, C)), {"mask": np.ones(B + 1)}, r"mask has shape \(9,\)"),
            (
                (B,),
                np.zeros(B),
                {"class_weights": [1.0, 2.0]},
                r"class_weights has shape \(2,\), expected \[C\] = \(1,\)",
            ),
            ((B, C), np.zeros((B, C)), {"label_smoothing": 1.5}, "label_smoothing=1.5"),
            ((B, C), np.zeros((B, C)), {"focal_gamma": -0.5}, "focal_gamma=-0.5"),
        ],
    )
    def test_shape_and_option_errors(self, logits_shape, labels, options, match):
        options = dict(options)
        mask = options.pop("mask", None)
        with pytest.raises(ValueError, match=match):
            jit_loss(self.f, **options)(np.zeros(logits_shape, np.float32), labels, mask)
