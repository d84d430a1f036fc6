"""ICU stays as a task's data: tf.data pipelines of the model inputs of prepared stays
(icu_series.load) with their labels."""

import tensorflow as tf

from medjax.data import pipeline
from medjax.data.icu_series import INPUTS, EHRDataset
from medjax.tasks.task import config_train_batches


def _tensors(dataset: EHRDataset, split: str) -> dict[str, tf.Tensor]:
    arrays = dataset.splits[split]
    return {"label": tf.constant(arrays["labels"])} | {k: tf.constant(arrays[k]) for k in INPUTS}


def train_batches(config, dataset: EHRDataset, start_step: int):
    """This process's training batches from step `start_step` on (see pipeline)."""
    data = _tensors(dataset, "train")
    labels = dataset.splits["train"]["labels"]

    def load(index, seed):
        del seed  # no augmentation
        return {k: tf.gather(v, index) for k, v in data.items()}

    return config_train_batches(config, labels, load, start_step)


def eval_batches(config, dataset: EHRDataset, split: str):
    """This process's batches of `split`, every stay once, padded (`valid`)."""
    data = _tensors(dataset, split)
    return pipeline.config_eval_batches(
        config,
        len(dataset.splits[split]["labels"]),
        lambda i: {k: tf.gather(v, i) for k, v in data.items()},
    )
