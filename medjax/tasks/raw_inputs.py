"""Each task's raw inputs, as the data readers deliver them, and the function that turns them
into the batch the task's model inputs are made from: the preprocessing of its tf.data pipeline
(medjax.data.transforms, icu_series.model_inputs) in jax.numpy, which an exported model
carries (medjax.train.export).

Images (tasks classification and vae): `image` [b, *image_shape] (one channel) or
[b, *image_shape, C]; float32 Hounsfield units windowed by data.window_center and
data.window_width to [-1, 1] (transforms.window), or uint8 0..255 scaled to [-1, 1]
(transforms.scale_uint8).
ICU stays (task ehr): the stays on the time grid (SeriesDataset.load_split): `values` in the
variables' own units, `mask`, `delta` [b, T, V], `lengths` [b] and `descriptors` [b, D] (NaN
unknown), normalised with the training split's statistics and imputed as icu_series.load does.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax.data import icu_series, image_dataset, image_pipelines, series_dataset
from medjax.errors import ConfigError

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class RawInputs:
    """A task's raw inputs.

    Attributes:
      specs: {input name: (shape after the batch axis, dtype name)}.
      to_batch: the raw inputs (jnp, a leading batch axis) -> the batch `task.model_inputs`
        reads, as the task's eval batches hold it.
      load_split: split -> its raw inputs (numpy), in the order of the task's eval batches.
      class_names: the names of the classes (the VAE: label 1 is the anomaly).
      multilabel: each class is a label of its own (sigmoid probabilities), not one of many.
      contract: what the inputs are, for metadata.json: units, and the grid a reader
        resamples scans or stays to.
    """

    specs: dict[str, tuple[tuple[int, ...], str]]
    to_batch: Callable[[dict[str, jax.Array]], dict[str, jax.Array]]
    load_split: Callable[[str], Arrays]
    class_names: tuple[str, ...]
    multilabel: bool
    contract: dict


def raw_inputs(
    config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict | None = None
) -> RawInputs:
    """The raw inputs of the task `config.task`; statistics fitted on data (the ICU stays'
    normalisation) come from the training split of `fit_data`, by default `config.data`."""
    if config.task in ("classification", "vae"):
        return _images(config.data)
    if config.task == "ehr":
        return _stays(config.data, config.data if fit_data is None else fit_data)
    raise ConfigError(f"no raw inputs for task {config.task!r}; valid: classification, vae, ehr")


def _images(data: ml_collections.ConfigDict) -> RawInputs:
    dataset = image_dataset(data)
    shape = (*dataset.image_shape, *((dataset.channels,) if dataset.channels > 1 else ()))
    hounsfield = dataset.intensity == "hu"

    def to_batch(raw):  # as the image pipelines' eval batches
        image = image_pipelines.with_channels(raw["image"], dataset)
        return {"image": image_pipelines.model_input(image, dataset, data, xp=jnp)}

    contract = {"image": "uint8 pixels 0..255" if not hounsfield else (
        f"Hounsfield units, windowed inside (center {data.window_center:g}, width "
        f"{data.window_width:g})")}  # fmt: skip
    if hounsfield and len(dataset.image_shape) == 3:
        contract["volume_grid"] = {
            "spacing_mm": list(data.spacing),
            "ct_geometry": data.ct_geometry,
            "reader": "medjax.data.ct_volume.load, rounded to integer HU",
        }
    dtype = "float32" if hounsfield else "uint8"
    return RawInputs(
        specs={"image": (shape, dtype)},
        to_batch=to_batch,
        load_split=lambda split: {"image": dataset.load_split(split)["images"].astype(dtype)},
        class_names=tuple(dataset.class_names),
        multilabel=dataset.multilabel,
        contract=contract,
    )


STAY_INPUTS = ("values", "mask", "delta", "lengths", "descriptors")


def _stays(data: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> RawInputs:
    dataset = series_dataset(data)
    normalizer = icu_series.training_normalizer(fit_data)
    series = (round(data.hours / data.step_hours), len(dataset.variables))

    def to_batch(raw):  # as icu_series.load
        return icu_series.model_inputs(raw, normalizer, data.imputation, xp=jnp)

    def load_split(split):
        return {name: dataset.load_split(split)[name] for name in STAY_INPUTS}

    return RawInputs(
        specs={name: (series, "float32") for name in STAY_INPUTS[:3]}
        | {"lengths": ((), "int32"), "descriptors": ((len(dataset.descriptors),), "float32")},
        to_batch=to_batch,
        load_split=load_split,
        class_names=dataset.class_names,
        multilabel=False,
        contract={
            "grid": {"hours": data.hours, "step_hours": data.step_hours},
            "variables": list(dataset.variables),
            "descriptors": list(dataset.descriptors),
            "reader": "medjax.data.physionet2012.read_record, then "
            "medjax.data.time_grid.to_grid: values in the variables' own units, 0 where "
            "unobserved; descriptors NaN where unknown",
            "imputation": data.imputation,
        },
    )
