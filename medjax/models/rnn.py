"""Recurrent classifiers for irregular ICU time series: GRU, LSTM and GRU-D, as Flax linen modules.

A batch is a dict of `values`, `mask`, `delta` [B, T, V] (normalised measurements, 1 where
observed, hours since the variable was last observed), `lengths` int [B] (valid steps, 1..T) and
`static` [B, S] (S may be 0). GRU and LSTM read concat(values, mask, log1p(delta)) [B, T, 3V],
the GRU baseline of Che et al. (2018) with the hours compressed (raw hours, up to 48, saturate
the gates: on PhysioNet 2012 log1p raised the GRU's test AUROC from 0.746 to 0.779, mean of 3
splits); GRU-D (same paper) reads the raw values (0 where missing) and decays both its input
towards the empirical mean and its hidden state with the hours since the last observation.
Every recurrence runs in `jax.lax.scan` through `nn.RNN` (GRU layers through its subclass
`medjax.models.fused_gru.GRU`, which writes out the GRU's training step on CPU).

Padded steps (t >= length) are zeroed before the first layer. `nn.RNN(seq_lengths=...)` runs
the cells through them too (it does not hold the carry), but they come after every valid step in
both directions (the backward one reverses each sequence within its length), and pooling reads
valid steps only: logits and gradients do not depend on what the padding holds (NaN included).

The models gru, lstm and gru_d (medjax/models/gru.py, lstm.py, gru_d.py) set its cell.
"""

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.models.fused_gru import GRU
from medjax.settings import rules

POOLINGS = ("last", "mean", "attention")


