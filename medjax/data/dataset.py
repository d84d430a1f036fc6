"""What a dataset is, and the split helpers datasets share.

Every dataset (medjax.data.DATASETS) is an ImageDataset or a SeriesDataset, of one shape: a
`name`, `class_names`, a `description` and `load_split(split)`, for split in SPLITS (split by
patient), which gives the split's raw inputs in their own units with their `labels` and `ids`
str [N], cached, so a split is read or generated once. The preprocessing that turns raw inputs
into model inputs is not the dataset's: training, evaluation, predict and export share it
(medjax.data.transforms for images, medjax.data.icu_series for ICU stays).
"""

import dataclasses
import functools
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


@dataclasses.dataclass(frozen=True)
class SeriesDataset:
    """ICU stays with one label each (one stay per patient), on a regular time grid.

    `load_split(name)` returns the stays as time_grid.to_grid puts them, in the variables' own
    units: `values`, `mask`, `delta` float32 [N, T, V] (V = len(variables), in that order),
    `lengths` int32 [N], `descriptors` float32 [N, len(descriptors)] (NaN unknown), with
    `labels` int32 [N] (class ids) and `ids` str [N]; it is cached.
    """

    name: str
    variables: tuple[str, ...]
    descriptors: tuple[str, ...]
    class_names: tuple[str, ...]
    load_split: Callable[[str], dict[str, np.ndarray]]
    description: str


Dataset = ImageDataset | SeriesDataset


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


def pooled_folds(load_split, data: ml_collections.ConfigDict, splits=SPLITS):
    """load_split over K-fold splits of all the examples of `load_split`'s `splits` pooled,
    each example its own patient (`fold_split`)."""
    parts = [load_split(split) for split in splits]
    pooled = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    folds = dict(zip(("test", "val", "train"), fold_split(pooled["labels"], data)))

    @functools.cache
    def load_fold(split):
        return {k: v[folds[split]] for k, v in pooled.items()}

    return load_fold


def by_split(records: list, labels: np.ndarray, parts) -> dict[str, tuple[list, np.ndarray]]:
    """{split: (records, labels)} of the index arrays `parts`, in the (test, val, train) order
    of fold_split's and of stratified_split's with two fractions."""
    return {
        split: ([records[i] for i in indices], labels[indices])
        for split, indices in zip(("test", "val", "train"), parts)
    }
