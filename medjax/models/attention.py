"""Multi-time attention classifier for irregular ICU series (mTAN; Shukla & Marlin, ICLR 2021).

Reads the RNNs' batch (rnn.py): `values`, `mask` [B, T, V] on the time grid, `lengths` [B] and
`static` [B, S]. An observation is an entry with mask 1, at its bin's time t = (step + 0.5) / T
(in [0, 1]); steps at or after `lengths` are padding.

The encoder (mTAND) re-represents each variable at R reference times r, evenly spaced over
[0, 1], by attention over that variable's own observation times. Queries and keys share a
learned continuous-time embedding
  phi(t) = [w_0 t + b_0, sin(w_1 t + b_1), ..., sin(w_{E-1} t + b_{E-1})],
and each of the H heads scores s_h(r, t) = <Q_h phi(r), K_h phi(t)> / sqrt(E / H), so
  z_h(r, v) = sum_t softmax_{t observed for v}(s_h(r, t)) x(t, v),
0 where v is never observed (then a per-variable indicator, also an input, is 0). z [B, R, H V]
and the indicator go through a linear layer into a bidirectional GRU over the reference times;
its final states in both directions, with the static features, feed a linear head.

Unobserved and padded entries get zero weight and their values are never read (NaN included),
so they change neither the logits nor the gradients. The softmax is shifted by each head's and
reference time's largest score over all steps, so a variable whose every observation scores more
than ~87 below it (e^-87 underflows in float32) reads as unobserved.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.models.fused_gru import GRU
from medjax.settings import rules


class TimeEmbedding(nn.Module):
    """phi(t) [..., features]: one linear and features - 1 periodic (sine) components."""

    features: int

    @nn.compact
    def __call__(self, t):
        t = t[..., None].astype(jnp.float32)
        linear = nn.Dense(1, name="linear")(t)
        periodic = jnp.sin(nn.Dense(self.features - 1, name="periodic")(t))
        return jnp.concatenate([linear, periodic], axis=-1)


class MultiTimeAttention(nn.Module):
    """z [B, R, H, V] (see the module docstring) and `observed` [B, V] (any observation).

    Attributes:
      num_reference: R reference times.
      num_heads: H.
      time_features: E, the size of phi(t) and of the query and key projections.
    """

    num_reference: int
    num_heads: int
    time_features: int

    @nn.compact
    def __call__(self, values, mask):
        num_steps = values.shape[1]
        if self.time_features % self.num_heads:
            raise ValueError(
                f"time_features={self.time_features} is not a multiple of num_heads="
                f"{self.num_heads}"
            )
        embed = TimeEmbedding(self.time_features, name="time_embedding")
        head_size = self.time_features // self.num_heads
        project = functools.partial(nn.DenseGeneral, (self.num_heads, head_size))
        reference = jnp.linspace(0.0, 1.0, self.num_reference)
        query = project(name="query")(embed(reference))  # [R, H, D]
        key = project(name="key")(embed((jnp.arange(num_steps) + 0.5) / num_steps))  # [T, H, D]
        scores = jnp.einsum("rhd,thd->hrt", query, key) / jnp.sqrt(head_size)
        weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))  # [H, R, T]
        observed = mask > 0
        total = jnp.einsum("hrt,btv->brhv", weights, observed.astype(jnp.float32))
        weighted = jnp.einsum("hrt,btv->brhv", weights, jnp.where(observed, values, 0.0))
        z = jnp.where(total > 0, weighted / jnp.where(total > 0, total, 1.0), 0.0)
        return z, observed.any(axis=1)


class MTANClassifier(nn.Module):
    """mTAN encoder, bidirectional GRU and linear head; returns {"logits": [B, num_classes]}.

    Attributes:
      hidden_size: units of the input projection and of each GRU direction.
      num_reference, num_heads, time_features: see MultiTimeAttention.
      num_classes: number of logits.
      dropout_rate: dropout before the head.
      observation_dropout: in training, the share of observed entries hidden from the model
        (drawn from the "dropout" rng): an augmentation that samples sparser stays.
      dtype: compute dtype of the GRU and the head; the attention and parameters stay float32.
    """

    hidden_size: int = 64
    num_reference: int = 48
    num_heads: int = 1
    time_features: int = 32
    num_classes: int = 1
    dropout_rate: float = 0.0
    observation_dropout: float = 0.0
    dtype: Any = jnp.float32

    RULES: ClassVar[dict] = {
        "hidden_size": rules.POSITIVE_INT,
        "num_reference": rules.POSITIVE_INT,
        "num_heads": rules.POSITIVE_INT,
        "time_features": rules.POSITIVE_INT,
        "dropout_rate": rules.PROBABILITY_BELOW_1,
        "observation_dropout": rules.PROBABILITY_BELOW_1,
    }

    @nn.compact
    def __call__(self, batch: dict, *, train: bool) -> dict:
        values, lengths = batch["values"], batch["lengths"]
        valid = jnp.arange(values.shape[1])[None, :, None] < lengths[:, None, None]
        mask = jnp.where(valid, batch["mask"], 0)
        if train and self.observation_dropout:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1 - self.observation_dropout, mask.shape
            )
            mask = jnp.where(keep, mask, 0)
        z, observed = MultiTimeAttention(
            self.num_reference, self.num_heads, self.time_features, name="mtand"
        )(values.astype(jnp.float32), mask)
        batch_size, num_variables = observed.shape
        indicator = jnp.broadcast_to(
            observed[:, None], (batch_size, self.num_reference, num_variables)
        )
        features = jnp.concatenate(
            [z.reshape(batch_size, self.num_reference, -1), indicator.astype(jnp.float32)], -1
        )
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        h = dense(self.hidden_size, name="input")(features)
        kw = dict(features=self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, parent=None)
        h = nn.Bidirectional(GRU(nn.GRUCell(**kw)), GRU(nn.GRUCell(**kw)), name="gru")(h)
        pooled = jnp.concatenate([h[:, -1, : self.hidden_size], h[:, 0, self.hidden_size :]], -1)
        pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
        static = batch["static"].astype(pooled.dtype)
        logits = dense(self.num_classes, name="head")(jnp.concatenate([pooled, static], -1))
        return {"logits": logits.astype(jnp.float32)}
