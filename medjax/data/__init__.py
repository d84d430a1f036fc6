"""Datasets by name: each entry builds an `ImageDataset` from the `data` config."""

import dataclasses
import functools

import ml_collections
import numpy as np

from medjax.data import medmnist, synthetic_ct
from medjax.data.ct_folder import ct_folder_dataset
from medjax.data.dataset import (
    SPLITS,
    ImageDataset,
    fold_note,
    fold_split,
    folds_enabled,
    stratified_split,
)
from medjax.errors import ConfigError


def synthetic_ct_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    sizes = {"train": data.num_train, "val": data.num_val, "test": data.num_test}

    @functools.cache
    def generated(split):
        return synthetic_ct.generate(
            sizes[split],
            image_shape=data.image_shape,
            seed=data.seed,
            split=split,
            positive_fraction=data.positive_fraction,
        )

    load_split = pooled_folds(generated, data) if folds_enabled(data) else generated

    kind = "volumes" if len(data.image_shape) == 3 else "axial slices"
    return ImageDataset(
        name="synthetic_ct",
        image_shape=tuple(data.image_shape),
        num_classes=2,
        class_names=("no suspicious nodule", "suspicious nodule"),
        load_split=load_split,
        description=(
            f"synthetic chest CT {kind} of shape {tuple(data.image_shape)} (data seed "
            f"{data.seed}); {sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test "
            f"patients, {data.positive_fraction:.0%} with a suspicious nodule{fold_note(data)}"
        ),
    )


def pooled_folds(load_split, data: ml_collections.ConfigDict, splits=SPLITS):
    """load_split over K-fold splits of all the examples of `load_split`'s `splits` pooled,
    each example its own patient (`dataset.fold_split`)."""
    parts = [load_split(split) for split in splits]
    pooled = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    folds = dict(zip(("test", "val", "train"), fold_split(pooled["labels"], data)))

    @functools.cache
    def load_fold(split):
        return {k: v[folds[split]] for k, v in pooled.items()}

    return load_fold


def medmnist_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    """The MedMNIST dataset data.name from data.dir (downloaded there when absent).

    With data.num_folds = K, K-fold cross-validation over the official train and val images
    pooled (`fold_split`: fold data.fold is the run's test split), for choosing a recipe
    without the official test split, which is dropped unread. MedMNIST distributes no patient
    ids, so one patient's images may fall in two folds: a fold's figures serve to compare
    recipes, not to report."""
    base, size = medmnist.parse_name(data.name)
    info = medmnist.INFO[base]
    if folds_enabled(data) and info.multilabel:
        raise ConfigError(
            f"data.num_folds={data.num_folds}: {data.name} is multi-label, and folds are dealt "
            "within classes; use data.num_folds=0"
        )
    if not data.dir:
        raise ConfigError(
            f"data.name={data.name} needs --config.data.dir=DIR, the folder that holds (or will "
            f"hold) {medmnist.file_name(data.name)}"
        )
    splits = medmnist.read(data.dir, data.name, download=data.download)

    @functools.cache  # the ids are built once per split, as the ImageDataset contract says
    def load_split(split):
        arrays = splits[split]
        ids = np.array([f"{data.name}-{split}-{i}" for i in range(len(arrays["labels"]))])
        return {**arrays, "ids": ids}

    official = "official split"
    if folds_enabled(data):
        del splits["test"]
        load_split = pooled_folds(load_split, data, ("train", "val"))
        official = (
            f"folds of the official train and val images{fold_note(data)}; official test unread"
        )
    sizes = "/".join(str(len(load_split(s)["labels"])) for s in SPLITS)
    spatial = (size,) * (3 if info.is_3d else 2)
    return ImageDataset(
        name=data.name,
        image_shape=spatial,
        num_classes=len(info.class_names),
        class_names=info.class_names,
        load_split=load_split,
        description=f"MedMNIST {data.name} ({info.task}, {len(info.class_names)} classes, "
        f"{'x'.join(map(str, spatial))}x{info.channels}) from {data.dir}: {sizes} "
        f"train/val/test ({official})",
        channels=info.channels,
        multilabel=info.multilabel,
        intensity="uint8",
    )


IMAGE_DATASETS = {"synthetic_ct": synthetic_ct_dataset, "ct_folder": ct_folder_dataset}


def _is_medmnist(name: str) -> bool:
    return name.partition("_")[0] in medmnist.INFO


def image_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    """The dataset named by `data.name`, its training split cut to `data.label_fraction`;
    raises ConfigError listing valid names."""
    if _is_medmnist(data.name):
        dataset = medmnist_dataset(data)
    elif data.name in IMAGE_DATASETS:
        dataset = IMAGE_DATASETS[data.name](data)
    else:
        raise ConfigError(
            f"unknown dataset data.name={data.name!r}; valid names: {', '.join(IMAGE_DATASETS)} "
            f"or a MedMNIST name ({', '.join(medmnist.INFO)}, with _64/_128/_224 for sizes)"
        )
    return with_label_fraction(dataset, data.label_fraction, data.seed)


def with_label_fraction(dataset: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    """`dataset` with a random `fraction` of its training examples (of each class, for
    single-label data; seeded by data.seed), as when only so many were labelled; val and test
    are whole."""
    if fraction == 1.0:
        return dataset
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.label_fraction={fraction} must be in (0, 1]")
    train = dataset.load_split("train")
    labels = train["labels"] if train["labels"].ndim == 1 else np.zeros(len(train["labels"]))
    kept = stratified_split(labels, [fraction], np.random.default_rng((seed, 1)))[0]
    subset = {k: v[kept] for k, v in train.items()}

    def load_split(split):
        return subset if split == "train" else dataset.load_split(split)

    return dataclasses.replace(
        dataset,
        load_split=load_split,
        description=f"{dataset.description}; training on {len(kept)} of its {len(labels)} "
        f"training examples ({fraction:g}, by class, data seed {seed})",
    )
