"""Tests for medjax.models.fused_gru: the written-out GRU against flax's own nn.RNN(nn.GRUCell)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.models.fused_gru import GRU

B, T, F, H = 4, 7, 5, 6  # batch, steps, input features, hidden units
LENGTHS = jnp.asarray([7, 3, 1, 5])


def inputs(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, F)), jnp.float32)


def perturbed(variables, seed=1):
    """Init variables plus noise, so that biases are not all zero."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: a + jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), variables
    )


def value_and_grads(module, variables, x, **kwargs):
    """(outputs, gradients wrt variables and x) of a weighted sum of every output."""

    def total(variables, x):
        out = module.apply(variables, x, **kwargs)
        weighted = [
            (a * jnp.cos(jnp.arange(a.size)).reshape(a.shape)).sum() for a in jax.tree.leaves(out)
        ]
        return sum(weighted), out

    (_, out), grads = jax.jit(jax.value_and_grad(total, (0, 1), has_aux=True))(variables, x)
    return out, grads


def test_same_parameters_as_flax():
    x = inputs()
    ref = nn.RNN(nn.GRUCell(H)).init(jax.random.key(3), x, seq_lengths=LENGTHS)
    ours = GRU(nn.GRUCell(H)).init(jax.random.key(3), x, seq_lengths=LENGTHS)
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    jax.tree.map(np.testing.assert_array_equal, ours, ref)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"seq_lengths": LENGTHS},
        {"seq_lengths": LENGTHS, "return_carry": True},
        {"seq_lengths": LENGTHS, "reverse": True, "keep_order": True, "return_carry": True},
        {"seq_lengths": LENGTHS, "reverse": True},
        {"reverse": True, "return_carry": True},
        {"time_major": True, "seq_lengths": LENGTHS, "return_carry": True},
    ],
)
def test_outputs_and_gradients_equal_flax(kwargs):
    x = inputs()
    if kwargs.get("time_major"):
        x = x.swapaxes(0, 1)
    variables = perturbed(nn.RNN(nn.GRUCell(H)).init(jax.random.key(0), x))
    expected = value_and_grads(nn.RNN(nn.GRUCell(H)), variables, x, **kwargs)
    actual = value_and_grads(GRU(nn.GRUCell(H)), variables, x, **kwargs)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(expected))
    assert scale > 0.1
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, atol=2e-6 * scale), actual, expected)


def uses_written_out_path(cell):
    x = inputs()
    module = GRU(cell)
    variables = module.init(jax.random.key(0), x)
    return "custom_vjp_call" in str(jax.make_jaxpr(module.apply)(variables, x))


def test_written_out_path_is_taken_on_cpu_for_the_plain_float32_cell_only():
    assert jax.default_backend() == "cpu"
    assert uses_written_out_path(nn.GRUCell(H))
    assert not uses_written_out_path(nn.GRUCell(H, dtype=jnp.bfloat16))
    assert not uses_written_out_path(nn.GRUCell(H, gate_fn=nn.hard_sigmoid))
    assert not uses_written_out_path(nn.GRUCell(H, carry_init=nn.initializers.ones))
