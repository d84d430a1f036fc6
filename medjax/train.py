"""Task-agnostic training and evaluation: `train_and_evaluate(config, workdir)`.

The task (medjax.tasks) hands over the model, loss, metrics and data; this module owns the
loop: jitted steps on a data-parallel mesh, periodic evaluation, checkpoints (latest and best),
early stopping, and the final evaluation of the best checkpoint on the test split.
"""

import functools
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from flax.training import train_state

from medjax import checkpoint, metrics, optim, parallel, report, writers
from medjax.errors import ConfigError
from medjax.tasks import Task, build_task


class TrainState(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array  # key data of the dropout key; step N uses fold_in(key, N)
    ema_params: Any = None  # a moving average of params, evaluated in their place; None: off
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads, **kwargs):
        new = super().apply_gradients(grads=grads, **kwargs)
        if self.ema_params is None:
            return new
        # The decay ramps up as (1 + t) / (10 + t), so that early averages forget the init.
        decay = jnp.minimum(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        return new.replace(
            ema_params=optax.incremental_update(new.params, self.ema_params, 1.0 - decay)
        )

    @property
    def eval_params(self):
        return self.params if self.ema_params is None else self.ema_params


def create_train_state(
    task: Task, tx: optax.GradientTransformation, init_key, dropout_key, ema_decay: float = 0.0
):
    variables = task.model.init(init_key, task.model_inputs(task.example_batch), train=False)
    return TrainState.create(
        apply_fn=task.model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(dropout_key),
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if ema_decay else None,
        ema_decay=ema_decay,
    )


def abstract_train_state(
    task: Task, tx: optax.GradientTransformation, mesh, ema_decay: float = 0.0
):
    """The training state's shapes, dtypes and (replicated) shardings, computing nothing."""
    keys = jax.random.split(jax.random.key(0))
    create = functools.partial(create_train_state, task, tx, ema_decay=ema_decay)
    abstract = jax.eval_shape(create, keys[0], keys[1])
    sharding = parallel.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )


def _variables(state: TrainState, params=None) -> dict:
    variables = {"params": state.params if params is None else params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


@functools.partial(jax.jit, static_argnames="task", donate_argnames="state")
def train_step(state: TrainState, batch, *, task: Task):
    """One optimiser step on a global batch; returns the new state and health scalars."""
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rngs = {"dropout": dropout_key, "latent": jax.random.fold_in(dropout_key, 1)}

    def loss_of(params):
        outputs, updates = task.model.apply(
            _variables(state, params),
            task.model_inputs(batch),
            train=True,
            rngs=rngs,
            mutable=["batch_stats"],
        )
        return task.loss_fn(outputs, batch, state.step), updates

    (loss, updates), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    scalars = {
        "loss": loss,
        "l2_grads": optax.global_norm(grads),
        "l2_params": optax.global_norm(state.params),
    }
    return state, scalars


@functools.partial(jax.jit, static_argnames="task")
def eval_step(state: TrainState, batch, *, task: Task):
    # Models that sample in evaluation (a VAE's latents) get randomness fixed by the seed and
    # the batch's first example, so an evaluation is repeatable. Training steps fold in
    # step numbers; evaluation folds in the largest uint32, a stream no step reaches.
    eval_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2**32 - 1)
    latent_key = jax.random.fold_in(eval_key, batch["index"][0])
    outputs = task.model.apply(
        _variables(state, state.eval_params),
        task.model_inputs(batch),
        train=False,
        rngs={"latent": latent_key},
    )
    return {**task.eval_outputs_fn(outputs, batch), "valid": batch["valid"]}


def evaluate(state: TrainState, task: Task, split: str, mesh) -> tuple[dict, dict]:
    """Metrics of `split` and its per-example outputs, each example counted exactly once."""
    gatherer = metrics.OutputGatherer()
    for batch in task.eval_batches(split):
        outputs = parallel.gather(eval_step(state, parallel.shard_batch(batch, mesh), task=task))
        gatherer.add(outputs, outputs.pop("valid"))
    gathered = gatherer.result()
    return task.compute_metrics(gathered), gathered


def _check_trainer(config: ml_collections.ConfigDict, task: Task) -> None:
    trainer = config.trainer
    parallel.check_batch_size("trainer.batch_size", trainer.batch_size)
    parallel.check_batch_size("trainer.eval_batch_size", trainer.eval_batch_size)
    if trainer.selection_metric not in task.selection_metrics:
        raise ConfigError(
            f"trainer.selection_metric={trainer.selection_metric!r} is not a validation "
            f"metric of this task; valid: {', '.join(task.selection_metrics)}"
        )
    if trainer.selection_mode not in ("max", "min"):
        raise ConfigError(f"trainer.selection_mode={trainer.selection_mode!r}; use max or min")
    for name in (
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
    ):
        if trainer[name] <= 0:
            raise ConfigError(f"trainer.{name}={trainer[name]} must be a positive integer")
    if not 0.0 <= trainer.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay={trainer.ema_decay} must be in [0, 1); 0 is off")


def _prepare_workdir(workdir: str) -> None:
    """Creates the workdir and checks it is writable, before anything is written to it."""
    try:
        for sub in ("", "plots", "predictions"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"cannot write to --workdir={workdir!r} ({e.strerror or e}); choose a folder you can "
            "write to"
        ) from None


