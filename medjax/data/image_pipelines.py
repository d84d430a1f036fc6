"""Images as a task's data: tf.data pipelines of windowed (CT) or scaled (uint8) images with
labels, split sizes and fingerprints; shared by the image tasks."""

import functools

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from medjax.data import pipeline, transforms
from medjax.data.dataset import SPLITS
from medjax.tasks.task import config_train_batches, fingerprint


def image_split_sizes(dataset, *, normal_only: bool = False) -> dict[str, int]:
    """Examples per split; training counts only the normal ones with `normal_only`."""
    labels = {split: dataset.load_split(split)["labels"] for split in SPLITS}
    sizes = {split: len(labels[split]) for split in SPLITS}
    return sizes | ({"train": int(is_normal(labels["train"]).sum())} if normal_only else {})


def image_fingerprint(dataset, *, labels: bool = True) -> str:
    """Every split's example ids and (with `labels`) labels, and the image shape (hashing every
    voxel of a CT dataset would cost more than it tells)."""
    arrays = {"image_shape": np.array(dataset.image_shape)}
    for split in SPLITS:
        loaded = dataset.load_split(split)
        arrays[f"{split}/ids"] = loaded["ids"]
        if labels:
            arrays[f"{split}/labels"] = loaded["labels"]
    return fingerprint(arrays)


def image_pipelines(config: ml_collections.ConfigDict, dataset, *, normal_only: bool = False):
    """(train_batches, eval_batches) of windowed images with labels; training is augmented.

    With `normal_only`, training sees only the normal examples, label 0 or (multi-label) no
    label at all; evaluation sees every one.
    """
    return (
        functools.partial(train_batches, config, dataset, normal_only=normal_only),
        functools.partial(eval_batches, config, dataset),
    )


def train_batches(config, dataset, start_step: int, *, normal_only: bool = False):
    """This process's augmented training batches from step `start_step` on (see pipeline).
    With `data.augment.mixup_alpha` > 0, each example is mixed with a random one of the
    training split (transforms.mixup), its label becoming a row of class probabilities."""
    augment = config.data.augment
    arrays = dataset.load_split("train")
    keep = is_normal(arrays["labels"]) if normal_only else slice(None)
    train_labels = arrays["labels"][keep]
    images, labels = tf.constant(arrays["images"][keep]), tf.constant(train_labels)
    view = augmented_view(config, dataset, images)

    def example(index, seed):
        return view(index, seed), tf.gather(labels, index)

    def load(index, seed):
        if augment.mixup_alpha <= 0:
            image, label = example(index, seed)
            return {"image": image, "label": label}
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        partner = tf.random.stateless_uniform([], seeds[0], 0, len(train_labels), dtype=index.dtype)
        first, second = example(index, seeds[1]), example(partner, seeds[2])
        image, label = transforms.mixup(
            (first[0], _probabilities(first[1], dataset)),
            (second[0], _probabilities(second[1], dataset)),
            seeds[3],
            augment.mixup_alpha,
        )
        return {"image": image, "label": label}

    return config_train_batches(config, train_labels, load, start_step)


def augmented_view(config, dataset, images: tf.Tensor):
    """(index, seed) -> the model input of image `index` of `images`, augmented as the config
    asks with the randomness of `seed`."""
    augment, background = config.data.augment, background_of(dataset)

    def view(index, seed):
        image = with_channels(tf.gather(images, index), dataset)
        if augment.enabled:
            image = transforms.augment(
                image,
                seed,
                flip_left_right=augment.flip_left_right,
                max_rotation_degrees=augment.max_rotation_degrees,
                max_shift_fraction=augment.max_shift_fraction,
                intensity_shift=augment.intensity_shift,
                intensity_scale=augment.intensity_scale,
                background=background,
            )
        return model_input(image, dataset, config.data)

    return view


def _probabilities(label, dataset):
    """A label as float targets: a one-hot row of a class id, or a multi-label row as floats."""
    if dataset.multilabel:
        return tf.cast(label, tf.float32)
    return tf.one_hot(label, dataset.num_classes, dtype=tf.float32)


def eval_batches(config, dataset, split: str):
    """This process's batches of `split`, every example once, padded (`valid`)."""
    arrays = dataset.load_split(split)
    images, labels = tf.constant(arrays["images"]), tf.constant(arrays["labels"])

    def load(index):
        image = with_channels(tf.gather(images, index), dataset)
        return {
            "image": model_input(image, dataset, config.data),
            "label": tf.gather(labels, index),
        }

    return pipeline.config_eval_batches(config, len(arrays["labels"]), load)


def with_channels(pixels, dataset):
    """Images [N, *image_shape] of one channel with their channel axis; others as they are."""
    return pixels if dataset.channels > 1 else pixels[..., None]


def background_of(dataset) -> float:
    """The background in the images' own units: air (-1000 HU) or black."""
    return -1000.0 if dataset.intensity == "hu" else 0.0


def model_input(image, dataset, data: ml_collections.ConfigDict, xp=tnp):
    """Raw pixels (HU or 0..255) -> the model's input in [-1, 1]: windowed CT or scaled uint8,
    computed with the array module `xp` (transforms)."""
    if dataset.intensity == "hu":
        return transforms.window(image, data.window_center, data.window_width, xp)
    return transforms.scale_uint8(image, xp)


def is_normal(labels: np.ndarray) -> np.ndarray:
    """Label 0, or for multi-label rows no finding at all."""
    return labels == 0 if labels.ndim == 1 else ~labels.any(axis=1)
