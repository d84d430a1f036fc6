"""Synthetic chest CT in Hounsfield units: 2D axial slices or 3D volumes with a nodule label.

Each example is a distinct synthetic patient: a body (soft tissue in a ring of fat) in air, two
lungs of parenchyma, a spine, ribs and small vessels in the lungs. Label 1 marks a nodule that
looks suspicious: large (3 to 5 voxels in radius at 64 voxels across), of soft-tissue density and
lobulated. Label 0 is a scan with no nodule, a small smooth nodule (1 to 2 voxels), or a
calcified one (bone-like density, any size): size, shape and density together decide the label,
and vessels of the same density as nodules stand in the way of a size-blind rule.

An example is a pure function of (seed, split, index), so splits are disjoint and reproducible.
"""

import functools
from collections.abc import Sequence

import ml_collections
import numpy as np

from medjax.data.dataset import ImageDataset, fold_note, folds_enabled, pooled_folds

AIR, FAT, SOFT_TISSUE, LUNG, BONE = -1000.0, -100.0, 40.0, -850.0, 700.0
NOISE_HU = 20.0
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def build(data: ml_collections.ConfigDict) -> ImageDataset:
    """data.num_train, num_val and num_test synthetic patients of data.image_shape, generated
    with data.seed; with data.num_folds, K-fold splits of them all pooled."""
    sizes = {"train": data.num_train, "val": data.num_val, "test": data.num_test}

    @functools.cache
    def generated(split):
        return generate(
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


def generate(
    num_examples: int,
    *,
    image_shape: Sequence[int],
    seed: int,
    split: str,
    positive_fraction: float,
) -> dict[str, np.ndarray]:
    """Returns `images` int16 [N, *image_shape] in HU, `labels` int32 [N] and `ids` str [N].

    `image_shape` is (H, W) for axial slices or (D, H, W) for volumes (D along the body axis).
    """
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_STREAMS)}")
    if len(image_shape) not in (2, 3) or min(image_shape) < 16:
        raise ValueError(
            f"image_shape {tuple(image_shape)} must be (H, W) or (D, H, W) with every side >= 16"
        )
    images = np.empty((num_examples, *image_shape), np.int16)
    labels = np.empty(num_examples, np.int32)
    for i in range(num_examples):
        rng = np.random.default_rng((seed, _SPLIT_STREAMS[split], i))
        labels[i] = rng.random() < positive_fraction
        images[i] = _scan(rng, tuple(image_shape), bool(labels[i]))
    ids = np.array([f"synthetic-{split}-{i:06d}" for i in range(num_examples)])
    return {"images": images, "labels": labels, "ids": ids}


def _scan(rng: np.random.Generator, shape: tuple[int, ...], suspicious: bool) -> np.ndarray:
    """One scan in HU. Geometry is in normalised coordinates, [-1, 1] along every axis."""
    image = np.full(shape, AIR, np.float32)
    axial = np.inf if len(shape) == 3 else None  # body, spine: cylinders along the body axis

    def paint(center, radii, value):
        _paint(image, center, radii, value)

    def point(*yx, z=0.0):
        return (z, *yx) if axial else yx

    def radii(*ryx, rz=axial):
        return (rz, *ryx) if axial else ryx

    body_y, body_x = rng.uniform(0.62, 0.75), rng.uniform(0.82, 0.95)
    paint(point(0, 0), radii(body_y, body_x), FAT)
    paint(point(0, 0), radii(body_y - 0.07, body_x - 0.07), SOFT_TISSUE)
    for angle in rng.uniform(0.15, np.pi - 0.15, size=rng.integers(4, 8)):  # ribs, front and back
        for side in (-1, 1):
            y, x = (body_y - 0.1) * np.sin(angle) * side, (body_x - 0.1) * np.cos(angle)
            paint(point(y, x), radii(0.04, 0.04), BONE)
    paint(point(body_y - 0.22, 0), radii(0.09, 0.09), BONE)  # vertebra

    lungs = []
    for side in (-1, 1):
        center = point(-0.05 + rng.uniform(-0.04, 0.04), side * rng.uniform(0.36, 0.42))
        size = radii(rng.uniform(0.36, 0.48), rng.uniform(0.22, 0.28), rz=rng.uniform(0.8, 1.0))
        paint(center, size, LUNG)
        lungs.append((np.array(center), np.array(size)))

    def inside_a_lung(margin):
        center, size = lungs[rng.integers(2)]
        offset = rng.normal(size=len(shape))
        offset *= rng.uniform() ** (1 / len(shape)) / np.linalg.norm(offset)
        return center + margin * offset * size

    for _ in range(rng.integers(4, 12)):  # vessels: soft-tissue density, up to a voxel across
        paint(inside_a_lung(0.8), (rng.uniform(0.015, 0.035),) * len(shape), SOFT_TISSUE)

    kind = "suspicious" if suspicious else rng.choice(["none", "small", "calcified"])
    if kind == "suspicious":
        center, radius = inside_a_lung(0.55), rng.uniform(0.09, 0.16)
        density = rng.normal(SOFT_TISSUE - 10, 20)
        paint(center, (radius,) * len(shape), density)
        for _ in range(rng.integers(2, 5)):  # lobulation: overlapping lobes at the border
            direction = rng.normal(size=len(shape))
            lobe = center + 0.7 * radius * direction / np.linalg.norm(direction)
            paint(lobe, (radius * rng.uniform(0.4, 0.65),) * len(shape), density)
    elif kind == "small":
        paint(inside_a_lung(0.6), (rng.uniform(0.03, 0.07),) * len(shape), rng.normal(30, 20))
    elif kind == "calcified":
        paint(inside_a_lung(0.6), (rng.uniform(0.05, 0.12),) * len(shape), rng.uniform(400, 800))

    image += rng.normal(0, NOISE_HU, size=shape).astype(np.float32)
    return np.clip(np.round(image), -1024, 3071)


def _paint(image: np.ndarray, center, radii, value: float) -> None:
    """Blends an ellipsoid (normalised center and radii; inf = unbounded axis) into `image`.

    Edges are anti-aliased over about one voxel. Only the bounding box is touched.
    """
    box, squared, r_min = [], 0.0, np.inf
    for axis, (n, c, r) in enumerate(zip(image.shape, center, radii)):
        scale = (n - 1) / 2
        c_vox, r_vox = (c + 1) * scale, r * scale
        lo = 0 if np.isinf(r) else max(int(c_vox - r_vox) - 1, 0)
        hi = n if np.isinf(r) else min(int(c_vox + r_vox) + 2, n)
        if hi <= lo:
            return
        box.append(slice(lo, hi))
        shape = [1] * image.ndim
        shape[axis] = hi - lo
        squared = squared + ((np.arange(lo, hi) - c_vox) / r_vox).reshape(shape) ** 2
        r_min = min(r_min, r_vox)
    alpha = np.clip((1 - np.sqrt(squared)) * r_min + 0.5, 0, 1)
    region = image[tuple(box)]
    region += alpha * (value - region)
