"""A synthetic ICU cohort: irregular, mostly missing vital signs and labs over the first 48 hours.

Each stay has a latent severity trajectory: a start, a trend and a slow random walk. Measured
variables move with it (each with its own sign and strength, plus noise); sicker patients are
measured more often (informative missingness: labs especially); in-hospital death is drawn from
the severity at the end of the 48 hours and its trend. A model that follows values over time and
reads when things were measured beats one that averages the values.

Stays come as `physionet2012.Record`s (same variables and units), so that the PhysioNet grid,
normalisation and models apply unchanged. A stay is a pure function of (seed, split, index).
"""

import ml_collections
import numpy as np

from medjax.data import physionet2012, time_grid
from medjax.data.dataset import (
    SPLITS,
    SeriesDataset,
    by_split,
    fold_note,
    fold_split,
    folds_enabled,
)

# variable: (normal mean, sd, loading on severity, measurements per hour at severity 0)
_VARIABLES = {
    "HR": (85.0, 12.0, 0.8, 0.9),
    "MAP": (80.0, 10.0, -0.7, 0.8),
    "SysABP": (120.0, 15.0, -0.6, 0.6),
    "RespRate": (18.0, 4.0, 0.6, 0.5),
    "Temp": (37.0, 0.6, 0.4, 0.3),
    "GCS": (13.0, 2.0, -0.9, 0.25),
    "Urine": (120.0, 60.0, -0.6, 0.7),
    "Lactate": (1.5, 0.8, 1.0, 0.04),
    "Creatinine": (1.1, 0.4, 0.7, 0.05),
    "BUN": (20.0, 8.0, 0.6, 0.05),
    "WBC": (10.0, 3.0, 0.5, 0.05),
    "Platelets": (220.0, 60.0, -0.5, 0.05),
    "pH": (7.40, 0.04, -0.7, 0.06),
    "HCO3": (24.0, 3.0, -0.6, 0.05),
}
_INDEX = np.array([physionet2012.VARIABLES.index(v) for v in _VARIABLES], np.int32)
_MEAN, _SD, _LOADING, _RATE = (np.array(c, np.float32) for c in zip(*_VARIABLES.values()))
_LABS = _RATE < 0.1  # sicker patients get many more labs drawn
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
_MAX_STAYS = 1_000_000  # per split
_GRID_HOURS = 0.25  # the latent trajectory's resolution


def build(data: ml_collections.ConfigDict) -> SeriesDataset:
    """data.num_train, num_val and num_test stays of data.hours, generated with data.seed; with
    data.num_folds, K-fold splits of them all pooled (every stay its own patient)."""

    def read():
        sizes = {"train": data.num_train, "val": data.num_val, "test": data.num_test}
        splits = {
            split: generate(sizes[split], seed=data.seed, split=split, hours=data.hours)
            for split in SPLITS
        }
        if not folds_enabled(data):
            return splits
        records = [r for split in SPLITS for r in splits[split][0]]
        labels = np.concatenate([splits[split][1] for split in SPLITS])
        return by_split(records, labels, fold_split(labels, data))

    description = "synthetic ICU cohort" + fold_note(data)  # (refuses bad fold settings)
    return time_grid.gridded_dataset("synthetic_ehr", read, description, data)


def generate(num_stays: int, *, seed: int, split: str, hours: float = 48.0):
    """Returns (records: list[physionet2012.Record], labels int32 [N])."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_SPLIT_STREAMS)}")
    if num_stays > _MAX_STAYS:
        raise ValueError(f"num_stays={num_stays}: at most {_MAX_STAYS:,} stays per split")
    records, labels = [], np.empty(num_stays, np.int32)
    for i in range(num_stays):
        rng = np.random.default_rng((seed, _SPLIT_STREAMS[split], i))
        # Ids are unique over the splits (pooled by cross-validation): split stream, then index.
        record_id = _SPLIT_STREAMS[split] * _MAX_STAYS + i
        record, labels[i] = _stay(rng, record_id=record_id, hours=hours)
        records.append(record)
    return records, labels


def _stay(rng: np.random.Generator, record_id: int, hours: float):
    age = rng.uniform(18, 90)
    descriptors = np.array(
        [age, rng.integers(2), rng.normal(170, 10), rng.integers(1, 5), rng.normal(80, 15)],
        np.float32,
    )
    grid = np.arange(0, hours, _GRID_HOURS)
    start = rng.normal(0.01 * (age - 55), 0.8)
    trend = rng.normal(0, 2.0) / hours  # change over the stay
    walk = np.cumsum(rng.normal(0, 0.1, len(grid)))
    severity = start + trend * grid + walk

    # Measurement times: thinning of a Poisson process whose rate grows with severity.
    boost = np.where(_LABS, 0.9, 0.3)
    rate = _RATE[None] * np.exp(boost[None] * severity[:, None])  # [steps, variables]
    taken = rng.random(rate.shape) < rate * _GRID_HOURS
    steps, which = np.nonzero(taken)
    times = grid[steps] + rng.uniform(0, _GRID_HOURS, len(steps))
    noise = rng.normal(0, 0.5, len(steps))
    values = _MEAN[which] + _SD[which] * (_LOADING[which] * severity[steps] + noise)
    order = np.argsort(times, kind="stable")
    variables = _INDEX[which[order]]
    low, high = (
        np.array(
            [physionet2012.PHYSIOLOGICAL_RANGES[physionet2012.VARIABLES[v]][k] for v in variables]
        )
        for k in (0, 1)
    )
    record = physionet2012.Record(
        record_id=record_id,
        times=times[order].astype(np.float32),
        variables=variables,
        values=np.clip(values[order], low, high).astype(np.float32),
        descriptors=descriptors,
    )
    end = severity[-8:].mean()  # the last two hours
    death = rng.random() < 1 / (1 + np.exp(-(2.0 * end - 5.0)))
    return record, int(death)
