"""`ct_folder`: the user's own CT scans, DICOM series or NIfTI files, listed in a labels.csv.

  data.dir/
    labels.csv          header scan_id,label,patient_id[,split]; label an integer 0, 1, ...
    <scan_id>/          a DICOM series, one slice per file (.dcm or no extension)
    <scan_id>.nii.gz    or a NIfTI file (.nii or .nii.gz)

Scans are read once (`ct_volume.load`: HU at data.spacing, cropped or padded to
data.image_shape, data.ct_geometry) into a TFDS cache of int16 volumes under data.cache_dir
(TFDS's default data dir when empty). The cache is named by a hash of those settings and of the
names, sizes and modification times of every listed scan's files, so a change to any of them
builds a new cache; TFDS writes it to a temporary folder and renames it when complete, so a
failed build leaves nothing a later run would read. Labels and splits come from labels.csv on
every run. Splits are by patient: the split column when present, else patients split seeded by
data.seed, stratified by their highest label, into data.test_fraction, data.val_fraction and the
rest for training.
"""

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import pathlib

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from medjax.data import ct_volume
from medjax.data.dataset import (
    SPLITS,
    ImageDataset,
    fold_note,
    fold_split,
    folds_enabled,
    stratified_split,
)
from medjax.errors import ConfigError

LABELS = "labels.csv"
COLUMNS = ("scan_id", "label", "patient_id")


@dataclasses.dataclass(frozen=True)
class Row:
    scan_id: str
    label: int
    patient_id: str
    split: str  # "" when labels.csv has no split column


def build(data: ml_collections.ConfigDict) -> ImageDataset:
    """The scans of data.dir as an ImageDataset of HU volumes [N, D, H, W], split by patient."""
    if not data.dir:
        raise ConfigError(
            f"data.name=ct_folder needs --config.data.dir=DIR, a folder holding {LABELS} and "
            "one DICOM series folder or NIfTI file per scan"
        )
    if len(data.image_shape) != 3 or len(data.spacing) != 3:
        raise ConfigError(
            f"data.image_shape={tuple(data.image_shape)}, data.spacing={tuple(data.spacing)}: "
            "ct_folder gives volumes; set both as (D, H, W) voxels and (z, y, x) mm"
        )
    labels_path = os.path.join(data.dir, LABELS)
    rows = read_labels(labels_path)
    paths = scan_paths(data.dir, [r.scan_id for r in rows], labels_path)
    labels = np.array([r.label for r in rows], np.int32)
    num_classes = _num_classes(labels, labels_path)
    splits = assign_splits(rows, data=data, labels_path=labels_path)
    builder = CtFolder(
        paths=paths,
        spacing=tuple(float(s) for s in data.spacing),
        image_shape=tuple(data.image_shape),
        geometry=data.ct_geometry,
        data_dir=data.cache_dir or None,
    )
    volumes = builder.load()
    ids = np.array([r.scan_id for r in rows])

    def load_split(split):
        members = splits[split]
        return {
            "images": np.stack([volumes[i] for i in ids[members]]),
            "labels": labels[members],
            "ids": ids[members],
        }

    sizes = "/".join(str(len(splits[s])) for s in SPLITS)
    return ImageDataset(
        name="ct_folder",
        image_shape=tuple(data.image_shape),
        num_classes=num_classes,
        class_names=tuple(f"class {c}" for c in range(num_classes)),
        load_split=load_split,
        description=(
            f"CT scans from {data.dir}: {sizes} train/val/test scans of "
            f"{len({r.patient_id for r in rows})} patients, class counts "
            f"{np.bincount(labels).tolist()}; {tuple(data.image_shape)} voxels of "
            f"{tuple(data.spacing)} mm ({data.ct_geometry}), cached in {builder.data_dir}"
            f"{fold_note(data)}"
        ),
    )