def _improved(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, train: bool = True
) -> dict[str, float]:
    """Trains (or resumes) in `workdir`, then evaluates the best checkpoint on the test split.

    With `train=False`, only evaluates an existing workdir. Returns the test metrics. Bad input
    raises ConfigError before anything is written.
    """
    task = build_task(config)
    _check_trainer(config, task)
    trainer = config.trainer
    tx, schedule = optim.create_optimizer(config.optimizer, trainer.num_train_steps)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not train and not os.path.isdir(checkpoint_dir):
        raise ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")
    _prepare_workdir(workdir)
    if jax.process_index() == 0 and train:
        writers.write_atomically(
            os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
        )

    mesh = parallel.data_mesh()
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    create = functools.partial(create_train_state, task, tx, ema_decay=trainer.ema_decay)
    abstract_state = abstract_train_state(task, tx, mesh, trainer.ema_decay)
    ckpts = checkpoint.Checkpoints(checkpoint_dir, max_to_keep=trainer.max_checkpoints_to_keep)
    restored = ckpts.restore_latest(abstract_state)
    if restored:
        state, progress = restored
        logging.info("Resumed from step %d of %s", int(state.step), workdir)
    elif not train:
        raise ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")
    else:
        state = jax.jit(create, out_shardings=parallel.replicated(mesh))(init_key, dropout_key)
        progress = {"best_metric": None, "best_step": None, "evals_since_best": 0}
        progress["finished"] = False
    elapsed = writers.keep_metrics_up_to(os.path.join(workdir, "metrics.jsonl"), int(state.step))
    writer = writers.create_writer(workdir, time.time() - elapsed)

    if progress["finished"] or not train:
        logging.info("Not training (at step %d); evaluating the best checkpoint.", state.step)
    else:
        state, progress = _train(config, task, state, progress, schedule, ckpts, writer, mesh)

    best = ckpts.restore_best(abstract_state)
    ckpts.close()
    return _test_and_report(
        config, task, best[0] if best else state, int(state.step), workdir, writer, mesh
    )


def _test_and_report(config, task, best_state, last_step, workdir, writer, mesh):
    """Evaluates the best state once on the test split; writes outputs, plots and report."""
    val_metrics, _ = evaluate(best_state, task, "val", mesh)
    test_metrics, gathered = evaluate(best_state, task, "test", mesh)
    best_step = int(best_state.step)
    writer.write_scalars(best_step, {f"test/{k}": v for k, v in test_metrics.items()})
    writer.flush()
    if jax.process_index() == 0:
        images = task.write_outputs(
            workdir, "test", gathered, _variables(best_state, best_state.eval_params)
        )
        if images:
            writer.write_images(best_step, images)
        report.write(
            workdir,
            config=config,
            description=task.description,
            num_params=sum(x.size for x in jax.tree.leaves(best_state.params)),
            best_step=best_step,
            last_step=last_step,
            val_metrics=val_metrics,
            test_metrics=test_metrics,
        )
    logging.info("Test metrics at step %d: %s", best_step, json.dumps(test_metrics))
    return test_metrics


def _train(config, task, state, progress, schedule, ckpts, writer, mesh):
    trainer = config.trainer
    step = int(state.step)
    batches = task.train_batches(step)
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=trainer.num_train_steps, every_steps=trainer.log_every_steps
    )
    logged, log_start, log_start_step = [], time.time(), step
    stop = False
    while step < trainer.num_train_steps and not stop:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            batch = parallel.shard_batch(next(batches), mesh)
            state, scalars = train_step(state, batch, task=task)
        step += 1
        logged.append(scalars)
        report_progress(step)
        last = step == trainer.num_train_steps
        if step % trainer.log_every_steps == 0 or last:
            summary = {k: float(np.mean([s[k] for s in logged])) for k in logged[0]}
            summary["learning_rate"] = float(schedule(step - 1))
            elapsed = time.time() - log_start
            summary["examples_per_s"] = (step - log_start_step) * trainer.batch_size / elapsed
            writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
            logged, log_start, log_start_step = [], time.time(), step
        if step % trainer.eval_every_steps == 0 or last:
            val_metrics, _ = evaluate(state, task, "val", mesh)
            writer.write_scalars(step, {f"val/{k}": v for k, v in val_metrics.items()})
            value = val_metrics[trainer.selection_metric]
            if _improved(value, progress["best_metric"], trainer.selection_mode):
                progress.update(best_metric=value, best_step=step, evals_since_best=0)
                ckpts.save_best(step, state, progress)
            else:
                progress["evals_since_best"] += 1
            patience = trainer.early_stopping_patience
            if patience and progress["evals_since_best"] >= patience:
                logging.info(
                    "Early stopping at step %d: val %s has not improved for %d evaluations "
                    "(best %.4f at step %d).",
                    step, trainer.selection_metric, patience,
                    progress["best_metric"], progress["best_step"],
                )  # fmt: skip
                stop = True
        if step % trainer.checkpoint_every_steps == 0 or last or stop:
            progress["finished"] = last or stop
            ckpts.save_latest(step, state, progress)
    writer.flush()
    return state, progress
