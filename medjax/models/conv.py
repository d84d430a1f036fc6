"""Convolutions in the form XLA runs fastest on the current backend.

`Conv` is `flax.linen.Conv` with its `conv_general_dilated` swapped for the function below: the
same module, parameters and initialisation, so checkpoints do not depend on the backend.

On XLA:CPU, 3D convolutions run at a few tens of GFLOP/s, and the input gradient of a stride-2
3D convolution at under 1 GFLOP/s. A 3D convolution is a sum over its kd depth taps of 2D
convolutions, so `depth_folded_conv` stacks the kd (strided) depth slices of the padded input
along the channel axis and runs one 2D convolution over (H, W) with the kernel reshaped to
(kh, kw, kd * C_in, C_out), the output depth folded into the batch axis: the same function,
faster to train here (the figures: docs/speed.md). Other backends, and any other
convolution, go to `jax.lax.conv_general_dilated` unchanged.

`ACSConv` is the ACS convolution of volumes (Yang et al., IEEE JBHI 2021): one 2D kernel whose
output channels are split in three, each third run over one plane of the volume.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_CHANNELS_LAST_3D = ("NDHWC", "DHWIO", "NDHWC")


def depth_folded_conv(x, kernel, strides, padding, precision=None):
    """A 3D convolution as one 2D convolution over depth taps stacked on the channel axis.

    x [B, D, H, W, C], kernel [kd, kh, kw, C, O], strides (sd, sh, sw), padding three
    (low, high) pairs -> [B, D', H', W', O], equal to `lax.conv_general_dilated` with
    channels-last dimension numbers.
    """
    kd, kh, kw, cin, cout = kernel.shape
    (pd_lo, pd_hi), *hw_padding = padding
    sd, *hw_strides = strides
    x = jnp.pad(x, ((0, 0), (pd_lo, pd_hi), (0, 0), (0, 0), (0, 0)))
    batch, depth, height, width, _ = x.shape
    out_depth = (depth - kd) // sd + 1
    end = sd * (out_depth - 1) + 1
    # Channel a * C + c of the stack is channel c of depth tap a.
    taps = jnp.concatenate([x[:, a : a + end : sd] for a in range(kd)], axis=-1)
    taps = taps.reshape(batch * out_depth, height, width, kd * cin)
    kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kd * cin, cout)
    y = lax.conv_general_dilated(
        taps,
        kernel,
        tuple(hw_strides),
        tuple(hw_padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )
    return y.reshape(batch, out_depth, *y.shape[1:])


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated`, but a plain channels-last 3D convolution on CPU is run by
    `depth_folded_conv` (the backend is read when the function is traced)."""
    plain_3d = (
        lhs.ndim == 5
        and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST_3D)
        and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and feature_group_count == batch_group_count == 1
        and preferred_element_type is None
    )
    if plain_3d and jax.default_backend() == "cpu":
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:4], rhs.shape[:3], window_strides, padding)
        return depth_folded_conv(lhs, rhs, tuple(window_strides), tuple(padding), precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


class ACSConv(nn.Module):
    """ACS convolution of volumes [B, D, H, W, C]: a 2D kernel [k, k, C, O] whose output
    channels are split in three (`np.array_split`), the first third run over the axial planes
    (H, W), the second over the coronal (D, W), the last over the sagittal (D, H), outputs
    concatenated in that order: a 3D convolution whose kernel is zero off the three planes
    through its centre. Padding is k // 2 in the plane (torchvision's, 'SAME' at stride 1); no
    bias, as medjax's ResNets. Each third runs as a 2D convolution with the axis across its
    plane folded into the batch: a third of a full kernel's work, but thin convolutions (a
    third of the output channels each): faster than full kernels for wide maps, slower for thin
    ones (the measurements: experiments/medmnist/README.md, AdrenalMNIST3D)."""

    features: int
    kernel_size: int
    strides: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        bounds = np.cumsum([len(part) for part in np.array_split(range(self.features), 3)])
        outputs = [
            plane_conv(x, part, axis, self.strides)
            for axis, part in enumerate(jnp.split(kernel, bounds[:2], axis=-1), start=1)
            if part.shape[-1]  # none with fewer than 3 output channels
        ]
        return jnp.concatenate(outputs, axis=-1)


def plane_conv(x, kernel, axis: int, strides: int):
    """The 2D convolution (kernel [k, k, C, O], padding k // 2) of each plane across spatial
    `axis` (1, 2 or 3) of x [B, D, H, W, C], strided by `strides` in the plane and across it."""
    k = kernel.shape[0]
    x = jnp.moveaxis(x, axis, 1)[:, ::strides]  # [B, N, P, Q, C], the planes along axis 1
    batch, planes = x.shape[:2]
    y = lax.conv_general_dilated(
        x.reshape(batch * planes, *x.shape[2:]),
        kernel,
        (strides, strides),
        ((k // 2, k // 2),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.moveaxis(y.reshape(batch, planes, *y.shape[1:]), 1, axis)
