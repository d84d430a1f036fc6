"""The training state: parameters, batch statistics, optimiser state, step and PRNG key; the
training step (medjax.train.steps) updates it."""

import functools
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from medjax import checkpoint, optim, parallel
from medjax.tasks import Task


class TrainState(train_state.TrainState):
    batch_stats: Any
    key_data: jax.Array  # the run's PRNG key as storable key data; step N draws fold_in(key, N)
    ema_params: Any = None  # a moving average of params, evaluated in their place; None: off
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.key_data)

    @property
    def eval_params(self):
        return self.params if self.ema_params is None else self.ema_params


def model_variables(params, batch_stats) -> dict:
    """Model variables: the params, and batch statistics where the model keeps them."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def create_train_state(
    task: Task, tx: optax.GradientTransformation, init_key, step_key, ema_decay: float = 0.0
) -> TrainState:
    """A fresh state: the model initialised from `init_key`; `step_key` for the steps' draws."""
    variables = task.model.init(init_key, task.model_inputs(task.example_batch), train=False)
    return TrainState.create(
        apply_fn=task.model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        key_data=jax.random.key_data(step_key),
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if ema_decay else None,
        ema_decay=ema_decay,
    )


def abstract_train_state(
    task: Task, tx: optax.GradientTransformation, mesh, ema_decay: float = 0.0
) -> TrainState:
    """The training state's shapes, dtypes and (replicated) shardings, computing nothing."""
    keys = jax.random.split(jax.random.key(0))
    create = functools.partial(create_train_state, task, tx, ema_decay=ema_decay)
    abstract = jax.eval_shape(create, keys[0], keys[1])
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )


def open_checkpoints(config, task: Task, workdir: str, mesh, tx=None):
    """(the workdir's checkpoints, the abstract state they restore into); `tx`: the run's
    optimiser, by default built from `config` here."""
    tx = optim.run_optimizer(config)[0] if tx is None else tx
    abstract_state = abstract_train_state(task, tx, mesh, config.trainer.ema_decay)
    ckpts = checkpoint.Checkpoints(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.trainer.max_checkpoints_to_keep
    )
    return ckpts, abstract_state
