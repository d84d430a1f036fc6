"""Mixup in the training pipeline and test-time flips in evaluation (classification)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from medjax.data import transforms
from medjax.errors import ConfigError
from medjax.tasks import build_task, classification
from medjax.train.state import create_train_state
from medjax.train.steps import eval_step


def test_mixup_is_one_weighted_mean_of_the_two_examples():
    first = (tf.fill([4, 4, 1], 2.0), tf.constant([1.0, 0.0, 0.0]))
    second = (tf.fill([4, 4, 1], -1.0), tf.constant([0.0, 0.0, 1.0]))
    for seed in range(20):
        image, label = transforms.mixup(first, second, tf.constant([seed, 7]), 0.4)
        weight = float(label[0])
        assert 0.0 <= weight <= 1.0
        np.testing.assert_allclose(label, [weight, 0.0, 1.0 - weight], atol=1e-6)
        np.testing.assert_allclose(image, np.full([4, 4, 1], 3 * weight - 1), atol=1e-5)


def test_mixed_training_batches_have_label_rows_that_sum_to_one(tiny_config):
    tiny_config.data.augment.mixup_alpha = 0.4
    task = build_task(tiny_config)
    batch = next(task.train_batches(0))
    labels = batch["label"]
    assert labels.shape == (16, 2) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    assert labels.min() >= 0 and np.any((labels > 0.01) & (labels < 0.99))  # mixed, not one-hot
    again = next(task.train_batches(0))  # a resumed run sees the same batch
    for name in batch:
        np.testing.assert_array_equal(batch[name], again[name])
    loss = task.loss_fn(jnp.zeros((16, 2)), batch, 0)  # soft targets: log 2 for even logits
    assert float(loss) == pytest.approx(np.log(2.0), rel=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"privacy.enabled": True, "data.augment.mixup_alpha": 0.2}, "mixes examples"),
        ({"evaluation.test_time_flips": True, "data.augment.flip_left_right": False}, "mirrored"),
        ({"evaluation.test_time_flips": True, "data.augment.enabled": False}, "mirrored"),
    ],
)
def test_mixup_with_privacy_and_flips_never_trained_on_are_refused(tiny_config, changes, message):
    tiny_config.update_from_flattened_dict(changes)
    with pytest.raises(ConfigError, match=message):
        build_task(tiny_config)


class MirrorInvariant(nn.Module):
    """g(x) + g(mirror of x): the same logits for an image and its mirror image."""

    @nn.compact
    def __call__(self, x, *, train):
        g = nn.Sequential([nn.Conv(3, (3, 3)), jnp.tanh, lambda y: y.reshape(len(y), -1)])
        return nn.Dense(2)(g(x) + g(jnp.flip(x, axis=-2)))


def _eval_logits(task, batch, seed=0):
    keys = jax.random.split(jax.random.key(seed))
    state = create_train_state(task, optax.sgd(0.1), *keys)
    return state, np.asarray(eval_step(state, batch, task=task)["logits"])


def test_test_time_flips_average_the_mirrored_logits(tiny_config):
    tiny_config.evaluation.test_time_flips = True
    task = build_task(tiny_config)
    assert task.test_time_views is classification.with_mirror
    assert "its mirror image" in task.description
    batch = next(task.eval_batches("val"))
    plain = dataclasses.replace(task, test_time_views=None)

    state, logits = _eval_logits(task, batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    each = [task.model.apply(variables, x, train=False) for x in classification.with_mirror(
        jnp.asarray(batch["image"]))]  # fmt: skip
    assert not np.allclose(each[0], each[1], atol=1e-4)  # a ResNet is no mirror-invariant model
    np.testing.assert_allclose(logits, (np.asarray(each[0]) + each[1]) / 2, rtol=1e-5, atol=1e-6)

    invariant = dataclasses.replace(task, model=MirrorInvariant())
    _, flipped = _eval_logits(invariant, batch)
    _, unflipped = _eval_logits(dataclasses.replace(invariant, test_time_views=None), batch)
    np.testing.assert_allclose(flipped, unflipped, rtol=1e-6, atol=1e-6)
    assert not np.allclose(_eval_logits(plain, batch)[1], logits, atol=1e-4)