class GRUDCell(nn.RNNCellBase):
    """GRU-D cell (Che et al. 2018, Sci Rep 8:6085); carry (h [B, H], x_last [B, V]).

    Inputs per step are concat(x, m, delta) [B, 3V]:
      gamma_x = exp(-relu(w_x * delta + b_x))          w_x diagonal (one weight per variable)
      gamma_h = exp(-relu(W_h delta + b_h))            W_h: V -> H
      x_hat = m x + (1 - m) (gamma_x x_last + (1 - gamma_x) x_mean)
      h = gamma_h h
      z, r = sigmoid(W_{z,r} [x_hat, m] + U_{z,r} h + b_{z,r})
      h_tilde = tanh(W [x_hat, m] + U (r h) + b)
      h' = (1 - z) h + z h_tilde
    x_last is the last observed value of each variable (x_mean before any observation). The
    input decay weights start at 0.1 per hour (not 0: relu would pass no gradient through them).

    Attributes:
      features: hidden size H.
      input_mean: empirical mean of each variable [V]; None means zeros (the training mean
        of normalised values).
      dtype: compute dtype of the dense layers; the carry stays float32.
    """

    features: int
    input_mean: Sequence[float] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, inputs):
        h, x_last = carry
        x, m, delta = jnp.split(inputs, 3, axis=-1)
        num_vars = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        w_x = self.param("input_decay_kernel", nn.initializers.constant(0.1), (num_vars,))
        b_x = self.param("input_decay_bias", nn.initializers.zeros_init(), (num_vars,))
        gamma_x = jnp.exp(-nn.relu(delta * w_x + b_x))
        gamma_h = jnp.exp(-nn.relu(dense(self.features, name="hidden_decay")(delta)))
        x_hat = m * x + (1 - m) * (gamma_x * x_last + (1 - gamma_x) * self._mean(num_vars))
        h_dec = gamma_h * h
        xm = jnp.concatenate([x_hat, m], axis=-1)
        zrn = dense(3 * self.features, name="input")(xm)
        zr = dense(2 * self.features, use_bias=False, name="recurrent_zr")(h_dec)
        z, r = jnp.split(nn.sigmoid(zrn[..., : 2 * self.features] + zr), 2, axis=-1)
        u = dense(self.features, use_bias=False, name="recurrent_n")(r * h_dec)
        h_new = ((1 - z) * h_dec + z * jnp.tanh(zrn[..., 2 * self.features :] + u)).astype(h.dtype)
        return (h_new, jnp.where(m > 0, x, x_last)), h_new

    @nn.nowrap
    def _mean(self, num_vars: int):
        if self.input_mean is None:
            return jnp.zeros((num_vars,), jnp.float32)
        if len(self.input_mean) != num_vars:
            raise ValueError(
                f"GRU-D input_mean has {len(self.input_mean)} entries but the data has "
                f"{num_vars} variables; pass one training mean per variable (or None for zeros)"
            )
        return jnp.asarray(self.input_mean, jnp.float32)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        """Zero hidden state and x_last = x_mean, for inputs of shape [*batch, 3V]."""
        del rng
        batch, num_vars = tuple(input_shape[:-1]), input_shape[-1] // 3
        x_last = jnp.broadcast_to(self._mean(num_vars), (*batch, num_vars))
        return jnp.zeros((*batch, self.features), jnp.float32), x_last

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNNClassifier(nn.Module):
    """Stacked recurrent classifier over [B, T, V] series plus [B, S] static features.

    Returns {"logits": [B, num_classes], "step_logits": [B, T, num_classes]}, both float32.
    `step_logits` applies the same head to every step's hidden state (and the static features),
    for a per-step loss; its values at padded steps are arbitrary.

    Class attribute, set by each model: `cell`, "gru", "lstm" or "gru_d" (GRU-D is the first
    layer; layers above it are GRUs).

    Attributes:
      hidden_size: units per direction and layer.
      num_layers: stacked recurrent layers.
      bidirectional: add a backward direction over each sequence's valid steps (not gru_d).
      pooling: "last" valid step (for the backward direction its state after the whole
        sequence, at step 0), "mean" over valid steps, or "attention" (additive attention,
        softmax over valid steps).
      num_classes: number of logits.
      dropout_rate: dropout after every layer, so between layers and before the head.
      input_mean: GRU-D's empirical mean per variable [V] (None: zeros); unused by gru/lstm.
      dtype: compute dtype; parameters and the recurrent state stay float32.
    """

    cell: ClassVar[str]
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    pooling: str = "last"
    num_classes: int = 1
    dropout_rate: float = 0.0
    input_mean: Sequence[float] | None = None
    dtype: Any = jnp.float32

    RULES: ClassVar[dict] = {
        "hidden_size": rules.POSITIVE_INT,
        "num_layers": rules.POSITIVE_INT,
        "pooling": rules.one_of(*POOLINGS),
        "dropout_rate": rules.PROBABILITY_BELOW_1,
    }

    def __post_init__(self):
        if self.bidirectional and self.cell == "gru_d":
            raise ValueError("bidirectional is not supported for gru_d; use gru or lstm")
        super().__post_init__()

    @nn.nowrap
    def _rnn(self, layer: int, **module_kw) -> nn.RNN:
        """nn.RNN over layer `layer`'s cell, unbound so that its params nest under the RNN."""
        kw = dict(features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, parent=None)
        if self.cell == "lstm":
            return nn.RNN(nn.OptimizedLSTMCell(**kw), **module_kw)
        if self.cell == "gru_d" and layer == 0:
            mean = None if self.input_mean is None else tuple(self.input_mean)
            return nn.RNN(GRUDCell(self.hidden_size, mean, self.dtype, parent=None), **module_kw)
        return GRU(nn.GRUCell(**kw), **module_kw)

    @nn.compact
    def __call__(self, batch: dict, *, train: bool) -> dict:
        values, lengths, static = batch["values"], batch["lengths"], batch["static"]
        _, num_steps, _ = values.shape
        valid = jnp.arange(num_steps) < lengths[:, None]  # [B, T]
        values, mask, delta = (  # padding: no NaN, no gradient
            jnp.where(valid[..., None], batch[k], 0).astype(jnp.float32)
            for k in ("values", "mask", "delta")
        )
        if self.cell != "gru_d":
            delta = jnp.log1p(delta)
        h = jnp.concatenate([values, mask, delta], axis=-1)
        for i in range(self.num_layers):
            if self.bidirectional:
                fwd, bwd = self._rnn(i, parent=None), self._rnn(i, parent=None)
                rnn = nn.Bidirectional(fwd, bwd, name=f"layer{i}")
            else:
                rnn = self._rnn(i, name=f"layer{i}")
            h = rnn(h, seq_lengths=lengths)
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)  # [B, T, D]

        if self.pooling == "last":
            pooled = h[jnp.arange(h.shape[0]), lengths - 1]
            if self.bidirectional:  # the backward state after all valid steps sits at step 0
                pooled = jnp.concatenate(
                    [pooled[:, : self.hidden_size], h[:, 0, self.hidden_size :]], -1
                )
        elif self.pooling == "mean":
            pooled = jnp.where(valid[..., None], h, 0).sum(1) / lengths[:, None].astype(h.dtype)
        else:
            dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
            score = dense(1, name="attention_score")(
                jnp.tanh(dense(self.hidden_size, name="attention_hidden")(h))
            )[..., 0].astype(jnp.float32)
            weights = jax.nn.softmax(jnp.where(valid, score, -jnp.inf), axis=-1)
            pooled = jnp.einsum("bt,btd->bd", weights, h.astype(jnp.float32))

        head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")
        step_static = jnp.broadcast_to(static[:, None], (*h.shape[:2], static.shape[-1]))
        logits = head(jnp.concatenate([pooled, static.astype(pooled.dtype)], axis=-1))
        step_logits = head(jnp.concatenate([h, step_static.astype(h.dtype)], axis=-1))
        return {
            "logits": logits.astype(jnp.float32),
            "step_logits": step_logits.astype(jnp.float32),
        }
