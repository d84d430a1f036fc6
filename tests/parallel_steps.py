"""Training steps of one initialisation under each layout; run by test_parallel.py in a
subprocess with 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8).

  python tests/parallel_steps.py OUT.npz

writes, for each run named below, its parameters and batch statistics after the steps
(`<run>/<path>`) and its training losses (`<run>/losses`).
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from configs import ct_cnn, ehr_rnn  # noqa: E402
from medjax import optim, parallel  # noqa: E402
from medjax.tasks import build_task  # noqa: E402
from medjax.train import steps  # noqa: E402
from medjax.train.state import create_train_state  # noqa: E402
from tests.conftest import shrink  # noqa: E402


def config(module=ct_cnn, **changes):
    config = shrink(module.get_config(), steps=100)
    config.data.augment.enabled = False
    config.model.dropout_rate = 0.0
    config.trainer.batch_size = 32
    for key, value in changes.items():
        config.update_from_flattened_dict({key: value})
    return config


def run(config, num_steps, *, devices=None):
    """Trains `num_steps` steps from the config's initialisation: jit over a mesh of `devices`
    (default all), or pmap over all when config.parallel is pmap."""
    task = build_task(config)
    tx, _ = optim.create_optimizer(config.optimizer, config.trainer.num_train_steps)
    mesh = parallel.data_mesh(devices)
    create = functools.partial(create_train_state, task, tx)
    keys = jax.random.split(jax.random.key(config.seed))
    # Created on one device and then replicated: the layouts of a model share one compilation.
    state = jax.device_put(jax.jit(create)(*keys), parallel.replicated(mesh))
    batches = task.train_batches(0)
    accumulation_steps = config.trainer.accumulation_steps
    losses = []
    if config.parallel == "pmap":
        step = steps.pmap_train_step(task, accumulation_steps)
        state = parallel.to_pmap(state)
        for _ in range(num_steps):
            state, scalars = step(state, parallel.split_local(next(batches)))
            losses.append(parallel.first_replica(scalars)["loss"])
        state = parallel.from_pmap(state, mesh)
    else:
        for _ in range(num_steps):
            batch = parallel.shard_batch(next(batches), mesh)
            state, scalars = steps.train_step(
                state, batch, task=task, accumulation_steps=accumulation_steps
            )
            losses.append(scalars["loss"])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    return {**flat, "losses": np.array(losses, np.float64)}


def main(out_path):
    assert jax.device_count() == 8, jax.devices()
    sgd = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1}
    accumulate = {"trainer.accumulation_steps": 4}
    runs = {
        # ResNet with batch norm: the three layouts of the same steps.
        "single": run(config(), 3, devices=jax.devices()[:1]),
        "jit": run(config(), 3),
        "pmap": run(config(parallel="pmap"), 3),
        # GRU-D (no batch norm), plain SGD: 4 micro-batches of 8 against one batch of 32.
        "whole": run(config(ehr_rnn, **sgd), 3),
        "accumulated": run(config(ehr_rnn, **sgd, **accumulate), 3),
        "accumulated_pmap": run(config(ehr_rnn, **sgd, **accumulate, parallel="pmap"), 3),
        # Mixed precision against float32 over a longer run.
        "float32": run(config(), 60),
        "bfloat16": run(config(dtype="bfloat16"), 60),
    }
    arrays = {f"{name}/{key}": value for name, r in runs.items() for key, value in r.items()}
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
