"""A GRU layer in the form XLA:CPU trains fastest.

`GRU` is `flax.linen.RNN` over a `flax.linen.GRUCell`: the same module, parameters,
initialisation and outputs, so checkpoints do not depend on the backend. On CPU, for a float32
cell with the default gates and a zero initial state, the layer's forward and backward passes
are written out (`gru_scan`, a `jax.custom_vjp`) instead of being traced through the cell:
  - the input projections of all steps are computed before the scan, three [T*B, I] x [I, H]
    matmuls;
  - each step multiplies the hidden state by the three recurrent kernels side by side, one
    [B, H] x [H, 3H] matmul instead of three;
  - the backward scan carries the weight gradients and adds one [*, B] x [B, 3H] matmul per
    step to each, where autodiff of the cell runs three for each kernel;
  - the gates' sigmoid is 0.5 tanh(x / 2) + 0.5, the same function, which XLA:CPU evaluates in
    half the time of its logistic.
On the benchmark's GRU (experiments/benchmark.py, gru_ehr) a training step takes about 0.8 of
the traced cell's time. Other backends and configurations run `nn.RNN` unchanged.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_INPUT_GATES, _HIDDEN_GATES = ("ir", "iz", "in"), ("hr", "hz", "hn")


def _sigmoid(x):
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _forward(w, b, u, b_hn, x, h0):
    """(hs, residuals): hidden states [T, B, H] for time-major inputs x [T, B, I]."""
    hidden = h0.shape[-1]
    ur = jnp.concatenate(u, axis=1)
    xr, xz, xn = (x @ wi + bi for wi, bi in zip(w, b))

    def step(h, inputs):
        gr, gz, gn = inputs
        gh = h @ ur
        r = _sigmoid(gr + gh[:, :hidden])
        z = _sigmoid(gz + gh[:, hidden : 2 * hidden])
        hn = gh[:, 2 * hidden :] + b_hn
        n = jnp.tanh(gn + r * hn)
        h = (1 - z) * n + z * h
        return h, (h, r, z, n, hn)

    _, (hs, *gates) = jax.lax.scan(step, h0, (xr, xz, xn))
    return hs, (w, u, x, h0, hs, *gates)


@jax.custom_vjp
def gru_scan(w, b, u, b_hn, x, h0):
    """The hidden states [T, B, H] of `nn.GRUCell` run over time-major inputs x [T, B, I] from
    h0 [B, H]; w, b, u are the (r, z, n) input kernels, input biases and recurrent kernels, b_hn
    the bias of the recurrent n projection."""
    return _forward(w, b, u, b_hn, x, h0)[0]


def _backward(residuals, d_hs):
    w, u, x, h0, hs, r, z, n, hn = residuals
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    w_cat, u_cat = jnp.concatenate(w, axis=1), jnp.concatenate(u, axis=1)

    def step(carry, inputs):
        dh, du, dw = carry
        dh_t, hp, x_t, r, z, n, hn = inputs
        dh = dh + dh_t
        dn = dh * (1 - z) * (1 - n * n)  # through tanh
        dz = dh * (hp - n) * z * (1 - z)
        dhn = dn * r
        dr = dn * hn * r * (1 - r)
        dgh = jnp.concatenate([dr, dz, dhn], axis=-1)
        dgx = jnp.concatenate([dr, dz, dn], axis=-1)
        carry = (dh * z + dgh @ u_cat.T, du + hp.T @ dgh, dw + x_t.T @ dgx)
        return carry, (dgx, dgx.sum(0), dhn.sum(0))

    zeros = (jnp.zeros_like(h0), jnp.zeros_like(u_cat), jnp.zeros_like(w_cat))
    inputs = (d_hs, h_prev, x, r, z, n, hn)
    (dh0, du, dw), (dgx, db, db_hn) = jax.lax.scan(step, zeros, inputs, reverse=True)
    dx = dgx @ w_cat.T  # the inputs' gradient (a lower layer's outputs, or unused)
    split = lambda a: tuple(jnp.split(a, 3, axis=-1))  # noqa: E731
    return split(dw), split(db.sum(0)), split(du), db_hn.sum(0), dx, dh0


gru_scan.defvjp(_forward, _backward)


class GRU(nn.RNN):
    """`nn.RNN(nn.GRUCell(...))`, run by `gru_scan` where that is faster (see the module doc)."""

    def __call__(
        self,
        inputs,
        *,
        initial_carry=None,
        init_key=None,
        seq_lengths=None,
        return_carry=None,
        time_major=None,
        reverse=None,
        keep_order=None,
    ):
        cell = self.cell
        written_out = (
            jax.default_backend() == "cpu"
            and type(cell) is nn.GRUCell
            and cell.dtype in (None, jnp.float32)
            and cell.param_dtype == jnp.float32
            and cell.gate_fn is nn.sigmoid
            and cell.activation_fn is nn.tanh
            and cell.carry_init is nn.initializers.zeros
            and inputs.ndim == 3
            and initial_carry is None
            and not self.is_initializing()
        )
        if not written_out:
            return super().__call__(
                inputs,
                initial_carry=initial_carry,
                init_key=init_key,
                seq_lengths=seq_lengths,
                return_carry=return_carry,
                time_major=time_major,
                reverse=reverse,
                keep_order=keep_order,
            )
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        return_carry = self.return_carry if return_carry is None else return_carry
        x = inputs if time_major else inputs.swapaxes(0, 1)
        flip = lambda a: nn.recurrent.flip_sequences(a, seq_lengths, 1, time_major=True)  # noqa: E731
        if reverse:
            x = flip(x)
        p = self.variables["params"]["cell"]
        w, b = (
            tuple(p[g]["kernel"] for g in _INPUT_GATES),
            tuple(p[g]["bias"] for g in _INPUT_GATES),
        )
        u = tuple(p[g]["kernel"] for g in _HIDDEN_GATES)
        h0 = jnp.zeros((x.shape[1], cell.features), jnp.float32)
        hs = gru_scan(w, b, u, p["hn"]["bias"], x.astype(jnp.float32), h0)
        last = hs[-1] if seq_lengths is None else hs[seq_lengths - 1, jnp.arange(hs.shape[1])]
        if reverse and keep_order:
            hs = flip(hs)
        outputs = hs if time_major else hs.swapaxes(0, 1)
        return (last, outputs) if return_carry else outputs
