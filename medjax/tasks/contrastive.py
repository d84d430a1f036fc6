"""Self-supervised pretraining of a CNN backbone on images without their labels: SimCLR
(Chen et al., ICML 2020).

Each training image is seen as two augmented views (the config's `data.augment`); the ResNet,
with a projection head (configs/simclr.py's `model.projection_head`: a hidden ReLU layer, then
`loss.projection_size` outputs), learns to
tell each view's partner from the other views of the batch (`losses.nt_xent`). No label is
read. Fine-tune with `--config.init.from_workdir=` this run: the backbone loads, the
projection and head (another shape) are left out.

Why contrastive rather than masked reconstruction: the backbone is the classifier's own ResNet,
so every tensor of it transfers, and no decoder is trained only to be thrown away; on small
grayscale sets, invariance to the augmentations the classifier trains with is what it needs.

Validation and test are scored with two fixed views of each image (seeded by its index): the
NT-Xent loss over the whole split, and `pair_accuracy`, the share of views whose most similar
other view is their partner.
"""

import functools
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from medjax import losses, models
from medjax.data import image_dataset, image_pipelines, pipeline
from medjax.errors import ConfigError
from medjax.outputs import writers
from medjax.tasks.task import Task, compute_dtype, config_train_batches

EVAL_VIEW_SEEDS = (1, 2)  # the fixed seeds of the two views scored in evaluation


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    del fit_data  # images are windowed or scaled by fixed rules: nothing is fitted on data
    if config.privacy.enabled:
        raise ConfigError(
            "the contrastive loss couples the examples of a batch, so DP-SGD's per-example bound "
            "fails; set privacy.enabled=False for the contrastive task"
        )
    if config.data.augment.mixup_alpha > 0 or config.evaluation.test_time_flips:
        raise ConfigError(
            "data.augment.mixup_alpha and evaluation.test_time_flips are for classifiers; "
            "set them to 0 and False for the contrastive task"
        )
    if not config.data.augment.enabled:
        raise ConfigError(
            "the contrastive task learns from two augmented views of each image; set "
            "data.augment.enabled=True"
        )
    dataset = image_dataset(config.data)
    model = models.from_config(
        config.model, num_classes=config.loss.projection_size, dtype=compute_dtype(config)
    )
    temperature = config.loss.temperature
    if not temperature > 0:
        raise ConfigError(f"loss.temperature={temperature} must be positive")
    example = np.zeros((1, 2, *dataset.image_shape, dataset.channels), np.float32)
    return Task(
        model=model,
        model_inputs=lambda batch: batch["views"].reshape(-1, *batch["views"].shape[2:]),
        example_batch={"views": example},
        loss_fn=lambda outputs, batch, step: jnp.mean(
            losses.nt_xent(_per_example(outputs), temperature)
        ),
        eval_outputs_fn=lambda outputs, batch: {
            "embedding": _per_example(outputs),
            "index": batch["index"],
        },
        compute_metrics=functools.partial(compute_metrics, temperature=temperature),
        metric_intervals=lambda gathered: {},
        train_batches=functools.partial(train_batches, config, dataset),
        eval_batches=functools.partial(eval_batches, config, dataset),
        write_outputs=functools.partial(write_outputs, dataset=dataset),
        prediction_table=functools.partial(prediction_table, dataset=dataset),
        description=f"{dataset.description}, without its labels; model "
        f"{models.describe(config.model)} with {config.loss.projection_size} outputs, trained "
        f"by SimCLR's contrastive loss (temperature "
        f"{temperature:g}) on two augmented views of each image",
        selection_metrics=("loss", "pair_accuracy"),
        split_sizes=lambda: image_pipelines.image_split_sizes(dataset),
        data_fingerprint=lambda: image_pipelines.image_fingerprint(dataset, labels=False),
    )


def _per_example(outputs):
    """[2N, D] outputs of the views, in pairs -> [N, 2, D]."""
    return outputs.reshape(-1, 2, outputs.shape[-1])


def train_batches(config, dataset, start_step: int):
    """Two augmented views of each training image per example, `views` [B, 2, *image]."""
    arrays = dataset.load_split("train")
    view = image_pipelines.augmented_view(config, dataset, tf.constant(arrays["images"]))

    def load(index, seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return {"views": tf.stack([view(index, s) for s in seeds])}

    unlabelled = np.zeros(len(arrays["labels"]), np.int32)  # the order never reads labels
    return config_train_batches(config, unlabelled, load, start_step)


def eval_batches(config, dataset, split: str):
    """Two views of each image of `split`, augmented with seeds fixed by its index."""
    arrays = dataset.load_split(split)
    view = image_pipelines.augmented_view(config, dataset, tf.constant(arrays["images"]))

    def load(index):
        index64 = tf.cast(index, tf.int64)
        seeds = [tf.stack([index64, tf.constant(s, tf.int64)]) for s in EVAL_VIEW_SEEDS]
        return {"views": tf.stack([view(index, s) for s in seeds])}

    return pipeline.config_eval_batches(config, len(arrays["labels"]), load)


def compute_metrics(gathered, *, temperature: float) -> dict[str, float]:
    """The NT-Xent loss over the whole split, and the share of views whose nearest other view
    (cosine similarity) is their partner."""
    embeddings = gathered["embedding"].astype(np.float64)
    loss = float(np.mean(losses.nt_xent(jnp.asarray(embeddings, jnp.float32), temperature)))
    return {"loss": loss, "pair_accuracy": float(np.mean(_partner_is_nearest(embeddings)))}


def _partner_is_nearest(embeddings: np.ndarray) -> np.ndarray:
    """[N, 2] bools: whether each view's most similar other view is its partner."""
    n, views, dims = embeddings.shape
    z = embeddings.reshape(n * views, dims)
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argmax(similarity, axis=-1)
    return (nearest == (np.arange(n * views) ^ 1)).reshape(n, views)


def prediction_table(split, gathered, *, dataset):
    """id, the cosine similarity of its two views, whether each view's nearest is its partner."""
    ids = dataset.load_split(split)["ids"][gathered["index"]]
    z = gathered["embedding"].astype(np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    similarity = np.sum(z[:, 0] * z[:, 1], axis=-1)
    nearest = _partner_is_nearest(gathered["embedding"].astype(np.float64)).all(axis=1)
    rows = [[i, f"{s:.6g}", int(p)] for i, s, p in zip(ids, similarity, nearest, strict=True)]
    return ["id", "view_similarity", "partners_nearest"], rows


def write_outputs(workdir, split, gathered, variables, *, dataset):
    del variables
    path = os.path.join(workdir, "predictions", f"{split}.csv")
    writers.write_table(path, *prediction_table(split, gathered, dataset=dataset))
    return {}
