"""MedMNIST v2 (Yang et al., Scientific Data 2023): metadata, the official `.npz` files, and the
dataset (`build`).

A dataset is named as its file is: `pneumoniamnist` (28 px), `pneumoniamnist_64` (MedMNIST+
sizes 64, 128, 224 for 2D; 64 for 3D), `nodulemnist3d`. `read(directory, name)` reads
`<directory>/<name>.npz`; when the file is absent it is downloaded from the official Zenodo
record and its MD5 checked, and offline the error says which file to put where. A file the user
put in place is checked for its keys, shapes and labels, not its MD5 (re-saved copies are fine).
"""

import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile

import ml_collections
import numpy as np

from medjax.data.dataset import ImageDataset, fold_note, folds_enabled, pooled_folds
from medjax.errors import ConfigError

URL = "https://zenodo.org/records/10519652/files/{file}?download=1"
HOMEPAGE = "https://medmnist.com/"
SPLITS = ("train", "val", "test")
TASKS = ("binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression")


@dataclasses.dataclass(frozen=True)
class Info:
    task: str  # one of TASKS
    class_names: tuple[str, ...]
    channels: int
    num_train: int  # examples in the official training split
    md5: dict[int, str]  # image size -> MD5 of the official file

    @property
    def is_3d(self) -> bool:
        return tuple(self.md5) == _3D

    @property
    def multilabel(self) -> bool:
        return self.task.startswith("multi-label")


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")  # fmt: skip
_2D, _3D = (28, 64, 128, 224), (28, 64)


def _md5s(sizes, *digests):
    return dict(zip(sizes, digests, strict=True))


