"""CT image transforms in TensorFlow, for tf.data: HU windowing and training augmentation.

Images are HU arrays [*spatial] (2D slices [H, W] or 3D volumes [D, H, W]). Augmentation is
stateless: each example's randomness comes from its own seed, so it is a pure function of
(config seed, step, position in batch).
"""

import math

import tensorflow as tf


def window(hu: tf.Tensor, center: float, width: float) -> tf.Tensor:
    """Clips HU to [center - width/2, center + width/2] and maps that range to [-1, 1]."""
    low = center - width / 2
    return tf.clip_by_value((tf.cast(hu, tf.float32) - low) / width, 0.0, 1.0) * 2.0 - 1.0


def augment(
    hu: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip_left_right: bool,
    max_rotation_degrees: float,
    hu_shift: float,
    hu_scale: float,
) -> tf.Tensor:
    """Random left-right flip, in-plane rotation and intensity jitter of one HU image.

    The rotation turns every axial plane about its center by the same angle, uniform in
    +-max_rotation_degrees (bilinear, air outside). The intensity becomes
    hu * (1 + u) + s with u uniform in +-hu_scale and s normal with std hu_shift.
    """
    flip_seed, angle_seed, scale_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    image = tf.cast(hu, tf.float32)
    if flip_left_right:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[-1]), lambda: image)
    if max_rotation_degrees > 0:
        limit = math.radians(max_rotation_degrees)
        angle = tf.random.stateless_uniform([], angle_seed, -limit, limit)
        image = _rotate_planes(image, angle)
    scale = 1.0 + tf.random.stateless_uniform([], scale_seed, -hu_scale, hu_scale)
    shift = tf.random.stateless_normal([], shift_seed) * hu_shift
    return image * scale + shift


def _rotate_planes(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotates the last two axes of [H, W] or [D, H, W] about the plane's center."""
    planes = tf.reshape(image, [-1, *image.shape[-2:], 1])
    height, width = (float(n - 1) for n in image.shape[-2:])
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at (cos x - sin y + dx, sin x + cos y + dy).
    dx = (width - (cos * width - sin * height)) / 2
    dy = (height - (sin * width + cos * height)) / 2
    transform = tf.stack([cos, -sin, dx, sin, cos, dy, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=planes,
        transforms=tf.tile(transform[None], [tf.shape(planes)[0], 1]),
        output_shape=tf.shape(planes)[1:3],
        fill_value=-1000.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.reshape(rotated, tf.shape(image))
