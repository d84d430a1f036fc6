"""tf.data pipelines from in-memory arrays to per-process numpy batches.

Training order is a pure function of (seed, epoch), or, with Poisson sampling (private
training), of (seed, step): a run resumed at step S sees exactly the batches an uninterrupted
run sees from step S, without replaying the data before it. Each process reads its own slice
of every global batch. Evaluation visits every example once, in
order, with the last batch padded and marked by `valid` (0 on padding).
"""

from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging

Batch = dict[str, np.ndarray]


def epoch_order(labels: np.ndarray, *, seed: int, epoch: int, balanced: bool) -> np.ndarray:
    """The example indices of one training epoch, shuffled by (seed, epoch).

    Balanced: every class appears as often as the largest one; a smaller class is cycled
    through in a fresh random order before any of its examples repeats.
    """
    rng = np.random.default_rng((seed, epoch))
    if not balanced:
        return rng.permutation(len(labels))
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    largest = max(len(m) for m in members)
    return rng.permutation(
        np.concatenate([np.resize(rng.permutation(m), largest) for m in members])
    )


def poisson_sample(
    num_examples: int, *, rate: float, max_size: int, seed: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices [max_size], valid [max_size]) of step `step`'s Poisson sample: each example is
    in it independently with probability `rate`, in random order, then padding (index 0,
    valid False). A sample larger than `max_size` is truncated to a random subset of that size
    and a warning is logged (max_size is chosen to make that negligible: medjax.privacy)."""
    rng = np.random.default_rng((seed, step, 1))  # apart from epoch_order's (seed, epoch)
    chosen = rng.permutation(np.flatnonzero(rng.random(num_examples) < rate))
    if len(chosen) > max_size:
        logging.warning(
            "Poisson sample of step %d has %d examples; truncated to %d", step, len(chosen),
            max_size,
        )  # fmt: skip
        chosen = chosen[:max_size]
    indices = np.zeros(max_size, np.int64)
    indices[: len(chosen)] = chosen
    return indices, np.arange(max_size) < len(chosen)


def train_batches(
    labels: np.ndarray,
    load: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]],
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    balanced: bool,
    process_index: int,
    process_count: int,
    poisson_max_size: int = 0,
) -> Iterator[Batch]:
    """Endless training batches of this process, from `start_step` on.

    `load(index, seed)` maps an example index and its stateless seed (int64 [2], unique to
    the example's step and position) to the example's features. With `poisson_max_size` > 0,
    each step is a Poisson sample (rate global_batch_size / N) padded to that many rows, and
    batches carry `valid` (False on padding); otherwise a shuffled epoch's next batch.
    """
    steps_per_epoch = len(epoch_order(labels, seed=seed, epoch=0, balanced=balanced))
    steps_per_epoch //= global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training split has fewer examples than one global batch ({global_batch_size});"
            " lower trainer.batch_size or add data"
        )
    if poisson_max_size:
        rate, global_batch_size = global_batch_size / len(labels), poisson_max_size
    local_size = global_batch_size // process_count
    first = process_index * local_size
    positions = np.arange(first, first + local_size)

    def index_batches():
        step, order, order_epoch = start_step, None, None
        while True:
            if poisson_max_size:
                batch, valid = poisson_sample(
                    len(labels), rate=rate, max_size=poisson_max_size, seed=seed, step=step
                )
            else:
                epoch, k = divmod(step, steps_per_epoch)
                if epoch != order_epoch:
                    order = epoch_order(labels, seed=seed, epoch=epoch, balanced=balanced)
                    order_epoch = epoch
                batch = order[k * global_batch_size : (k + 1) * global_batch_size]
                valid = np.ones(global_batch_size, bool)
            seeds = np.stack([np.full(local_size, seed), step * global_batch_size + positions], 1)
            yield batch[first : first + local_size], seeds, valid[first : first + local_size]
            step += 1

    def load_example(index, seed, valid):
        return {**load(index, seed), "valid": valid} if poisson_max_size else load(index, seed)

    signature = (
        tf.TensorSpec([local_size], tf.int64),
        tf.TensorSpec([local_size, 2], tf.int64),
        tf.TensorSpec([local_size], tf.bool),
    )
    dataset = (
        tf.data.Dataset.from_generator(index_batches, output_signature=signature)
        .unbatch()
        .map(load_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(local_size, drop_remainder=True)
        .prefetch(2)
    )
    return dataset.as_numpy_iterator()


def eval_batches(
    num_examples: int,
    load: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
) -> Iterator[Batch]:
    """Every example once, in order; the last global batch padded, `valid` 0 on the padding.

    Batches also carry `index`, each example's row in the split.
    """
    local_size = global_batch_size // process_count
    num_batches = -(-num_examples // global_batch_size)
    padded = np.arange(num_batches * global_batch_size).reshape(num_batches, process_count, -1)
    rows = padded[:, process_index].reshape(-1)
    valid = rows < num_examples
    rows = np.where(valid, rows, 0)

    def load_with_flags(index, valid):
        return {**load(index), "index": tf.cast(index, tf.int32), "valid": valid}

    dataset = (
        tf.data.Dataset.from_tensor_slices((rows, valid))
        .map(load_with_flags, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(local_size)
        .prefetch(2)
    )
    return dataset.as_numpy_iterator()


def config_eval_batches(config, size: int, load) -> Iterator[Batch]:
    """This process's share of `size` examples `load`ed once each, in batches of the trainer
    config's eval_batch_size (see eval_batches)."""
    return eval_batches(
        size,
        load,
        global_batch_size=config.trainer.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
