"""A convolutional variational autoencoder (Kingma & Welling, 2014) for 2D and 3D images.

Inputs are channels-last images [B, H, W, C] or volumes [B, D, H, W, C] with values in [0, 1];
the number of spatial dimensions is read from the input rank at call time, and every spatial
size must be divisible by 2 ** len(widths).

Encoder: one 4x4 stride-2 conv per entry of `widths` (ReLU after each), then a dense layer to
the mean and log-variance of a diagonal Gaussian q(z | x). Decoder, the mirror image: a dense
layer to the smallest feature map, then per width (reversed) a 3x3 conv to 2**ndim times the
output channels followed by depth-to-space (a sub-pixel upsampling by 2; Shi et al., 2016), with
ReLU in between; the last upsampling gives the likelihood's parameters, p(x | z) per pixel:

- "bernoulli": {"logits": [..., *spatial, C]} (use `losses.bernoulli_log_likelihood`).
- "gaussian_fixed": {"mean": ..., "log_std": log(observation_std)} (a scalar, broadcastable).
- "gaussian_learned": the same, with log_std one learned scalar parameter initialised at
  log(observation_std) (Rybkin et al., 2021). Use `losses.gaussian_log_likelihood`.

On XLA:CPU the sub-pixel upsampling's weight gradient measured 2.5x faster than a 4x4 stride-2
transposed conv's. Convolutions pad inside the conv: with the Eigen convolutions medjax selects
(medjax/xla_cpu.py) the benchmark VAE's gradient took 43 ms against 49 ms with an explicit pad
and a 'VALID' conv (under YNNPACK's convolutions it was the other way round, by up to 40x for
even kernels). 3D convolutions on CPU run as 2D ones over depth taps (medjax.models.conv).

Pick a model by name with `create_model("conv_vae", latent_size=32, ...)`.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax.models.conv import Conv

LIKELIHOODS = ("bernoulli", "gaussian_fixed", "gaussian_learned")


def depth_to_space(x, factor: int = 2):
    """[B, *s, factor**ndim * C] -> [B, *(factor * s), C] (sub-pixel shuffle, any ndim).

    Output pixel (b, factor * i + a, ..., c) reads input channel (a, ...) * C + c, the offsets
    (a, ...) in row-major order.
    """
    batch, *spatial, channels = x.shape
    ndim = len(spatial)
    out_channels, rest = divmod(channels, factor**ndim)
    if rest:
        raise ValueError(
            f"depth_to_space: {channels} channels in shape {x.shape} are not a multiple of"
            f" factor**ndim = {factor**ndim}."
        )
    x = x.reshape(batch, *spatial, *(factor,) * ndim, out_channels)
    # [B, s1..sn, f1..fn, C] -> [B, s1, f1, ..., sn, fn, C]
    order = [0] + [i for d in range(ndim) for i in (1 + d, 1 + ndim + d)] + [1 + 2 * ndim]
    x = x.transpose(order)
    return x.reshape(batch, *(factor * s for s in spatial), out_channels)


def _padded_conv(x, features: int, kernel: int, strides: int, dtype: Any, name: str):
    """A `kernel`-sized conv with `strides` over the input padded by 1 on every spatial side."""
    ndim = x.ndim - 2
    conv = Conv(
        features,
        (kernel,) * ndim,
        strides=(strides,) * ndim,
        padding=((1, 1),) * ndim,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
    return conv(x)


class _Encoder(nn.Module):
    """x [N, *spatial, C] -> [N, 2 * latent_size]: stride-2 4x4 convs with ReLU, then dense."""

    latent_size: int
    widths: Sequence[int]
    dtype: Any

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.relu(_padded_conv(x, width, 4, 2, self.dtype, f"conv{i}"))
        dense = nn.Dense(
            2 * self.latent_size, dtype=self.dtype, param_dtype=jnp.float32, name="dense"
        )
        return dense(x.reshape(x.shape[0], -1))


class _Decoder(nn.Module):
    """z [N, L] -> [N, *spatial_shape, channels]: dense, then sub-pixel upsamplings by 2."""

    widths: Sequence[int]
    channels: int
    dtype: Any

    @nn.compact
    def __call__(self, z, spatial_shape: tuple[int, ...]):
        ndim = len(spatial_shape)
        small = tuple(s // 2 ** len(self.widths) for s in spatial_shape)
        dense = nn.Dense(
            math.prod(small) * self.widths[-1],
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="dense",
        )
        h = nn.relu(dense(z).reshape(-1, *small, self.widths[-1]))
        features = [*self.widths[-2::-1], self.channels]  # widths[-2], ..., widths[0], C
        for i, f in enumerate(features):
            h = depth_to_space(_padded_conv(h, 2**ndim * f, 3, 1, self.dtype, f"up{i}_conv"))
            if i < len(features) - 1:
                h = nn.relu(h)
        return h


class ConvVAE(nn.Module):
    """Convolutional VAE; every output is float32 (float64 under a float64 `dtype`).

    Attributes:
      latent_size: L, the dimension of z.
      widths: encoder channels, one stride-2 4x4 conv each; the decoder mirrors them.
      likelihood: "bernoulli", "gaussian_fixed" or "gaussian_learned" (module docstring).
      observation_std: the Gaussian's fixed std, or the initial value of the learned one.
      channels: C, the image channels the decoder produces (and the encoder expects).
      eval_samples: K, the latent samples drawn when not training (for the importance-weighted
        bound); training draws one.
      dtype: compute dtype; parameters stay float32.

    Init with rngs={"params": ..., "latent": ...}; apply with rngs={"latent": ...}. To sample
    images, decode z ~ N(0, I): `model.apply(variables, z, (H, W), method="decode")`.
    """

    latent_size: int = 32
    widths: Sequence[int] = (32, 64)
    likelihood: str = "bernoulli"
    observation_std: float = 0.1
    channels: int = 1
    eval_samples: int = 1
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; valid values: {', '.join(LIKELIHOODS)}"
            )
        if not self.widths:
            raise ValueError("ConvVAE: widths is empty; give at least one encoder width.")
        if self.observation_std <= 0:
            raise ValueError(f"ConvVAE: observation_std={self.observation_std}, expected > 0.")
        super().__post_init__()

    def setup(self):
        self.encoder = _Encoder(self.latent_size, self.widths, self.dtype)
        self.decoder = _Decoder(self.widths, self.channels, self.dtype)
        if self.likelihood == "gaussian_learned":
            init = nn.initializers.constant(math.log(self.observation_std))
            self.log_std = self.param("log_std", init, (), jnp.float32)

    def encode(self, x):
        """x [B, *spatial, C] -> (mean, log_var), each [B, L], of q(z | x)."""
        if x.ndim not in (4, 5) or x.shape[-1] != self.channels:
            raise ValueError(
                f"ConvVAE: input has shape {x.shape}, expected [B, H, W, C] or [B, D, H, W, C]"
                f" with C = channels = {self.channels}; add a channel axis with x[..., None] or"
                " set channels."
            )
        self._check_spatial_shape(x.shape[1:-1])
        h = self.encoder(x).astype(self._out_dtype)
        mean, log_var = jnp.split(h, 2, axis=-1)
        return mean, log_var

    def decode(self, z, spatial_shape: Sequence[int]):
        """z [..., L] -> the likelihood's parameters for images of `spatial_shape` (static).

        Returns {"logits": [..., *spatial_shape, C]} or {"mean": [..., *spatial_shape, C],
        "log_std": [] (a scalar, broadcastable)}; the leading axes of z are kept.
        """
        spatial_shape = tuple(int(s) for s in spatial_shape)
        self._check_spatial_shape(spatial_shape)
        if z.shape[-1:] != (self.latent_size,):
            raise ValueError(
                f"ConvVAE.decode: z has shape {z.shape}, expected [..., L] with L = latent_size"
                f" = {self.latent_size}."
            )
        h = self.decoder(z.reshape(-1, self.latent_size), spatial_shape)
        h = h.astype(self._out_dtype).reshape(*z.shape[:-1], *spatial_shape, self.channels)
        if self.likelihood == "bernoulli":
            return {"logits": h}
        if self.likelihood == "gaussian_fixed":
            log_std = jnp.asarray(math.log(self.observation_std), self._out_dtype)
        else:
            log_std = self.log_std.astype(self._out_dtype)
        return {"mean": h, "log_std": log_std}

    def decode_mean(self, z, spatial_shape: Sequence[int]):
        """z [..., L] -> E[x | z], [..., *spatial_shape, C]: sigmoid(logits) or the mean."""
        params = self.decode(z, spatial_shape)
        return jax.nn.sigmoid(params["logits"]) if "logits" in params else params["mean"]

    def reconstruct(self, x):
        """x [B, *spatial, C] -> E[x | z = posterior mean], the shape of x (no sampling)."""
        mean, _ = self.encode(x)
        return self.decode_mean(mean, x.shape[1:-1])

    def __call__(self, x, *, train: bool, num_samples: int | None = None):
        """Encodes x, draws K reparameterised z ~ q(z | x) and decodes each.

        K is `num_samples`, else 1 in training and `eval_samples` in evaluation (the ELBO is an
        expectation under q, so evaluation samples too). Needs the 'latent' rng.

        Returns:
          {"posterior": {"mean": [B, L], "log_var": [B, L]},
           "z": [K, B, L] with z = mean + exp(log_var / 2) * eps,
           "likelihood": decode(z, spatial) (leading axes [K, B])}, and, in evaluation,
          "reconstruction": E[x | z = posterior mean], the shape of x.
        """
        num_samples = num_samples or (1 if train else self.eval_samples)
        mean, log_var = self.encode(x)
        shape = (num_samples, *mean.shape)
        eps = jax.random.normal(self.make_rng("latent"), shape, self._out_dtype)
        z = mean + jnp.exp(0.5 * log_var) * eps
        outputs = {
            "posterior": {"mean": mean, "log_var": log_var},
            "z": z,
            "likelihood": self.decode(z, x.shape[1:-1]),
        }
        if not train:
            outputs["reconstruction"] = self.decode_mean(mean, x.shape[1:-1])
        return outputs

    @property
    def _out_dtype(self):
        return jnp.promote_types(self.dtype, jnp.float32)

    def _check_spatial_shape(self, spatial_shape):
        factor = 2 ** len(self.widths)
        if len(spatial_shape) not in (2, 3) or any(s % factor or s <= 0 for s in spatial_shape):
            raise ValueError(
                f"ConvVAE: spatial shape {tuple(spatial_shape)} must be 2 or 3 sizes, each a"
                f" positive multiple of 2**len(widths) = {factor} (widths={tuple(self.widths)});"
                " resize or crop the images, or use fewer widths."
            )


MODELS = {"conv_vae": ConvVAE}


def create_model(name: str, **kwargs) -> ConvVAE:
    """Build the VAE called `name` (a key of `MODELS`); kwargs go to `ConvVAE`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
