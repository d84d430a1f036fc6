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
  log(observation_std) (Rybkin et al., 2021), or with `pixel_std` one per pixel and channel.
  Use `losses.gaussian_log_likelihood`.

The prior p(z) is N(0, I), a learned mixture of Gaussians, or the VampPrior (`prior`). On the
synthetic CT, N(0, I) fitted the posteriors poorly within a short schedule: they sat in a small
region it rarely draws from, and its samples decoded to noise; the VampPrior's components are
posteriors themselves, and its samples are chest slices (docs/vae.md).

On XLA:CPU the sub-pixel upsampling's weight gradient measured 2.5x faster than a 4x4 stride-2
transposed conv's. Convolutions pad inside the conv: with the Eigen convolutions medjax selects
(medjax/xla_cpu.py) the benchmark VAE's gradient took 43 ms against 49 ms with an explicit pad
and a 'VALID' conv (under YNNPACK's convolutions it was the other way round, by up to 40x for
even kernels). 3D convolutions on CPU run as 2D ones over depth taps (medjax.models.conv).

Build it as `medjax.models.create("conv_vae", latent_size=32, ...)` (model.name=conv_vae).
"""

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import losses
from medjax.models.conv import Conv
from medjax.settings import rules

LIKELIHOODS = ("bernoulli", "gaussian_fixed", "gaussian_learned")
PRIORS = ("normal", "mixture", "vamp")


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
    """z [N, L] -> [N, *spatial_shape, channels]: dense, then sub-pixel upsamplings by 2, with
    `blocks` residual blocks at each scale below the output's."""

    widths: Sequence[int]
    channels: int
    blocks: int
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
            for j in range(self.blocks):  # h + conv(relu(conv(h))), then relu
                r = nn.relu(_padded_conv(h, h.shape[-1], 3, 1, self.dtype, f"res{i}_{j}_conv0"))
                h = nn.relu(h + _padded_conv(r, h.shape[-1], 3, 1, self.dtype, f"res{i}_{j}_conv1"))
            h = depth_to_space(_padded_conv(h, 2**ndim * f, 3, 1, self.dtype, f"up{i}_conv"))
            if i < len(features) - 1:
                h = nn.relu(h)
        return h


