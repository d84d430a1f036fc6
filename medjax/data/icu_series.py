"""ICU time series on a regular grid, split, normalised on the training split and imputed.

Sources: `synthetic_icu` (the embedded default) and `physionet2012` (the challenge files). Every
split holds `values`, `mask`, `delta` [N, T, V], `lengths` [N], `static` [N, S], `labels` [N]
and `ids` [N]. Normalisation (per variable, over observed entries) and the static features'
statistics are fitted on the training split only and then applied to every split; the
variables in LOG_SCALE are standardised on a log scale.

Imputation (`data.imputation`), in normalised units:
  zero: 0 where missing, which after normalisation is the training mean; the models also read
    the mask and the time since the last observation.
  forward_fill: the last observed value, 0 (the training mean) before the first one.
GRU-D (model `gru_d`) learns its own decay towards the mean from the raw, masked values; use it
with `zero`.
"""

import dataclasses
import itertools

import ml_collections
import numpy as np

from medjax.data import physionet2012, synthetic_icu, time_grid
from medjax.data.dataset import SPLITS, fold_note, fold_split, folds_enabled, stratified_split
from medjax.errors import ConfigError

IMPUTATIONS = ("zero", "forward_fill")
# Heavy-tailed labs and urine output are standardised on a log scale (log1p; all are >= 0), so
# that a few extreme values (ALT of 10^4 IU/L) do not dominate their variable's statistics.
LOG_SCALE = ("ALP", "ALT", "AST", "Bilirubin", "BUN", "Creatinine", "Glucose", "Lactate",
             "TroponinI", "TroponinT", "Urine", "WBC")  # fmt: skip