def read_labels(path: str) -> list[Row]:
    """The rows of labels.csv, checked: ids unique, labels integers >= 0, splits known."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"{path} not found; data.name=ct_folder expects data.dir to hold {LABELS} with the "
            "header scan_id,label,patient_id[,split] and one row per scan"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if missing := [c for c in COLUMNS if c not in header]:
            raise ConfigError(
                f"{path}: no column {', '.join(missing)}; expected the header "
                "scan_id,label,patient_id[,split]"
            )
        rows, seen = [], set()
        for line, record in enumerate(reader, start=2):
            scan_id, label, patient_id, split = (
                (record.get(c) or "").strip() for c in (*COLUMNS, "split")
            )
            where = f"{path}, line {line}"
            if not scan_id or not patient_id or scan_id in seen:
                raise ConfigError(
                    f"{where}: scan_id {scan_id!r}, patient_id {patient_id!r}; expected both, "
                    "and each scan_id once"
                )
            if not label.isdecimal():
                raise ConfigError(
                    f"{where}: label {label!r} of scan {scan_id!r}; expected an integer class "
                    "id 0, 1, ..."
                )
            if "split" in header and split not in SPLITS:
                raise ConfigError(
                    f"{where}: split {split!r} of scan {scan_id!r}; expected one of "
                    f"{', '.join(SPLITS)} on every row (or no split column)"
                )
            seen.add(scan_id)
            rows.append(Row(scan_id, int(label), patient_id, split))
    if not rows:
        raise ConfigError(f"{path}: no rows; expected one row per scan")
    return rows


def scan_paths(directory: str, scan_ids: list[str], labels_path: str) -> dict[str, str]:
    """scan id -> its folder (DICOM series) or .nii/.nii.gz file in `directory`."""
    on_disk = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not (
            os.path.isdir(path) or name.endswith(ct_volume.NIFTI_SUFFIXES)
        ):
            continue
        scan_id = name.removesuffix(".gz").removesuffix(".nii")
        if scan_id in on_disk:
            raise ConfigError(
                f"{directory}: two entries for scan {scan_id!r} ({on_disk[scan_id]}, {path}); "
                "expected one: remove one"
            )
        on_disk[scan_id] = path
    if missing := [s for s in scan_ids if s not in on_disk]:
        raise ConfigError(
            f"{labels_path} names {len(missing)} scan(s) not in {directory}: "
            f"{', '.join(missing[:5])}; expected a folder <scan_id>/ (a DICOM series) or a file "
            "<scan_id>.nii[.gz] for each: add the scan or remove its row"
        )
    return {s: on_disk[s] for s in scan_ids}


def assign_splits(
    rows: list[Row], *, data: ml_collections.ConfigDict, labels_path: str
) -> dict[str, np.ndarray]:
    """Row indices of each split; all of a patient's scans land in one split: the split column,
    or patients split by data.seed, stratified by their highest label, into data.test_fraction,
    data.val_fraction and the rest, or (data.num_folds) K-fold cross-validation by patient."""
    split_of = {}
    cross_validate = folds_enabled(data)
    if rows[0].split and cross_validate:
        raise ConfigError(
            f"{labels_path} has a split column, and data.num_folds={data.num_folds} asks for "
            "cross-validation, which draws the splits itself: drop the column or use "
            "data.num_folds=0"
        )
    if rows[0].split:
        for row in rows:
            if split_of.setdefault(row.patient_id, row.split) != row.split:
                raise ConfigError(
                    f"{labels_path}: patient {row.patient_id!r} is in both the "
                    f"{split_of[row.patient_id]} and the {row.split} split; expected all of a "
                    "patient's scans in one split: fix the split column"
                )
    else:
        highest = {}
        for row in rows:
            highest[row.patient_id] = max(highest.get(row.patient_id, 0), row.label)
        patients = sorted(highest)
        patient_labels = np.array([highest[p] for p in patients])
        if cross_validate:
            parts = fold_split(patient_labels, data)
        else:
            fractions = (data.test_fraction, data.val_fraction)
            parts = stratified_split(patient_labels, fractions, np.random.default_rng(data.seed))
        for split, members in zip(("test", "val", "train"), parts):
            split_of.update({patients[i]: split for i in members})
    splits = {
        split: np.array([i for i, r in enumerate(rows) if split_of[r.patient_id] == split], int)
        for split in SPLITS
    }
    for split, members in splits.items():
        if not len(members):
            raise ConfigError(
                f"{labels_path}: no scan in the {split} split ({len(split_of)} patients); "
                "expected scans in train, val and test: add patients, change "
                "data.test_fraction/data.val_fraction, or fix the split column"
            )
    return splits


def _num_classes(labels: np.ndarray, labels_path: str) -> int:
    counts = np.bincount(labels)
    if len(counts) < 2 or not counts.all():
        raise ConfigError(
            f"{labels_path}: scans per label 0, 1, ...: {counts.tolist()}; expected labels "
            "0..K-1 with K >= 2 and every class present (is a label mistyped?)"
        )
    return len(counts)


class CtFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Preprocessed int16 HU volumes of the given scans: one split, `scans`.

    The config's name is a hash of the settings and the scans' files (see the module docstring).
    """

    VERSION = tfds.core.Version("1.1.0")  # raise when ct_volume's output changes
    # TFDS 4.9.10 finds a builder's code_path through the `importlib_resources` backport, which
    # etils >= 1.15 no longer installs (ModuleNotFoundError in download_and_prepare); the path of
    # this file is all TFDS needs it for (to look for a checksums.tsv beside it: there is none).
    code_path = pathlib.Path(__file__)

    def __init__(self, *, paths, spacing, image_shape, geometry, data_dir=None):
        self._paths, self._spacing = dict(sorted(paths.items())), spacing
        self._image_shape, self._geometry = image_shape, geometry
        files = [
            (scan_id, os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns)
            for scan_id, path in self._paths.items()
            for f in (ct_volume.dicom_files(path) if os.path.isdir(path) else [path])
        ]
        settings = [str(self.VERSION), spacing, image_shape, geometry, files]
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        description = f"{len(paths)} scans, {image_shape} voxels of {spacing} mm, {geometry}"
        config = tfds.core.BuilderConfig(name=key, description=description)
        super().__init__(data_dir=data_dir, config=config)

    def load(self) -> dict[str, np.ndarray]:
        """scan id -> int16 HU volume [D, H, W]; builds the cache when it is not there. A build
        that fails leaves no folder behind. TFDS's progress bars stay off: their carriage
        returns would put a later line (an error's) mid-line in a log."""
        logging.info("ct_folder: cache %s", self.data_dir)
        root = self.data_dir_root
        downloads = os.path.join(root, "downloads")  # TFDS's download manager makes these
        folders = [*_folders_up_to(self.data_dir, root), os.path.join(downloads, "extracted"),
                   downloads, root]  # fmt: skip
        created = [d for d in folders if not os.path.exists(d)]
        tfds.display_progress_bar(False)
        try:
            self.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        except BaseException:
            for folder in created:  # children first; only those this build made, if empty
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        examples = tfds.as_numpy(self.as_dataset(split="scans"))
        return {e["scan_id"].decode(): e["volume"] for e in examples}

    def _info(self):
        return self.dataset_info_from_configs(
            description="CT scans in Hounsfield units on a regular grid (medjax ct_folder).",
            features=tfds.features.FeaturesDict(
                {
                    "scan_id": tfds.features.Text(),
                    "volume": tfds.features.Tensor(
                        shape=self._image_shape,
                        dtype=np.int16,
                        encoding=tfds.features.Encoding.ZLIB,
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"scans": self._generate_examples()}

    def _generate_examples(self):
        for scan_id, path in self._paths.items():
            volume = ct_volume.load(
                path, spacing=self._spacing, shape=self._image_shape, geometry=self._geometry
            )
            yield scan_id, {"scan_id": scan_id, "volume": ct_volume.rounded(volume)}


def _folders_up_to(folder: str, root: str) -> list[str]:
    """`folder` and its parents below `root`, deepest first."""
    found, root = [], os.path.abspath(root)
    folder = os.path.abspath(folder)
    while folder.startswith(root + os.sep):
        found.append(folder)
        folder = os.path.dirname(folder)
    return found
