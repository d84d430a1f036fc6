"""Image transforms: intensity scaling, and training augmentation in TensorFlow for tf.data.

CT comes in HU and is windowed; MedMNIST comes as 0..255 and is scaled. The scaling is written
once for every array module `xp` that calls it: TensorFlow's numpy (tf.experimental.numpy, the
default) in the tf.data pipelines, jax.numpy inside an exported model (medjax.tasks.raw_inputs).
Augmentation takes an image with a channel axis, [H, W, C] or [D, H, W, C], in its raw units,
and is stateless: each example's randomness comes from its own seed, so it is a pure function
of (config seed, step, position in batch).
"""

import math

import tensorflow as tf
import tensorflow.experimental.numpy as tnp


def window(hu, center: float, width: float, xp=tnp):
    """Clips HU to [center - width/2, center + width/2] and maps that range to [-1, 1]."""
    low = center - width / 2
    return xp.clip((xp.asarray(hu, xp.float32) - low) / width, 0.0, 1.0) * 2.0 - 1.0


def scale_uint8(pixels, xp=tnp):
    """Maps 0..255 to [-1, 1] (MedMNIST's own Normalize(mean=0.5, std=0.5))."""
    return xp.asarray(pixels, xp.float32) / 127.5 - 1.0


def augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip_left_right: bool,
    max_rotation_degrees: float,
    max_shift_fraction: float,
    intensity_shift: float,
    intensity_scale: float,
    background: float,
) -> tf.Tensor:
    """Random flip, in-plane rotation, shift and intensity jitter of one image [*spatial, C].

    The rotation turns every plane (the last two spatial axes) about its center by one angle,
    uniform in +-max_rotation_degrees (bilinear). The shift moves the image along every spatial
    axis (depth too: a random crop of a 3D volume) by up to max_shift_fraction of that side.
    Uncovered pixels take `background` (air, -1000 HU, for CT). The intensity becomes
    x * (1 + u) + s with u uniform in +-intensity_scale and s normal with std intensity_shift,
    in the image's own units (HU, or 0..255).
    """
    flip_seed, angle_seed, shift_seed, scale_seed, offset_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    image = tf.cast(image, tf.float32)
    if flip_left_right:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)
    if max_rotation_degrees > 0:
        limit = math.radians(max_rotation_degrees)
        angle = tf.random.stateless_uniform([], angle_seed, -limit, limit)
        image = _rotate_planes(image, angle, background)
    if max_shift_fraction > 0:
        image = _shift(image, shift_seed, max_shift_fraction, background)
    scale = 1.0 + tf.random.stateless_uniform([], scale_seed, -intensity_scale, intensity_scale)
    offset = tf.random.stateless_normal([], offset_seed) * intensity_shift
    return image * scale + offset


def mixup(first, second, seed: tf.Tensor, alpha: float):
    """Mixup (Zhang et al., ICLR 2018) of two examples, each a tuple of float tensors (image,
    label probabilities, ...): w * first + (1 - w) * second, element by element, with one weight
    w ~ Beta(alpha, alpha) drawn from `seed`."""
    gammas = tf.random.stateless_gamma([2], seed, alpha)
    weight = gammas[0] / (gammas[0] + gammas[1])
    return tuple(weight * a + (1.0 - weight) * b for a, b in zip(first, second, strict=True))


def _rotate_planes(image: tf.Tensor, angle: tf.Tensor, background: float) -> tf.Tensor:
    """Rotates the planes of [H, W, C] or [D, H, W, C] about the plane's center."""
    planes = tf.reshape(image, [-1, *image.shape[-3:]])
    height, width = (float(n - 1) for n in image.shape[-3:-1])
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at (cos x - sin y + dx, sin x + cos y + dy).
    dx = (width - (cos * width - sin * height)) / 2
    dy = (height - (sin * width + cos * height)) / 2
    transform = tf.stack([cos, -sin, dx, sin, cos, dy, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=planes,
        transforms=tf.tile(transform[None], [tf.shape(planes)[0], 1]),
        output_shape=tf.shape(planes)[1:3],
        fill_value=background,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.reshape(rotated, tf.shape(image))


def _shift(image: tf.Tensor, seed: tf.Tensor, fraction: float, background: float) -> tf.Tensor:
    """Pads every spatial side by round(fraction * side) and crops a random window back."""
    pads = [round(fraction * n) for n in image.shape[:-1]]
    padded = tf.pad(image, [*([p, p] for p in pads), [0, 0]], constant_values=background)
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)
