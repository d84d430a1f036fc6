"""ResNets (He et al., 2016) for 2D and 3D channels-last images, as Flax linen modules.

One module class serves both cases: the number of spatial dimensions is read from the input
rank at call time ([B, H, W, C] or [B, D, H, W, C]), and every kernel, stride and pool window
has that many dimensions. Layout, padding and initialisation follow torchvision's ResNet (v1.5:
the stride of a bottleneck sits on its 3x3 convolution), so at width 1 with the standard stem
the parameter counts match torchvision's (resnet18: 11,689,512; resnet50: 25,557,032).

The models resnet10, resnet18, resnet34 and resnet50 (medjax/models/resnet*.py) set its stage
sizes and block.
"""

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from medjax.models.conv import ACSConv, Conv
from medjax.settings import rules

NORMS = ("batch", "group")
CONVS_3D = ("full", "acs")

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(module: nn.Module, features: int, kernel: int, strides: int, ndim: int, name: str):
    """Bias-free conv; 'SAME' at stride 1, torchvision's symmetric padding (kernel // 2) else.
    3D convolutions on CPU run as 2D ones over depth taps (medjax.models.conv); with
    `module.conv3d` "acs", a 3D kernel wider than 1 is an ACS convolution."""
    dtype = module.dtype
    if ndim == 3 and kernel > 1 and module.conv3d == "acs":
        return ACSConv(features, kernel, strides, dtype, jnp.float32, _conv_init, name=name)
    padding = "SAME" if strides == 1 else ((kernel // 2, kernel // 2),) * ndim
    return Conv(
        features,
        (kernel,) * ndim,
        strides=(strides,) * ndim,
        padding=padding,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_init,
        name=name,
    )


def _norm(module: nn.Module, features: int, train: bool, name: str) -> nn.Module:
    """`module.norm`: batch norm (momentum 0.9, eps 1e-5; statistics over the devices of
    `module.norm_axis_name` too, if set) or group norm with gcd(32, features) groups."""
    if module.norm == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=module.dtype,
            param_dtype=jnp.float32,
            axis_name=module.norm_axis_name if train else None,
            name=name,
        )
    return nn.GroupNorm(
        num_groups=math.gcd(32, features),
        epsilon=1e-5,
        dtype=module.dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _shortcut(block: nn.Module, x, shape: tuple[int, ...], train: bool):
    """Identity, or a strided 1x1 conv + norm when the shape changes (call inside `block`)."""
    if x.shape == shape:
        return x
    ndim, f = x.ndim - 2, shape[-1]
    x = _conv(block, f, 1, block.strides, ndim, "conv_proj")(x)
    return _norm(block, f, train, "norm_proj")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1 projection shortcut; `features` channels out."""

    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32
    norm_axis_name: str | None = None
    conv3d: str = "full"

    @nn.compact
    def __call__(self, x, *, train: bool):
        ndim, f = x.ndim - 2, self.features
        y = _conv(self, f, 3, self.strides, ndim, "conv1")(x)
        y = nn.relu(_norm(self, f, train, "norm1")(y))
        y = _conv(self, f, 3, 1, ndim, "conv2")(y)
        y = _norm(self, f, train, "norm2")(y)
        return nn.relu(y + _shortcut(self, x, y.shape, train))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * `features` channels, plus shortcut."""

    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32
    norm_axis_name: str | None = None
    conv3d: str = "full"

    @nn.compact
    def __call__(self, x, *, train: bool):
        ndim, f = x.ndim - 2, self.features
        y = _conv(self, f, 1, 1, ndim, "conv1")(x)
        y = nn.relu(_norm(self, f, train, "norm1")(y))
        y = _conv(self, f, 3, self.strides, ndim, "conv2")(y)
        y = nn.relu(_norm(self, f, train, "norm2")(y))
        y = _conv(self, 4 * f, 1, 1, ndim, "conv3")(y)
        y = _norm(self, 4 * f, train, "norm3")(y)
        return nn.relu(y + _shortcut(self, x, y.shape, train))


class ResNet(nn.Module):
    """ResNet classifier; returns float32 logits [B, num_classes].

    Class attributes, set by each model: `stage_sizes`, blocks per stage (stage i > 0 starts
    with a stride-2 block); `block`, `BasicBlock` or `BottleneckBlock`.

    Attributes:
      num_classes: number of output logits.
      width: multiplier on the base widths 64, 128, 256, 512 (at least 1 channel each).
      norm: "batch" or "group" (group norm keeps no `batch_stats` collection).
      small_input: 3x3 stride-1 stem without max-pool (MedMNIST-sized images) instead of
        torchvision's 7x7 stride-2 conv and 3x3 stride-2 max-pool.
      dropout_rate: dropout on the pooled features before the head (rng name 'dropout').
      dtype: compute dtype; parameters stay float32.
      norm_axis_name: under pmap, the axis over which batch norm also pools its statistics
        in training (synchronised batch norm); None: within the device's batch only.
      conv3d: for volumes, "full" (k x k x k kernels) or "acs" (ACS convolutions: 2D kernels
        split over the three planes, medjax.models.conv.ACSConv; Yang et al. 2021).
      projection_head: a hidden ReLU layer as wide as the pooled features (named projection)
        before the head: SimCLR's projection head (Chen et al., 2020).
    """

    stage_sizes: ClassVar[Sequence[int]]
    block: ClassVar[type]
    num_classes: int
    width: float = 1.0
    norm: str = "batch"
    small_input: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    norm_axis_name: str | None = None
    conv3d: str = "full"
    projection_head: bool = False

    RULES: ClassVar[dict] = {
        "width": rules.number(above=0),
        "norm": rules.one_of(*NORMS),
        "dropout_rate": rules.PROBABILITY_BELOW_1,
        "conv3d": rules.one_of(*CONVS_3D),
    }

    @nn.compact
    def __call__(self, x, *, train: bool):
        ndim = x.ndim - 2
        widths = [max(1, round(64 * 2**i * self.width)) for i in range(len(self.stage_sizes))]
        kernel, strides = (3, 1) if self.small_input else (7, 2)
        x = _conv(self, widths[0], kernel, strides, ndim, "stem_conv")(x)
        x = nn.relu(_norm(self, widths[0], train, "stem_norm")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3,) * ndim, strides=(2,) * ndim, padding=((1, 1),) * ndim)
        for i, (size, features) in enumerate(zip(self.stage_sizes, widths, strict=True)):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                block = self.block(
                    features,
                    strides,
                    self.norm,
                    self.dtype,
                    self.norm_axis_name,
                    self.conv3d,
                    name=f"stage{i}_block{j}",
                )
                x = block(x, train=train)
        # Grad-CAM (medjax.explain): the last stage's maps, and d(logits)/d(maps) as the gradient
        # w.r.t. a zero 'perturbations' variable; both are no-ops unless the caller asks for them.
        self.sow("intermediates", "features", x)
        if self.has_variable("perturbations", "features"):
            x = x + self.get_variable("perturbations", "features")
        x = jnp.mean(x, axis=tuple(range(1, ndim + 1)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.projection_head:
            dense = nn.Dense(
                x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="projection"
            )
            x = nn.relu(dense(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)
