"""What a task hands the task-agnostic trainer."""

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import privacy
from medjax.data import pipeline

Batch = dict[str, np.ndarray]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict):
    """The jnp dtype named by `config.dtype` (its valid names: medjax/settings/rules.py)."""
    return DTYPES[config.dtype]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """Model, loss, metrics and data of one task. Hashed by identity: a static jit argument.

    Attributes:
      model: a linen module; `model.apply(variables, model_inputs(batch), train=...)`.
      model_inputs: batch -> what the model reads (an array or a dict of arrays).
      example_batch: a batch of one example, to initialise the model.
      loss_fn: (model outputs, batch, step) -> scalar training loss (jnp, jittable).
      eval_outputs_fn: (model outputs, batch) -> per-example arrays kept for metrics;
        evaluation applies the model and it to each example alone (steps.eval_outputs).
      compute_metrics: gathered per-example arrays of a split -> {metric name: float}.
      metric_intervals: gathered arrays -> {metric name: (low, high)}, 95% bootstrap intervals
        of the headline metrics (medjax.stats.bootstrap), or {} where none are computed.
      train_batches: start step -> endless iterator of this process's training batches.
      eval_batches: split name -> iterator over the split once, padded, with `valid`.
      write_outputs: (workdir, split, gathered arrays, model variables) -> writes predictions
        and plots; returns images ({name: [H, W, C] array}) for TensorBoard, or {}. The
        variables are None for an ensemble: tasks with `ensemble_outputs` must not need them.
      prediction_table: (split, gathered arrays) -> (header, rows) of per-example predictions,
        the first column `id`: predictions/<split>.csv, and --mode=predict's table.
      description: data and model in a sentence, for the report.
      selection_metrics: metric names fit to select checkpoints and stop early.
      split_sizes: () -> {split: examples it feeds}, checked before training starts.
      data_fingerprint: () -> a hash of the data, stored with checkpoints (`fingerprint`).
      binary_scores: gathered arrays -> (0/1 labels [N], scores [N]), higher meaning class 1,
        for binary tasks: the operating point and calibration are fitted on val's; None where
        the task is not binary.
      final_metrics: (val's binary_scores, the evaluated split's) -> {name: float}, the task's
        own metrics of the final evaluation, their thresholds fitted on val; None: none.
      scores_are_log_odds: the scores are the model's log-odds of class 1 (recalibrated by
        temperature scaling); otherwise another score (recalibrated by Platt scaling).
      subgroups: split -> {grouping: group name of each of the split's rows}, for metrics
        within subgroups of patients (medjax.stats.subgroups); None where the data has no metadata.
      explain: (plots dir, split, model variables, a batch of examples, the `explain` config,
        a PRNG key) -> paths of the attribution plots written (medjax.explain); None: none.
      rng_streams: the names of the random streams the model draws from (flax `rngs`); the
        trainer hands each its own key.
      ensemble_outputs: the gathered arrays of several models on one split (the same examples
        in the same order) -> an ensemble's: the mean of their logits, with what derives from
        logits (probabilities) recomputed from it, numpy arrays of numpy ones; traceable, for
        the exported function of an ensemble; None where the outputs have no logits (the
        VAE): such a task has no ensembles (--mode=ensemble).
      test_time_views: model inputs -> a tuple of inputs (test-time augmentation) whose model
        outputs evaluation averages; None: the inputs alone.
    """

    model: nn.Module
    model_inputs: Callable[[Batch], Any]
    example_batch: Batch
    loss_fn: Callable[[Any, Batch, jax.Array], jax.Array]
    eval_outputs_fn: Callable[[jax.Array, Batch], dict[str, jax.Array]]
    compute_metrics: Callable[[dict[str, np.ndarray]], dict[str, float]]
    metric_intervals: Callable[[dict[str, np.ndarray]], dict[str, tuple[float, float]]]
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: Callable[[str], Iterator[Batch]]
    write_outputs: Callable[[str, str, dict[str, np.ndarray], Any], dict[str, np.ndarray]]
    prediction_table: Callable[[str, dict[str, np.ndarray]], tuple[list[str], list[list]]]
    description: str
    selection_metrics: tuple[str, ...]
    split_sizes: Callable[[], dict[str, int]]
    data_fingerprint: Callable[[], str]
    binary_scores: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]] | None = None
    final_metrics: Callable[[tuple, tuple], dict[str, float]] | None = None
    scores_are_log_odds: bool = True
    subgroups: Callable[[str], dict[str, np.ndarray]] | None = None
    explain: Callable[..., list[str]] | None = None
    rng_streams: tuple[str, ...] = ("dropout",)
    ensemble_outputs: Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]] | None = None
    test_time_views: Callable[[Any], tuple] | None = None


def concrete_as_numpy(tree):
    """A tree's concrete arrays as numpy arrays, its traced ones (inside a jitted function, as
    when an ensemble is exported) as they are."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.core.Tracer) else np.asarray(x), tree)


def config_train_batches(config: ml_collections.ConfigDict, labels, load, start_step: int):
    """This process's training batches of `load` from step `start_step` on, as the trainer
    config asks: batch size, seed, balanced sampling, DP-SGD's Poisson padding (see pipeline)."""
    return pipeline.train_batches(
        labels,
        load,
        global_batch_size=config.trainer.batch_size,
        seed=config.seed,
        start_step=start_step,
        balanced=config.data.balanced_sampling,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        poisson_max_size=privacy.poisson_max_size(config, len(labels)),
    )


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """A hash of named arrays: their names, dtypes, shapes and contents."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    return digest.hexdigest()[:16]