INFO = {
    "pathmnist": Info(
        "multi-class",
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma",
         "colorectal adenocarcinoma epithelium"),
        3, 89996,
        _md5s(_2D, "a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
              "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
    ),
    "chestmnist": Info(
        "multi-label, binary-class",
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
         "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
         "pleural", "hernia"),
        1, 78468,
        _md5s(_2D, "02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
              "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
    ),
    "dermamnist": Info(
        "multi-class",
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
         "vascular lesions"),
        3, 7007,
        _md5s(_2D, "0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
              "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
    ),
    "octmnist": Info(
        "multi-class",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        1, 97477,
        _md5s(_2D, "c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
              "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
    ),
    "pneumoniamnist": Info(
        "binary-class",
        ("normal", "pneumonia"),
        1, 4708,
        _md5s(_2D, "28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
              "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
    ),
    "retinamnist": Info(
        "ordinal-regression",
        ("0", "1", "2", "3", "4"),
        3, 1080,
        _md5s(_2D, "bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
              "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
    ),
    "breastmnist": Info(
        "binary-class",
        ("malignant", "normal, benign"),
        1, 546,
        _md5s(_2D, "750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
              "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
    ),
    "bloodmnist": Info(
        "multi-class",
        ("basophil", "eosinophil", "erythroblast",
         "immature granulocytes (myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
         "monocyte", "neutrophil", "platelet"),
        3, 11959,
        _md5s(_2D, "7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
              "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
    ),
    "tissuemnist": Info(
        "multi-class",
        ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
         "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
         "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
        1, 165466,
        _md5s(_2D, "ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
              "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
    ),
    "organamnist": Info(
        "multi-class", _ORGANS, 1, 34561,
        _md5s(_2D, "68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
              "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
    ),
    "organcmnist": Info(
        "multi-class", _ORGANS, 1, 12975,
        _md5s(_2D, "b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
              "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
    ),
    "organsmnist": Info(
        "multi-class", _ORGANS, 1, 13932,
        _md5s(_2D, "9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
              "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
    ),
    "organmnist3d": Info(
        "multi-class",
        ("liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
         "heart", "lung-right", "lung-left", "spleen", "pancreas"),
        1, 971,
        _md5s(_3D, "a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10"),
    ),
    "nodulemnist3d": Info(
        "binary-class", ("benign", "malignant"), 1, 1158,
        _md5s(_3D, "8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8"),
    ),
    "adrenalmnist3d": Info(
        "binary-class", ("normal", "hyperplasia"), 1, 1188,
        _md5s(_3D, "bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f"),
    ),
    "fracturemnist3d": Info(
        "multi-class",
        ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
        1, 1027,
        _md5s(_3D, "6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42"),
    ),
    "vesselmnist3d": Info(
        "binary-class", ("vessel", "aneurysm"), 1, 1335,
        _md5s(_3D, "b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f"),
    ),
    "synapsemnist3d": Info(
        "binary-class", ("inhibitory synapse", "excitatory synapse"), 1, 1230,
        _md5s(_3D, "1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e"),
    ),
}  # fmt: skip
# Every dataset name: each file of the official record (`pneumoniamnist`, `pneumoniamnist_64`).
NAMES = tuple(
    base if size == 28 else f"{base}_{size}" for base, info in INFO.items() for size in info.md5
)


def parse_name(name: str) -> tuple[str, int]:
    """`pneumoniamnist_64` -> ("pneumoniamnist", 64); `pneumoniamnist` -> (..., 28)."""
    base, _, size = name.partition("_")
    if base not in INFO:
        raise ConfigError(
            f"unknown MedMNIST dataset {name!r}; valid names: {', '.join(INFO)} (with _64, "
            "_128 or _224 appended for the larger 2D sizes, _64 for 3D)"
        )
    sizes = INFO[base].md5
    if size and (not size.isdigit() or int(size) == 28 or int(size) not in sizes):
        other = ", ".join(f"{base}_{s}" for s in sizes if s != 28)
        raise ConfigError(f"MedMNIST has no {name!r}; {base} comes as {base}, {other}")
    return base, int(size or 28)


def file_name(name: str) -> str:
    """The official file of a (valid) dataset name: `pneumoniamnist_64.npz`."""
    return f"{name}.npz"


def build(data: ml_collections.ConfigDict) -> ImageDataset:
    """The MedMNIST dataset data.name from data.dir (downloaded there when absent).

    With data.num_folds = K, K-fold cross-validation over the official train and val images
    pooled (`fold_split`: fold data.fold is the run's test split), for choosing a recipe
    without the official test split, which is dropped unread. MedMNIST distributes no patient
    ids, so one patient's images may fall in two folds: a fold's figures serve to compare
    recipes, not to report."""
    base, size = parse_name(data.name)
    info = INFO[base]
    if folds_enabled(data) and info.multilabel:
        raise ConfigError(
            f"data.num_folds={data.num_folds}: {data.name} is multi-label, and folds are dealt "
            "within classes; use data.num_folds=0"
        )
    if not data.dir:
        raise ConfigError(
            f"data.name={data.name} needs --config.data.dir=DIR, the folder that holds (or will "
            f"hold) {file_name(data.name)}"
        )
    splits = read(data.dir, data.name, download=data.download)

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


def read(directory: str, name: str, *, download: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """The official splits of MedMNIST dataset `name` from `<directory>/<name>.npz`.

    Returns {split: {"images": uint8 [N, *spatial(, 3)], "labels": int32 [N] or, multi-label,
    [N, C]}}. The file is downloaded into `directory` (MD5 checked) when absent and `download`.
    """
    base, size = parse_name(name)
    info = INFO[base]
    path = os.path.join(directory, file_name(name))
    if not os.path.exists(path):
        if not download:
            raise ConfigError(_missing_message(name, directory))
        _download(name, info.md5[size], directory)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(
            f"{path} is not a readable MedMNIST .npz file ({type(e).__name__}: {e}); it may be "
            f"truncated or corrupt: delete it and download {URL.format(file=file_name(name))} "
            "again"
        ) from None
    return {split: _split(arrays, split, path, info, size) for split in SPLITS}


def _split(arrays, split, path, info, size):
    images_key, labels_key = f"{split}_images", f"{split}_labels"
    missing = [k for k in (images_key, labels_key) if k not in arrays]
    if missing:
        raise ConfigError(
            f"{path} has no {', '.join(missing)}; a MedMNIST file holds train/val/test _images "
            f"and _labels (found: {', '.join(sorted(arrays))})"
        )
    images, labels = arrays[images_key], arrays[labels_key]
    spatial = (size,) * (3 if info.is_3d else 2)
    expected = (*spatial, 3) if info.channels == 3 else spatial
    if images.dtype != np.uint8 or images.shape[1:] != expected:
        raise ConfigError(
            f"{path}: {images_key} is {images.dtype} {images.shape}, expected uint8 "
            f"[N, {', '.join(map(str, expected))}]; is the file for another dataset or size?"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ConfigError(
            f"{path}: {labels_key} holds {labels.dtype} values; labels must be integer class ids "
            "(or 0/1 per label for multi-label data), as in the official files"
        )
    num_classes = len(info.class_names)
    if info.multilabel:
        if labels.shape != (len(images), num_classes) or not np.isin(labels, (0, 1)).all():
            raise ConfigError(
                f"{path}: {labels_key} must be 0/1 of shape ({len(images)}, {num_classes}), got "
                f"{labels.dtype} {labels.shape}"
            )
    else:
        if labels.shape not in ((len(images),), (len(images), 1)):
            raise ConfigError(
                f"{path}: {labels_key} has shape {labels.shape}, expected ({len(images)},) or "
                f"({len(images)}, 1) for {len(images)} images"
            )
        labels = labels.reshape(-1)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise ConfigError(
                f"{path}: {labels_key}[{bad[0]}] = {labels[bad[0]]} is outside the dataset's "
                f"{num_classes} classes 0..{num_classes - 1}; is the file for another dataset?"
            )
    if not len(images):
        raise ConfigError(f"{path}: the {split} split is empty")
    return {"images": images, "labels": labels.astype(np.int32)}


def _missing_message(name, directory):
    return (
        f"MedMNIST file {file_name(name)} not found in {os.path.abspath(directory)}; download "
        f"{URL.format(file=file_name(name))} (see {HOMEPAGE}) and put it there as "
        f"{file_name(name)}, or point --config.data.dir to the folder that holds it"
    )


def _download(name, md5, directory):
    """Downloads the official file into `directory` atomically (temp file, MD5, rename)."""
    url = URL.format(file=file_name(name))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create data.dir {directory}: {e}") from None
    logging.info("Downloading %s to %s", url, directory)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ConfigError(
                f"downloaded {url} has MD5 {digest.hexdigest()}, expected {md5}; the download "
                "was corrupted: run again, or download the file by hand"
            )
        os.replace(tmp, os.path.join(directory, file_name(name)))
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(
            f"could not download {url} ({e}); offline? {_missing_message(name, directory)}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
