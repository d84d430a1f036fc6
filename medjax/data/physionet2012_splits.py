"""`physionet2012`: the challenge's sets as a dataset, split by stay (one stay per patient).

The union of the sets data.train_sets is split, stratified by label and seeded by data.seed,
into val (data.val_fraction), train and, when data.test_set is '', a held-out test part
(data.test_fraction); else the whole set data.test_set is test. With data.num_folds, K-fold
cross-validation over the union. The files are read (physionet2012.read_set) when a split is
first loaded.
"""

import itertools

import ml_collections
import numpy as np

from medjax.data import physionet2012, time_grid
from medjax.data.dataset import (
    SeriesDataset,
    by_split,
    fold_note,
    fold_split,
    folds_enabled,
    stratified_split,
)
from medjax.errors import ConfigError


def build(data: ml_collections.ConfigDict) -> SeriesDataset:
    train_sets = _train_sets(data)
    if not data.dir:
        raise ConfigError(
            "data.name=physionet2012 needs --config.data.dir=DIR, a folder with set-<x>.tar.gz "
            "(or set-<x>/) and Outcomes-<x>.txt for each set x of data.train_sets and "
            f"data.test_set, as distributed at {physionet2012.URL}"
        )
    names = f"set{'s' * (len(train_sets) > 1)} {'+'.join(train_sets)}"
    description = f"PhysioNet 2012 {names} from {data.dir}"
    if folds_enabled(data):
        description += fold_note(data)
    elif data.test_set:
        description += f" (test: set {data.test_set})"
    else:
        description += f" (test: held-out {data.test_fraction:.0%} of {names})"
    return time_grid.gridded_dataset(
        "physionet2012", lambda: _splits(data, train_sets), description, data
    )


def _splits(data: ml_collections.ConfigDict, train_sets: list[str]):
    """{split: (records, labels)} of the sets read from data.dir (module docstring)."""
    read = {s: physionet2012.read_set(data.dir, s)[:2] for s in (data.test_set, *train_sets) if s}
    _check_disjoint(read)
    stays = sorted(  # by RecordID: the order of the names in train_sets changes no split
        (stay for s in train_sets for stay in zip(*read[s])), key=lambda stay: stay[0].record_id
    )
    records = [record for record, _ in stays]
    labels = np.array([label for _, label in stays], np.int32)
    if folds_enabled(data):
        return by_split(records, labels, fold_split(labels, data))
    rng = np.random.default_rng(data.seed)
    held_out = 0.0 if data.test_set else data.test_fraction
    splits = by_split(records, labels, stratified_split(labels, (held_out, data.val_fraction), rng))
    if data.test_set:
        splits["test"] = read[data.test_set]
    return splits


def _train_sets(data: ml_collections.ConfigDict) -> list[str]:
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
