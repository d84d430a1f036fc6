"""Datasets by name: `DATASETS` maps each `data.name` to the function of the `data` config that
builds the dataset, an ImageDataset or a SeriesDataset (medjax.data.dataset: one shape)."""

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np

from medjax.data import ct_folder, medmnist, physionet2012_splits, synthetic_ct, synthetic_icu
from medjax.data.dataset import Dataset, ImageDataset, SeriesDataset, stratified_split
from medjax.errors import ConfigError

DATASETS: dict[str, Callable[[ml_collections.ConfigDict], Dataset]] = {
    "synthetic_ct": synthetic_ct.build,
    "ct_folder": ct_folder.build,
    "synthetic_ehr": synthetic_icu.build,
    "physionet2012": physionet2012_splits.build,
    **dict.fromkeys(medmnist.NAMES, medmnist.build),
}


def build_dataset(data: ml_collections.ConfigDict) -> Dataset:
    """The dataset named by `data.name`; raises ConfigError listing valid names."""
    if data.name not in DATASETS:
        raise ConfigError(
            f"unknown dataset data.name={data.name!r}; valid names: {', '.join(DATASETS)}"
        )
    return DATASETS[data.name](data)


def image_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    """The image dataset named by `data.name`, its training split cut to `data.label_fraction`."""
    dataset = _of_kind(data, ImageDataset, "this task")
    return with_label_fraction(dataset, data.label_fraction, data.seed)


def series_dataset(data: ml_collections.ConfigDict) -> SeriesDataset:
    """The ICU series dataset named by `data.name`."""
    return _of_kind(data, SeriesDataset, "the ehr task")


_HOLDS = {ImageDataset: "images", SeriesDataset: "ICU stays"}


def _of_kind(data: ml_collections.ConfigDict, kind: type, reader: str):
    dataset = build_dataset(data)
    if not isinstance(dataset, kind):
        raise ConfigError(
            f"data.name={data.name!r} is a dataset of {_HOLDS[type(dataset)]}; {reader} reads "
            f"{_HOLDS[kind]}: name a dataset of {_HOLDS[kind]}"
        )
    return dataset


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