_LOG_SCALE = np.isin(physionet2012.VARIABLES, LOG_SCALE)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Statistics fitted on a training split: the per-variable mean and std [V] of the observed
    values (LOG_SCALE ones log1p'd), and the mean and std [3] of the STATIC_NUMERIC descriptors."""

    mean: np.ndarray
    std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray


@dataclasses.dataclass(frozen=True)
class EHRDataset:
    name: str
    splits: dict[str, dict[str, np.ndarray]]
    description: str
    normalizer: Normalizer


def load(
    data: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict | None = None
) -> EHRDataset:
    """The dataset named by `data.name`, gridded, split, normalised and imputed, with the
    normalisation fitted on the training split of `fit_data` (by default `data` itself)."""
    if data.imputation not in IMPUTATIONS:
        raise ConfigError(
            f"unknown data.imputation {data.imputation!r}; valid: {', '.join(IMPUTATIONS)}"
        )
    splits, description = split_records(data)
    gridded = {split: grid(records, labels, data) for split, (records, labels) in splits.items()}
    if fit_data is not None and fit_data != data:
        normalizer = training_normalizer(fit_data)
        description += f"; normalised with the training split of {fit_data.name} {fit_data.dir}"
    else:
        normalizer = fit_normalizer(gridded["train"])
    prepared = {
        split: _prepare(arrays, normalizer, data.imputation) for split, arrays in gridded.items()
    }
    sizes = "/".join(str(len(prepared[s]["labels"])) for s in ("train", "val", "test"))
    rates = ", ".join(f"{prepared[s]['labels'].mean():.1%}" for s in ("train", "val", "test"))
    return EHRDataset(
        name=data.name,
        splits=prepared,
        description=f"{description}: {sizes} train/val/test stays, deaths {rates}; "
        f"{data.hours:g} h at {data.step_hours:g} h steps, imputation {data.imputation}",
        normalizer=normalizer,
    )


def split_records(data: ml_collections.ConfigDict):
    """({split: (records, labels)}, a description) of the dataset named by `data.name`."""
    if data.name == "synthetic_ehr":
        splits = {
            split: synthetic_icu.generate(size, seed=data.seed, split=split, hours=data.hours)
            for split, size in (("train", data.num_train), ("val", data.num_val),
                                ("test", data.num_test))
        }  # fmt: skip
        if folds_enabled(data):  # every stay is its own patient
            records = [r for split in SPLITS for r in splits[split][0]]
            labels = np.concatenate([splits[split][1] for split in SPLITS])
            splits = _folds(records, labels, data)
        description = "synthetic ICU cohort"
    elif data.name == "physionet2012":
        splits, description = _physionet_splits(data)
    else:
        raise ConfigError(
            f"unknown dataset data.name={data.name!r} for the ehr task; "
            "valid names: synthetic_ehr, physionet2012"
        )
    return splits, description + fold_note(data)


def _physionet_splits(data):
    """({split: (records, labels)}, a description): the union of the sets data.train_sets split
    by stay (one stay per patient), stratified by label and seeded by data.seed, into val
    (data.val_fraction), train and, when data.test_set is '', a held-out test part
    (data.test_fraction); else the whole set data.test_set is test. With data.num_folds, K-fold
    cross-validation over the union."""
    train_sets = _physionet_sets(data)
    if not data.dir:
        raise ConfigError(
            "data.name=physionet2012 needs --config.data.dir=DIR, a folder with set-<x>.tar.gz "
            "(or set-<x>/) and Outcomes-<x>.txt for each set x of data.train_sets and "
            f"data.test_set, as distributed at {physionet2012.URL}"
        )
    read = {s: physionet2012.read_set(data.dir, s)[:2] for s in (data.test_set, *train_sets) if s}
    _check_disjoint(read)
    stays = sorted(  # by RecordID: the order of the names in train_sets changes no split
        (stay for s in train_sets for stay in zip(*read[s])), key=lambda stay: stay[0].record_id
    )
    records = [record for record, _ in stays]
    labels = np.array([label for _, label in stays], np.int32)
    names = f"set{'s' * (len(train_sets) > 1)} {'+'.join(train_sets)}"
    description = f"PhysioNet 2012 {names} from {data.dir}"
    if folds_enabled(data):
        return _folds(records, labels, data), description
    rng = np.random.default_rng(data.seed)
    held_out = 0.0 if data.test_set else data.test_fraction
    parts = stratified_split(labels, (held_out, data.val_fraction), rng)
    splits = {
        name: _take(records, labels, idx) for name, idx in zip(("test", "val", "train"), parts)
    }
    if data.test_set:
        splits["test"] = read[data.test_set]
        return splits, description + f" (test: set {data.test_set})"
    return splits, description + f" (test: held-out {data.test_fraction:.0%} of {names})"


def _physionet_sets(data) -> list[str]:
    """The names in data.train_sets, with data.test_set checked against them."""
    train_sets = [s.strip() for s in data.train_sets.split(",")]
    valid = ", ".join(physionet2012.SET_NAMES)
    if len(set(train_sets) & set(physionet2012.SET_NAMES)) < len(train_sets):  # unknown, repeated
        raise ConfigError(
            f"data.train_sets={data.train_sets!r}: name one or more of the sets {valid}, each "
            "once, comma-separated (e.g. a,b)"
        )
    if data.test_set not in ("", *physionet2012.SET_NAMES):
        raise ConfigError(
            f"data.test_set={data.test_set!r}; valid: '' (a held-out part of data.train_sets) "
            f"or one of {valid} (that whole set)"
        )
    if data.test_set in train_sets:
        raise ConfigError(
            f"data.test_set={data.test_set!r} is also in data.train_sets={data.train_sets!r}: a "
            "test set must be used for nothing else; drop it from train_sets or set test_set=''"
        )
    if data.test_set and folds_enabled(data):
        raise ConfigError(
            f"data.num_folds={data.num_folds} cross-validates over data.train_sets="
            f"{data.train_sets!r}, each fold the test split in turn, but data.test_set="
            f"{data.test_set!r} names a test set: set test_set='' or num_folds=0"
        )
    return train_sets


def _check_disjoint(read) -> None:
    """ConfigError if two of the sets read ({name: (records, labels)}) share a RecordID."""
    for (x, (xs, _)), (y, (ys, _)) in itertools.combinations(read.items(), 2):
        shared = sorted({r.record_id for r in xs} & {r.record_id for r in ys})
        if shared:
            raise ConfigError(
                f"set-{x} and set-{y} share {len(shared)} RecordID(s) "
                f"({physionet2012.few_ids(shared)}), but the challenge's sets are disjoint: "
                f"put each set in data.dir as distributed at {physionet2012.URL}"
            )


def _folds(records, labels, data):
    """{split: (records, labels)} of K-fold cross-validation, one stay per patient."""
    parts = fold_split(labels, data)
    return {name: _take(records, labels, idx) for name, idx in zip(("test", "val", "train"), parts)}


def _take(records, labels, indices):
    return [records[i] for i in indices], labels[indices]


def grid(records, labels, data) -> dict[str, np.ndarray]:
    """The records on data's time grid (time_grid.to_grid: values in their own units), with
    their labels: the raw series that normalisation and imputation turn into model inputs."""
    arrays = time_grid.to_grid(records, hours=data.hours, step_hours=data.step_hours)
    arrays["labels"] = np.asarray(labels, np.int32)
    return arrays


STATIC_NUMERIC = ("Age", "Height", "Weight")  # standardised; Gender and ICUType are categories
_NUMERIC = [physionet2012.DESCRIPTORS.index(d) for d in STATIC_NUMERIC]
_AGE = physionet2012.DESCRIPTORS.index("Age")
_GENDER = physionet2012.DESCRIPTORS.index("Gender")
_ICU_TYPE = physionet2012.DESCRIPTORS.index("ICUType")


def log_scaled(values: np.ndarray) -> np.ndarray:
    """Gridded values [..., V] with the LOG_SCALE variables log1p'd."""
    return np.where(_LOG_SCALE, np.log1p(values), values)


def fit_normalizer(train: dict[str, np.ndarray]) -> Normalizer:
    """The Normalizer of a (gridded, `grid`) training split."""
    mean, std = time_grid.fit_normalizer(log_scaled(train["values"]), train["mask"])
    numeric = train["descriptors"][:, _NUMERIC]
    return Normalizer(mean, std, np.nanmean(numeric, 0), np.nanstd(numeric, 0) + 1e-6)


def training_normalizer(data: ml_collections.ConfigDict) -> Normalizer:
    """The Normalizer of the training split of the dataset `data` names."""
    return fit_normalizer(grid(*split_records(data)[0]["train"], data))


def _prepare(arrays, normalizer: Normalizer, imputation):
    mask, mean, std = arrays["mask"], normalizer.mean, normalizer.std
    values = log_scaled(arrays["values"])
    values = np.where(mask > 0, (values - mean) / std, 0.0).astype(np.float32)
    if imputation == "forward_fill":
        values = _forward_fill(values, mask)
    descriptors = arrays["descriptors"]
    numeric = (descriptors[:, _NUMERIC] - normalizer.static_mean) / normalizer.static_std
    gender = descriptors[:, [_GENDER]]
    icu_type = descriptors[:, _ICU_TYPE][:, None] == np.arange(1, 5)[None]
    static = np.concatenate(
        [np.nan_to_num(numeric), np.nan_to_num(gender, nan=0.5), icu_type], axis=1
    ).astype(np.float32)
    return {
        "values": values,
        "mask": mask,
        "delta": arrays["delta"],
        "lengths": arrays["lengths"],
        "static": static,
        "labels": arrays["labels"],
        "ids": arrays["record_ids"].astype(str),
        # Raw descriptors for subgroup metrics (NaN: not recorded); not model inputs.
        "age": descriptors[:, _AGE].astype(np.float32),
        "gender": descriptors[:, _GENDER].astype(np.float32),
        "icu_type": descriptors[:, _ICU_TYPE].astype(np.float32),
    }


def _forward_fill(values, mask):
    """Carries each variable's last observed value forward along time (axis 1)."""
    steps = np.arange(values.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(mask > 0, steps, -1), axis=1)
    filled = np.take_along_axis(values, np.maximum(last, 0), axis=1)
    return np.where(last >= 0, filled, 0.0).astype(np.float32)
