import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import optim
from medjax.errors import ConfigError
from medjax.settings import defaults, rules


def _opt(**overrides):
    opt = defaults.get_config().optimizer
    opt.update(overrides)
    return opt


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_closed_form(schedule):
    lr = optim.learning_rate_schedule(
        _opt(learning_rate=0.1, warmup_steps=10, schedule=schedule, end_learning_rate_factor=0.2),
        num_train_steps=110,
    )
    np.testing.assert_allclose(lr(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(lr(5), 0.05, rtol=1e-6)
    np.testing.assert_allclose(lr(10), 0.1, rtol=1e-6)
    fraction = 40 / 100  # 50 steps in: 40 of the 100 decay steps
    expected = {
        "cosine": 0.02 + 0.08 * 0.5 * (1 + np.cos(np.pi * fraction)),
        "linear": 0.1 - 0.08 * fraction,
        "constant": 0.1,
    }[schedule]
    np.testing.assert_allclose(lr(50), expected, rtol=1e-5)
    np.testing.assert_allclose(lr(110), 0.1 if schedule == "constant" else 0.02, rtol=1e-5)


def test_bad_schedule_and_warmup():
    assert rules.violations({"optimizer.schedule": "step"}) == [
        "optimizer.schedule='step' must be one of 'cosine', 'linear', 'constant'"
    ]
    with pytest.raises(ConfigError, match="warmup_steps=100 must be in"):
        optim.learning_rate_schedule(_opt(warmup_steps=100), 100)
    with pytest.raises(ConfigError, match="unknown optimizer.name 'lion'"):
        optim.create_optimizer(_opt(name="lion"), 100)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_no_weight_decay_on_biases_and_scales(name):
    # With zero gradients only weight decay moves parameters: kernels shrink, the rest stays.
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)}
    tx, _ = optim.create_optimizer(
        _opt(name=name, learning_rate=0.1, weight_decay=0.5, warmup_steps=0, schedule="constant"),
        10,
    )
    grads = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0)
    np.testing.assert_array_equal(updates["scale"], 0)


def test_clipping_by_global_norm():
    tx, _ = optim.create_optimizer(
        _opt(
            name="sgd",
            momentum=0.0,
            learning_rate=1.0,
            weight_decay=0.0,
            warmup_steps=0,
            schedule="constant",
            grad_clip_norm=1.0,
        ),
        10,
    )
    params = {"w": jnp.zeros(2)}
    updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
    assert np.isclose(optax.global_norm(updates), 1.0)
