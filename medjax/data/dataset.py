"""The image dataset container every image task reads, and the split helpers datasets share."""

import dataclasses
from collections.abc import Callable

import ml_collections
import numpy as np

from medjax.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images with labels, split by patient.

    `load_split(name)` returns `images` [N, *image_shape] (one channel) or [N, *image_shape, C],
    `labels` int32 [N] (class ids) or, when `multilabel`, [N, num_classes] of 0/1, and `ids`
    str [N]; it is cached, so a split is read or generated once. `intensity` says what pixels
    hold: "hu" (CT, windowed by data.window_center/window_width) or "uint8" (0..255).
    """

    name: str
    image_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    load_split: Callable[[str], dict[str, np.ndarray]]
    description: str
    channels: int = 1
    multilabel: bool = False
    intensity: str = "hu"


def stratified_split(labels, fractions, rng):
    """Index arrays of the given fractions of each class, then the rest; seeded."""
    parts = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.cumsum([round(f * len(members)) for f in fractions])
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def folds_enabled(data: ml_collections.ConfigDict) -> bool:
    """Whether data.num_folds asks for K-fold cross-validation; ConfigError on bad values."""
    if data.num_folds == 0:
        return False
    if data.num_folds < 2 or not 0 <= data.fold < data.num_folds:
        raise ConfigError(
            f"data.num_folds={data.num_folds}, data.fold={data.fold}: use num_folds >= 2 and "
            "0 <= fold < num_folds for K-fold cross-validation, or num_folds=0 for none"
        )
    return True


def fold_split(labels, data: ml_collections.ConfigDict):
    """(test, val, train) index arrays of K-fold cross-validation over the items (patients) of
    `labels`: the items are dealt into data.num_folds folds within each class (seeded by
    data.seed), fold data.fold is the test split, and data.val_fraction of the other items,
    stratified, is val. Every item is in exactly one fold."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < data.num_folds:
        raise ConfigError(
            f"data.num_folds={data.num_folds} needs at least that many patients of each class; "
            f"the classes have {counts.tolist()}: lower data.num_folds"
        )
    rng = np.random.default_rng(data.seed)
    test = np.sort(np.concatenate([
        np.array_split(rng.permutation(np.flatnonzero(labels == label)), data.num_folds)[data.fold]
        for label in np.unique(labels)
    ]))  # fmt: skip
    rest = np.setdiff1d(np.arange(labels.size), test)
    val, train = stratified_split(labels[rest], (data.val_fraction,), rng)
    return test, rest[val], rest[train]


def fold_note(data: ml_collections.ConfigDict) -> str:
    """A phrase for a dataset's description: which fold is tested, or nothing."""
    if not folds_enabled(data):
        return ""
    return f"; cross-validation: test fold {data.fold} of {data.num_folds}, splits re-drawn"
