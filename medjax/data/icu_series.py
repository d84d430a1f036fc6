"""ICU stays (a SeriesDataset: synthetic_ehr, physionet2012) normalised on the training split
and imputed. Every split holds `values`, `mask`, `delta` [N, T, V], `lengths` [N], `static`
[N, S], `labels` [N] and `ids` [N]. Normalisation (per variable, over observed entries) and the
static features' statistics are fitted on the training split only and then applied to every
split; the variables in LOG_SCALE are standardised on a log scale.

Imputation (`data.imputation`), in normalised units:
  zero: 0 where missing, which after normalisation is the training mean; the models also read
    the mask and the time since the last observation.
  forward_fill: the last observed value, 0 (the training mean) before the first one.
GRU-D (model `gru_d`) learns its own decay towards the mean from the raw, masked values; use it
with `zero`.
"""

import dataclasses

import ml_collections
import numpy as np

from medjax.data import series_dataset, time_grid
from medjax.data.dataset import SPLITS, SeriesDataset
from medjax.errors import ConfigError

IMPUTATIONS = ("zero", "forward_fill")
INPUTS = ("values", "mask", "delta", "lengths", "static")  # what a model reads of a split
# Heavy-tailed labs and urine output are standardised on a log scale (log1p; all are >= 0), so
# that a few extreme values (ALT of 10^4 IU/L) do not dominate their variable's statistics.
LOG_SCALE = ("ALP", "ALT", "AST", "Bilirubin", "BUN", "Creatinine", "Glucose", "Lactate",
             "TroponinI", "TroponinT", "Urine", "WBC")  # fmt: skip
STATIC_NUMERIC = ("Age", "Height", "Weight")  # standardised; Gender and ICUType are categories


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Statistics fitted on a training split, of the variables and descriptors its dataset
    names: the per-variable mean and std [V] of the observed values (LOG_SCALE ones log1p'd),
    and the mean and std [3] of the STATIC_NUMERIC descriptors."""

    variables: tuple[str, ...]
    descriptors: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray


@dataclasses.dataclass(frozen=True)
class EHRDataset:
    """A SeriesDataset's splits as model inputs (INPUTS, with `labels`, `ids` and the raw `age`,
    `gender` and `icu_type` for subgroups), and the names of its variables and classes."""

    name: str
    splits: dict[str, dict[str, np.ndarray]]
    description: str
    normalizer: Normalizer
    variables: tuple[str, ...]
    class_names: tuple[str, ...]


def load(
    data: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict | None = None
) -> EHRDataset:
    """The series dataset named by `data.name`, normalised and imputed, with the normalisation
    fitted on the training split of `fit_data` (by default `data` itself)."""
    if data.imputation not in IMPUTATIONS:
        raise ConfigError(
            f"unknown data.imputation {data.imputation!r}; valid: {', '.join(IMPUTATIONS)}"
        )
    dataset = series_dataset(data)
    description = dataset.description
    gridded = {split: dataset.load_split(split) for split in SPLITS}
    if fit_data is not None and fit_data != data:
        normalizer = training_normalizer(fit_data)
        description += f"; normalised with the training split of {fit_data.name} {fit_data.dir}"
    else:
        normalizer = fit_normalizer(dataset)
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
        variables=dataset.variables,
        class_names=dataset.class_names,
    )


def log_scaled(values, variables: tuple[str, ...], xp=np):
    """Gridded values [..., V] of `variables` with the LOG_SCALE ones log1p'd."""
    return xp.where(np.isin(variables, LOG_SCALE), xp.log1p(values), values)


def fit_normalizer(dataset: SeriesDataset) -> Normalizer:
    """The Normalizer of `dataset`'s training split."""
    train = dataset.load_split("train")
    values = log_scaled(train["values"], dataset.variables)
    mean, std = time_grid.fit_normalizer(values, train["mask"])
    numeric = train["descriptors"][:, [dataset.descriptors.index(d) for d in STATIC_NUMERIC]]
    return Normalizer(
        dataset.variables,
        dataset.descriptors,
        mean,
        std,
        np.nanmean(numeric, 0),
        np.nanstd(numeric, 0) + 1e-6,
    )


def training_normalizer(data: ml_collections.ConfigDict) -> Normalizer:
    """The Normalizer of the training split of the dataset `data` names."""
    return fit_normalizer(series_dataset(data))


def model_inputs(raw, normalizer: Normalizer, imputation: str, xp=np) -> dict:
    """The model inputs (INPUTS) of stays on the time grid, `raw`: `values`, `mask`, `delta`
    [N, T, V], `lengths` [N] and `descriptors` [N, D] of the normalizer's variables and
    descriptors, as SeriesDataset.load_split gives them (and an exported model takes them),
    normalised with `normalizer` and imputed. `xp` is the array module: numpy for a dataset's
    splits (load), jax.numpy inside an exported model."""
    mask, index = raw["mask"], normalizer.descriptors.index
    values = log_scaled(raw["values"], normalizer.variables, xp)
    values = xp.where(mask > 0, (values - normalizer.mean) / normalizer.std, 0.0)
    values = values.astype(xp.float32)
    if imputation == "forward_fill":
        values = _forward_fill(values, mask, xp)
    descriptors = raw["descriptors"]
    numeric = descriptors[:, [index(d) for d in STATIC_NUMERIC]]
    numeric = (numeric - normalizer.static_mean) / normalizer.static_std
    gender = descriptors[:, [index("Gender")]]
    icu_type = descriptors[:, index("ICUType")][:, None] == xp.arange(1, 5)[None]
    static = xp.concatenate(
        [xp.nan_to_num(numeric), xp.nan_to_num(gender, nan=0.5), icu_type], axis=1
    ).astype(xp.float32)
    return {"values": values, "mask": mask, "delta": raw["delta"], "lengths": raw["lengths"],
            "static": static}  # fmt: skip


def _prepare(arrays, normalizer: Normalizer, imputation):
    descriptors, index = arrays["descriptors"], normalizer.descriptors.index
    return {
        **model_inputs(arrays, normalizer, imputation),
        "labels": arrays["labels"],
        "ids": arrays["ids"],
        # Raw descriptors for subgroup metrics (NaN: not recorded); not model inputs.
        "age": descriptors[:, index("Age")].astype(np.float32),
        "gender": descriptors[:, index("Gender")].astype(np.float32),
        "icu_type": descriptors[:, index("ICUType")].astype(np.float32),
    }


def _forward_fill(values, mask, xp=np):
    """Carries each variable's last observed value forward along time (axis 1)."""
    steps = xp.arange(values.shape[1])[None, :, None]
    last = xp.maximum.accumulate(xp.where(mask > 0, steps, -1), axis=1)
    filled = xp.take_along_axis(values, xp.maximum(last, 0), axis=1)
    return xp.where(last >= 0, filled, 0.0).astype(xp.float32)
