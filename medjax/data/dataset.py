"""The image dataset container every image task reads, and the split helpers datasets share."""

import dataclasses
from collections.abc import Callable

import numpy as np

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
