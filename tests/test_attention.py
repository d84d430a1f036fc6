"""Tests for medjax.models.attention: the time attention against numpy, masking, shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rnn import KEY, make_batch

from medjax import models
from medjax.errors import ConfigError
from medjax.models.attention import MTANClassifier, MultiTimeAttention
from medjax.tasks import build_task

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
R, HEADS, E = 5, 2, 6


def attention_reference(params, values, mask, num_steps):
    """z [B, R, H, V] by loops: phi, the projections and a softmax over each variable's own
    observed steps."""

    def phi(t):
        linear = t * params["time_embedding"]["linear"]["kernel"][0, 0]
        linear = linear + params["time_embedding"]["linear"]["bias"][0]
        periodic = np.sin(
            t * params["time_embedding"]["periodic"]["kernel"][0]
            + params["time_embedding"]["periodic"]["bias"]
        )
        return np.concatenate([[linear], periodic])

    def project(name, t):  # [H, D]
        return np.einsum("e,ehd->hd", phi(t), params[name]["kernel"]) + params[name]["bias"]

    times = (np.arange(num_steps) + 0.5) / num_steps
    reference = np.linspace(0, 1, R)
    head_size = E // HEADS
    batch, _, num_vars = values.shape
    z = np.zeros((batch, R, HEADS, num_vars))
    for b in range(batch):
        for r, ref in enumerate(reference):
            for h in range(HEADS):
                for v in range(num_vars):
                    seen = [t for t in range(num_steps) if mask[b, t, v] > 0]
                    if not seen:
                        continue
                    scores = np.array(
                        [project("query", ref)[h] @ project("key", times[t])[h] for t in seen]
                    ) / np.sqrt(head_size)
                    weights = np.exp(scores - scores.max())
                    z[b, r, h, v] = weights @ values[b, seen, v] / weights.sum()
    return z


@pytest.fixture(scope="module")
def attention():
    module = MultiTimeAttention(num_reference=R, num_heads=HEADS, time_features=E)
    batch = make_batch()
    rng = np.random.default_rng(1)
    abstract = jax.eval_shape(module.init, KEY, batch["values"], batch["mask"])
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), abstract["params"]
    )
    return module, params, jit(lambda p, x, m: module.apply({"params": p}, x, m))


def test_time_attention_matches_numpy(attention):
    _, params, apply = attention
    batch = make_batch(seed=2)
    batch["mask"][1, :, 0] = 0  # a variable never observed: z = 0, not observed
    z, observed = apply(params, batch["values"], batch["mask"])
    expected = attention_reference(
        jax.tree.map(np.asarray, params), batch["values"], batch["mask"], batch["values"].shape[1]
    )
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(observed, batch["mask"].any(axis=1))
    assert not observed[1, 0] and np.all(np.asarray(z)[1, :, :, 0] == 0)


def test_unobserved_values_are_never_read(attention):
    _, params, apply = attention
    batch = make_batch(seed=3)
    garbage = np.where(batch["mask"] > 0, batch["values"], np.nan)
    clean = apply(params, batch["values"], batch["mask"])
    for a, b in zip(clean, apply(params, garbage, batch["mask"])):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def classifier():
    model = MTANClassifier(hidden_size=4, num_reference=R, num_heads=HEADS, time_features=E)
    batch = make_batch()
    variables = jit(lambda b: model.init(KEY, b, train=False))(batch)

    @jit
    def logits_and_grads(variables, batch):
        def total(variables):
            logits = model.apply(variables, batch, train=False)["logits"]
            return logits.sum(), logits

        return jax.grad(total, has_aux=True)(variables)[::-1]

    return variables, logits_and_grads


def test_padded_and_unobserved_entries_change_nothing(classifier):
    variables, logits_and_grads = classifier
    batch = make_batch(seed=4)
    logits, grads = logits_and_grads(variables, batch)
    assert logits.shape == (3, 1) and logits.dtype == jnp.float32
    padded = np.arange(batch["values"].shape[1])[None, :, None] >= batch["lengths"][:, None, None]
    changed = dict(batch)
    # NaN where nothing was observed; past each stay's length, NaN and "observed" noise.
    changed["values"] = np.where((batch["mask"] > 0) & ~padded, batch["values"], np.nan)
    changed["mask"] = np.where(padded, 1.0, batch["mask"]).astype(np.float32)
    other_logits, other_grads = logits_and_grads(variables, changed)
    np.testing.assert_array_equal(logits, other_logits)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads)):
        np.testing.assert_array_equal(a, b)
    # ... while an observed value inside a stay does change its logit.
    changed["values"] = np.where(batch["mask"] > 0, batch["values"] + 1.0, 0.0)
    assert not np.allclose(logits_and_grads(variables, changed)[0][0], logits[0])


def test_mtan_options_go_with_mtan(tiny):
    config = tiny("ehr_rnn")
    config.model, config.loss.per_step_weight = models.settings("mtan"), 0.5
    with pytest.raises(ConfigError, match="per-step outputs .* model mtan gives logits: set"):
        build_task(config)
    config = tiny("ehr_rnn")
    config.model.name = "mtan"  # with gru_d's keys
    with pytest.raises(ConfigError, match="model.bidirectional is not a field of medjax.models"
                       ".mtan's Model; its fields: hidden_size, num_reference"):  # fmt: skip
        build_task(config)


def test_heads_must_divide_the_time_embedding():
    module = MultiTimeAttention(num_reference=R, num_heads=4, time_features=E)
    batch = make_batch()
    with pytest.raises(ValueError, match="time_features=6 is not a multiple of num_heads=4"):
        jax.eval_shape(module.init, KEY, batch["values"], batch["mask"])