class _LazyParam(nn.Module):
    """A parameter of shape [*lead, *spatial_shape, *trail], created at the first call."""

    init: Any
    lead: tuple[int, ...] = ()
    trail: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, spatial_shape: tuple[int, ...]):
        shape = (*self.lead, *spatial_shape, *self.trail)
        return self.param("value", self.init, shape, jnp.float32)


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
      decoder_blocks: residual blocks (two 3x3 convs and a skip) at each decoder scale below
        the output's; 0: none.
      pixel_std: "gaussian_learned" only: learn one log std per pixel and channel (shared by all
        images) instead of one scalar.
      prior: p(z): "normal", N(0, I); "mixture", a learned mixture of `prior_components`
        diagonal Gaussians; "vamp", the VampPrior (Tomczak & Welling, 2018): the mean of the
        posteriors q(z | u_m) of `prior_components` learned pseudo-inputs u_m.
      prior_components: M, the mixture's components (prior "mixture" or "vamp").
      dtype: compute dtype; parameters stay float32.

    Init with rngs={"params": ..., "latent": ...}; apply with rngs={"latent": ...}. To sample
    images, decode z from the prior: `z = model.apply(variables, key, n, method="sample_prior")`,
    then `model.apply(variables, z, (H, W), method="decode_mean")`.
    """

    latent_size: int = 32
    widths: Sequence[int] = (32, 64)
    likelihood: str = "bernoulli"
    observation_std: float = 0.1
    channels: int = 1
    eval_samples: int = 1
    decoder_blocks: int = 0
    pixel_std: bool = False
    prior: str = "normal"
    prior_components: int = 16
    dtype: Any = jnp.float32

    RULES: ClassVar[dict] = {
        "latent_size": rules.POSITIVE_INT,
        "widths": rules.shape(rules.POSITIVE_INT),
        "likelihood": rules.one_of(*LIKELIHOODS),
        "observation_std": rules.number(above=0),
        "eval_samples": rules.POSITIVE_INT,
        "decoder_blocks": rules.COUNT,
        "prior": rules.one_of(*PRIORS),
        "prior_components": rules.POSITIVE_INT,
    }

    def __post_init__(self):
        if self.pixel_std and self.likelihood != "gaussian_learned":
            raise ValueError(
                f"ConvVAE: pixel_std learns the Gaussian's std, but the likelihood is"
                f" {self.likelihood!r}; set likelihood to gaussian_learned or pixel_std to False."
            )
        super().__post_init__()

    def setup(self):
        self.encoder = _Encoder(self.latent_size, self.widths, self.dtype)
        self.decoder = _Decoder(self.widths, self.channels, self.decoder_blocks, self.dtype)
        log_std_init = math.log(self.observation_std)
        if self.pixel_std:
            init = nn.initializers.constant(log_std_init)
            self.pixel_log_std = _LazyParam(init, trail=(self.channels,))
        elif self.likelihood == "gaussian_learned":
            init = nn.initializers.constant(log_std_init)
            self.log_std = self.param("log_std", init, (), jnp.float32)
        shape = (self.prior_components, self.latent_size)
        if self.prior == "mixture":
            self.prior_means = self.param("prior_means", nn.initializers.normal(1.0), shape)
            self.prior_log_vars = self.param("prior_log_vars", nn.initializers.zeros, shape)
            self.prior_logits = self.param("prior_logits", nn.initializers.zeros, shape[:1])
        elif self.prior == "vamp":
            init = nn.initializers.uniform(1.0)  # images in [0, 1]
            self.pseudo_inputs = _LazyParam(init, (self.prior_components,), (self.channels,))

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
        "log_std": [] or, with pixel_std, [*spatial_shape, C] (broadcastable)}; the leading
        axes of z are kept.
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
        elif self.pixel_std:
            log_std = self.pixel_log_std(spatial_shape).astype(self._out_dtype)
        else:
            log_std = self.log_std.astype(self._out_dtype)
        return {"mean": h, "log_std": log_std}

    def decode_mean(self, z, spatial_shape: Sequence[int]):
        """z [..., L] -> E[x | z], [..., *spatial_shape, C]: sigmoid(logits) or the mean."""
        params = self.decode(z, spatial_shape)
        return jax.nn.sigmoid(params["logits"]) if "logits" in params else params["mean"]

    def prior_mixture(self, spatial_shape: Sequence[int]):
        """The mixture prior's (logits [M], means [M, L], log_vars [M, L]); the VampPrior's
        are the posteriors of its pseudo-inputs, images of `spatial_shape`."""
        if self.prior == "mixture":
            return self.prior_logits, self.prior_means, self.prior_log_vars
        means, log_vars = self.encode(self.pseudo_inputs(tuple(spatial_shape)))
        return jnp.zeros(self.prior_components, means.dtype), means, log_vars

    def prior_log_density(self, z, spatial_shape: Sequence[int]):
        """log p(z) [...] of z [..., L] under the prior, for images of `spatial_shape`."""
        z = z.astype(self._out_dtype)
        if self.prior == "normal":
            return losses.gaussian_log_density(z, 0.0, 0.0)
        return losses.gaussian_mixture_log_density(z, *self.prior_mixture(spatial_shape))

    def sample_prior(self, key, num: int, spatial_shape: Sequence[int]):
        """`num` draws z ~ p(z), [num, L], from the PRNG key `key`."""
        if self.prior == "normal":
            return jax.random.normal(key, (num, self.latent_size), self._out_dtype)
        logits, means, log_vars = self.prior_mixture(spatial_shape)
        pick_key, noise_key = jax.random.split(key)
        m = jax.random.categorical(pick_key, logits, shape=(num,))
        eps = jax.random.normal(noise_key, (num, self.latent_size), self._out_dtype)
        return means[m] + jnp.exp(0.5 * log_vars[m]) * eps

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
           "log_prior": log p(z) [K, B],
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
            "log_prior": self.prior_log_density(z, x.shape[1:-1]),
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


Model = ConvVAE
