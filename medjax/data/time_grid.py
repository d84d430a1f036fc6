"""Irregular ICU observations on a regular time grid (for GRU, LSTM and GRU-D), the
SeriesDataset of gridded stays, and the normalisation statistics fitted on a training split."""

import functools
from collections.abc import Callable

import ml_collections
import numpy as np

from medjax.data.dataset import SeriesDataset
from medjax.data.physionet2012 import CLASS_NAMES, DESCRIPTORS, VARIABLES
from medjax.errors import ConfigError

_TIME_TOLERANCE = 1e-5  # hours (0.04 s): undoes float32 rounding of HH:MM times when binning


def to_grid(records, *, hours: float = 48.0, step_hours: float = 1.0) -> dict[str, np.ndarray]:
    """Bins records onto T = hours / step_hours regular steps for RNNs (GRU, LSTM, GRU-D).

    Bin t covers [t * step, (t + 1) * step) hours; observations at `hours` or later are dropped
    (set A has some at exactly 48:00, which a 48 h grid leaves out). Returns:
      values float32 [N, T, V]: the mean of the observations in the bin (the mean uses every
        measurement of an hour rather than the last one's noise); 0 where nothing was observed.
      mask float32 [N, T, V]: 1 where the variable was observed in the bin.
      delta float32 [N, T, V]: hours since the variable was last observed, as in GRU-D (Che et
        al. 2018): delta_0 = 0; delta_t = step + delta_{t-1} if mask_{t-1} = 0, else step.
      lengths int32 [N]: steps up to and including the last bin with any observation, >= 1.
      descriptors float32 [N, 5] (NaN unknown), record_ids int64 [N].
    """
    num_steps = round(hours / step_hours) if hours > 0 and step_hours > 0 else 0
    if num_steps < 1 or abs(num_steps * step_hours - hours) > 1e-6 * hours:
        raise ConfigError(
            f"to_grid(hours={hours}, step_hours={step_hours}): hours must be a positive whole "
            f"multiple of step_hours (e.g. hours=48, step_hours=1)"
        )
    n, t, v = len(records), num_steps, len(VARIABLES)
    sizes = np.array([len(r.times) for r in records], np.int64)
    owner = np.repeat(np.arange(n), sizes)
    times = np.concatenate([r.times for r in records] + [np.zeros(0, np.float32)])
    variables = np.concatenate([r.variables for r in records] + [np.zeros(0, np.int32)])
    values = np.concatenate([r.values for r in records] + [np.zeros(0, np.float32)])
    bins = np.floor((times.astype(np.float64) + _TIME_TOLERANCE) / step_hours).astype(np.int64)
    keep = (bins >= 0) & (bins < t)
    flat = ((owner * t + bins) * v + variables)[keep]
    counts = np.bincount(flat, minlength=n * t * v).reshape(n, t, v)
    sums = np.bincount(flat, weights=values[keep], minlength=n * t * v).reshape(n, t, v)
    mask = counts > 0
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=mask)
    delta = np.zeros((n, t, v), np.float32)
    for step in range(1, t):
        delta[:, step] = step_hours + np.where(mask[:, step - 1], 0.0, delta[:, step - 1])
    observed = mask.any(axis=2)
    last = t - np.argmax(observed[:, ::-1], axis=1)
    descriptors = (
        np.stack([r.descriptors for r in records]) if n else np.zeros((0, len(DESCRIPTORS)))
    )
    return {
        "values": means.astype(np.float32),
        "mask": mask.astype(np.float32),
        "delta": delta,
        "lengths": np.where(observed.any(axis=1), last, 1).astype(np.int32),
        "descriptors": descriptors.astype(np.float32),
        "record_ids": np.array([r.record_id for r in records], np.int64),
    }


def gridded_dataset(
    name: str, read: Callable[[], dict], description: str, data: ml_collections.ConfigDict
) -> SeriesDataset:
    """The SeriesDataset of the stays `read()` gives ({split: (records, labels)}: Records of
    physionet2012's variables and descriptors, in-hospital death; read once, when a split is
    first loaded), on the grid of data.hours and data.step_hours."""
    read = functools.cache(read)

    @functools.cache
    def load_split(split):
        records, labels = read()[split]
        arrays = to_grid(records, hours=data.hours, step_hours=data.step_hours)
        ids = arrays.pop("record_ids").astype(str)
        return {**arrays, "labels": np.asarray(labels, np.int32), "ids": ids}

    return SeriesDataset(
        name=name,
        variables=VARIABLES,
        descriptors=DESCRIPTORS,
        class_names=CLASS_NAMES,
        load_split=load_split,
        description=description,
    )


def fit_normalizer(values, mask) -> tuple[np.ndarray, np.ndarray]:
    """Per-variable mean and std [V] over the observed entries (mask == 1) of `values` [..., V].

    Fit it on the training split only. The std is the population std (ddof 0). A variable never
    observed gets mean 0, std 1; one whose std is below 1e-6 (constant, e.g. MechVent, always 1)
    gets std 1, so it is only centred: a 1e-6 floor would blow any later deviation up a millionfold.
    """
    values = np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1])
    mask = np.asarray(mask, np.float64).reshape(values.shape)
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("fit_normalizer: mask must hold only 0 and 1")
    counts = mask.sum(axis=0)
    observed = np.where(mask > 0, values, 0.0)
    mean = observed.sum(axis=0) / np.maximum(counts, 1)
    var = (mask * (observed - mean) ** 2).sum(axis=0) / np.maximum(counts, 1)
    std = np.sqrt(var)
    std = np.where((counts > 0) & (std >= 1e-6), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
