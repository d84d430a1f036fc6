"""Datasets by name: each entry builds an `ImageDataset` from the `data` config."""

import dataclasses
import functools
from collections.abc import Callable

import ml_collections
import numpy as np

from medjax.data import synthetic_ct
from medjax.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images in Hounsfield units with integer labels, split by patient.

    `load_split(name)` returns `images` [N, *image_shape], `labels` int32 [N] and `ids` str [N];
    it is cached, so a split is read or generated once.
    """

    name: str
    image_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    load_split: Callable[[str], dict[str, np.ndarray]]
    description: str


def synthetic_ct_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    sizes = {"train": data.num_train, "val": data.num_val, "test": data.num_test}

    @functools.cache
    def load_split(split):
        return synthetic_ct.generate(
            sizes[split],
            image_shape=data.image_shape,
            seed=data.seed,
            split=split,
            positive_fraction=data.positive_fraction,
        )

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
            f"patients, {data.positive_fraction:.0%} with a suspicious nodule"
        ),
    )


IMAGE_DATASETS = {"synthetic_ct": synthetic_ct_dataset}


def image_dataset(data: ml_collections.ConfigDict) -> ImageDataset:
    """The dataset named by `data.name`; raises ConfigError listing valid names."""
    if data.name not in IMAGE_DATASETS:
        raise ConfigError(
            f"unknown dataset data.name={data.name!r}; valid names: {', '.join(IMAGE_DATASETS)}"
        )
    return IMAGE_DATASETS[data.name](data)
