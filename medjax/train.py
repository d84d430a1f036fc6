"""Task-agnostic training and evaluation: `train_and_evaluate(config, workdir)`.

The task (medjax.tasks) hands over the model, loss, metrics and data; this module owns the
loop: jitted steps on a data-parallel mesh, periodic evaluation, checkpoints (latest and best),
early stopping, and the final evaluation of the best checkpoint on the test split.
"""

import contextlib
import functools
import json
import math
import os
import signal
import threading
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
from flax import traverse_util
from flax.training import train_state

from medjax import checkpoint, operating_point, optim, parallel, privacy, writers
from medjax.data.dataset import SPLITS
from medjax.errors import ConfigError, NonFiniteError, Preempted
from medjax.evaluation import evaluate, explain_examples, final_evaluation, model_variables
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


def _train_step(
    state: TrainState,
    batch,
    *,
    task: Task,
    accumulation_steps: int,
    axis_name,
    plan: privacy.Plan | None = None,
):
    """The body shared by the jit and pmap steps: one optimiser step on a batch.

    Gradients are averaged over `accumulation_steps` micro-batches (every K-th row, so that
    each device's rows split evenly) and, under pmap (`axis_name`), over devices, with the batch
    statistics. The result is the step on the whole batch, except that batch norm normalises
    each micro-batch on its own. With a privacy `plan`, the gradient is DP-SGD's instead.
    """
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    dropout_key = step_key
    if axis_name:  # each device's part of the batch gets its own dropout masks and samples
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

    def loss_and_grads(batch_stats, micro_batch, key):
        def loss_of(params):
            outputs, updates = task.model.apply(
                model_variables(params, batch_stats),
                task.model_inputs(micro_batch),
                train=True,
                rngs={"dropout": key, "latent": jax.random.fold_in(key, 1)},
                mutable=["batch_stats"],
            )
            return task.loss_fn(outputs, micro_batch, state.step), updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return loss, grads, batch_stats

    extra = {}
    if plan is not None:  # refused with batch norm, pmap and accumulation (privacy.check)
        loss, grads, extra = _private_loss_and_grads(state, batch, task, plan, step_key)
        batch_stats = state.batch_stats
    elif accumulation_steps == 1:
        loss, grads, batch_stats = loss_and_grads(state.batch_stats, batch, dropout_key)
    else:
        micro_batches = jax.tree.map(
            lambda x: x.reshape(-1, accumulation_steps, *x.shape[1:]).swapaxes(0, 1), batch
        )

        def accumulate(carry, micro):
            micro_batch, k = micro
            batch_stats, loss_sum, grad_sum = carry
            key = jax.random.fold_in(dropout_key, 2 + k)  # 0 and 1 name no micro-batch
            loss, grads, batch_stats = loss_and_grads(batch_stats, micro_batch, key)
            return (batch_stats, loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        carry = (state.batch_stats, jnp.zeros(()), zeros)
        (batch_stats, loss, grads), _ = jax.lax.scan(
            accumulate, carry, (micro_batches, jnp.arange(accumulation_steps))
        )
        loss, grads = jax.tree.map(lambda x: x / accumulation_steps, (loss, grads))
    if axis_name:
        loss, grads, batch_stats = jax.lax.pmean((loss, grads, batch_stats), axis_name)
    l2_grads = optax.global_norm(grads)
    # A non-finite loss or gradient leaves the state as it was, but for the step count.
    finite = jnp.isfinite(loss) & jnp.isfinite(l2_grads)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    skipped = state.replace(step=state.step + 1)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, skipped)
    scalars = {
        "loss": loss,
        "l2_grads": l2_grads,
        "l2_params": optax.global_norm(state.params),
        "nonfinite": 1 - finite.astype(jnp.int32),
        **extra,
    }
    return state, scalars


def _private_loss_and_grads(state: TrainState, batch, task: Task, plan, step_key):
    """DP-SGD: the mean loss of the batch's valid examples, the noisy mean of their clipped
    gradients (divided by the expected batch size), and the fraction clipped."""

    def example_loss(params, example, key):
        one = jax.tree.map(lambda x: x[None], example)  # each example is a batch of one
        outputs = task.model.apply(
            model_variables(params, state.batch_stats),
            task.model_inputs(one),
            train=True,
            rngs={"dropout": key, "latent": jax.random.fold_in(key, 1)},
        )
        return task.loss_fn(outputs, one, state.step)

    valid = batch["valid"]
    positions = jnp.arange(valid.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, 2), positions)
    loss_sum, grad_sum, clipped = privacy.clipped_sums(
        example_loss,
        state.params,
        batch,
        valid,
        keys,
        l2_norm_clip=plan.l2_norm_clip,
        microbatch_size=plan.microbatch_size,
    )
    if plan.noise_multiplier:  # (0 noise with an infinite clip would give 0 * inf)
        std = plan.noise_multiplier * plan.l2_norm_clip
        grad_sum = privacy.add_noise(grad_sum, jax.random.fold_in(step_key, 3), std)
    grads = jax.tree.map(lambda g: g / plan.expected_batch_size, grad_sum)
    count = jnp.maximum(valid.sum(), 1)
    return loss_sum / count, grads, {"clipped_fraction": clipped / count}


@functools.partial(
    jax.jit, static_argnames=("task", "accumulation_steps", "plan"), donate_argnames="state"
)
def train_step(
    state: TrainState,
    batch,
    *,
    task: Task,
    accumulation_steps: int = 1,
    plan: privacy.Plan | None = None,
):
    """One optimiser step on a global batch sharded over the mesh: XLA inserts the reductions.
    With a privacy `plan`, a DP-SGD step on a Poisson batch. Returns the new state and health
    scalars."""
    return _train_step(
        state, batch, task=task, accumulation_steps=accumulation_steps, axis_name=None, plan=plan
    )


@functools.cache
def pmap_train_step(task: Task, accumulation_steps: int = 1):
    """`train_step` as a classic `jax.pmap` over this process's devices, on state laid out by
    `parallel.to_pmap` and batches by `parallel.split_local`; gradients, loss and batch
    statistics are averaged over all devices (`lax.pmean`). Evaluation uses `eval_step`."""
    step = functools.partial(
        _train_step, task=task, accumulation_steps=accumulation_steps, axis_name=parallel.AXIS
    )
    return jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0)


PARALLEL = ("jit", "pmap")


def _check_trainer(config: ml_collections.ConfigDict, task: Task) -> None:
    trainer = config.trainer
    if trainer.accumulation_steps <= 0:
        raise ConfigError(
            f"trainer.accumulation_steps={trainer.accumulation_steps} must be a positive integer"
        )
    parallel.check_batch_size(
        "trainer.batch_size", trainer.batch_size, multiple_of=trainer.accumulation_steps
    )
    parallel.check_batch_size("trainer.eval_batch_size", trainer.eval_batch_size)
    if trainer.selection_metric not in task.selection_metrics:
        raise ConfigError(
            f"trainer.selection_metric={trainer.selection_metric!r} is not a validation "
            f"metric of this task; valid: {', '.join(task.selection_metrics)}"
        )
    if config.parallel not in PARALLEL:
        raise ConfigError(f"parallel={config.parallel!r}; valid: {', '.join(PARALLEL)}")
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
    if trainer.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"trainer.on_nonfinite={trainer.on_nonfinite!r}; use stop or skip")
    if not 0.0 <= trainer.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay={trainer.ema_decay} must be in [0, 1); 0 is off")


def _check_data(task: Task, batch_size: int) -> None:
    """Reads the data (a bad file fails here, before the workdir is touched) and refuses an
    empty split or a training split smaller than one batch."""
    sizes = task.split_sizes()
    for split, size in sizes.items():
        if size == 0:
            raise ConfigError(
                f"the {split} split is empty; add data, or change the split sizes (data.num_"
                f"{split} for synthetic data, data.val_fraction and data.test_fraction for real "
                "data)"
            )
    if sizes["train"] < batch_size:
        raise ConfigError(
            f"the training split has {sizes['train']} examples, fewer than "
            f"trainer.batch_size={batch_size}; lower trainer.batch_size or add data"
        )


def _prepare_workdir(workdir: str) -> None:
    """Creates the workdir and checks it is writable, before anything is written to it."""
    try:
        for sub in ("", "plots", "predictions"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        probe = os.path.join(workdir, f".write_test{jax.process_index()}")
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
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    train: bool = True,
    allow_config_change: bool = False,
    split: str = "test",
) -> dict[str, float]:
    """Trains (or resumes) in `workdir`, then evaluates the best checkpoint on the test split.

    With `train=False`, only evaluates an existing workdir, on `split`; the test split alone is
    logged to metrics.jsonl. Returns the evaluated split's metrics. Bad input
    raises ConfigError before anything is written, as does a config or data that differ from
    the checkpoint's in a way that changes results, unless `allow_config_change`.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; valid: {', '.join(SPLITS)}")
    task = build_task(config)
    _check_trainer(config, task)
    operating_point.check(config.evaluation.operating_point, config.evaluation.target_sensitivity)
    trainer = config.trainer
    tx, schedule = optim.create_optimizer(config.optimizer, trainer.num_train_steps)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not train and not os.path.isdir(checkpoint_dir):
        raise ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")
    _check_data(task, trainer.batch_size)
    if config.privacy.enabled:
        init = functools.partial(task.model.init, train=False)
        inputs = task.model_inputs(task.example_batch)
        privacy.check(config, jax.eval_shape(init, jax.random.key(0), inputs))
    plan = privacy.plan(config, task.split_sizes()["train"]) if train else None
    fingerprint = {"config": _results_config(config), "data": task.data_fingerprint()}
    _prepare_workdir(workdir)

    mesh = parallel.data_mesh()
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    create = functools.partial(create_train_state, task, tx, ema_decay=trainer.ema_decay)
    abstract_state = abstract_train_state(task, tx, mesh, trainer.ema_decay)
    ckpts = checkpoint.Checkpoints(checkpoint_dir, max_to_keep=trainer.max_checkpoints_to_keep)
    restored = ckpts.restore_latest(abstract_state)
    if restored:
        state, progress = restored
        if "fingerprint" in progress:  # checkpoints written before fingerprints have none
            _check_unchanged(progress["fingerprint"], fingerprint, workdir, allow_config_change)
        progress.setdefault("skipped_steps", 0)
        logging.info("Resumed from step %d of %s", int(state.step), workdir)
    elif not train:
        raise ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")
    else:
        state = jax.jit(create, out_shardings=parallel.replicated(mesh))(init_key, dropout_key)
        progress = {"best_metric": None, "best_step": None, "evals_since_best": 0}
        progress |= {"finished": False, "skipped_steps": 0}
    progress["fingerprint"] = fingerprint
    if plan is not None:
        _check_privacy_unchanged(progress, plan, workdir)
    elapsed = 0.0
    if jax.process_index() == 0:
        if train:
            writers.write_atomically(
                os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
            )
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        if train or split == "test":  # another split's evaluation leaves the test line there
            elapsed = writers.keep_metrics_up_to(metrics_path, int(state.step))
    writer = writers.create_writer(workdir, time.time() - elapsed)

    if progress["finished"] or not train:
        logging.info("Not training (at step %d); evaluating the best checkpoint.", state.step)
    else:
        state, progress = _train(
            config, task, state, progress, schedule, ckpts, writer, mesh, plan, workdir
        )

    best = ckpts.restore_best(abstract_state)
    ckpts.close()
    best_state = best[0] if best else state
    return final_evaluation(config, task, best_state, int(state.step), workdir, writer, mesh, split)


def explain(config: ml_collections.ConfigDict, workdir: str, *, split: str = "test") -> list[str]:
    """Writes explanations of the best checkpoint's predictions on the first
    `config.explain.num_examples` examples of `split` to `workdir/plots`; returns the paths."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; valid: {', '.join(SPLITS)}")
    task = build_task(config)
    if task.explain is None:
        raise ConfigError(f"the {config.task} task has no explanations; they are for the CNNs "
                          "(task classification) and the RNNs (task ehr)")  # fmt: skip
    state, progress = _restore_best(config, task, workdir)
    if "fingerprint" in progress:
        current = {"config": _results_config(config), "data": task.data_fingerprint()}
        _check_unchanged(progress["fingerprint"], current, workdir, allow=False)
    return explain_examples(config, task, state, workdir, split)


def _restore_best(config: ml_collections.ConfigDict, task: Task, workdir: str):
    """(state, progress) of the best checkpoint of `workdir`; ConfigError when there is none."""
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    missing = ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")
    if not os.path.isdir(checkpoint_dir):
        raise missing
    tx, _ = optim.create_optimizer(config.optimizer, config.trainer.num_train_steps)
    abstract_state = abstract_train_state(task, tx, parallel.data_mesh(), config.trainer.ema_decay)
    ckpts = checkpoint.Checkpoints(
        checkpoint_dir, max_to_keep=config.trainer.max_checkpoints_to_keep
    )
    best = ckpts.restore_best(abstract_state)
    ckpts.close()
    if best is None:
        raise missing
    return best


# What --mode=predict needs to match the training run's: the model, and the rules that turn
# data into its inputs. The data itself (name, folder, splits) may differ.
PREDICT_MATCHED_KEYS = ("task", "dtype", "data.image_shape", "data.window_center",
                        "data.window_width", "data.spacing", "data.ct_geometry", "data.hours",
                        "data.step_hours", "data.imputation")  # fmt: skip


def predict(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Scores every example of the data `config.data` names (all its splits) with the best
    checkpoint of `workdir` into predictions/<name>.csv, `name` the data's name and folder;
    returns its path. `config` must match the training run's model and input rules (config.json);
    statistics fitted on data come from the training run's data (`build_task`'s `fit_data`)."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"no {config_path}: --workdir must hold a trained run (--mode=train)")
    with open(config_path) as f:
        trained = ml_collections.ConfigDict(json.load(f))
    changes = _config_changes(
        _flat(trained),
        _flat(config),
        keep=lambda k: k in PREDICT_MATCHED_KEYS or k.startswith("model."),
    )
    if changes:
        raise ConfigError(
            f"the model in {workdir} was trained with other model or input settings: "
            f"{'; '.join(changes)}. Predict with the training run's config, changing only the "
            "data (--config.data.dir, --config.data.name)"
        )
    task = build_task(config, fit_data=trained.data)
    state, _ = _restore_best(config, task, workdir)
    mesh = parallel.data_mesh()
    header, rows = None, []
    for split, size in task.split_sizes().items():
        if size:
            _, gathered = evaluate(state, task, split, mesh)
            header, split_rows = task.prediction_table(split, gathered)
            rows += [[split, *row] for row in split_rows]
    if not rows:
        raise ConfigError(f"no examples to predict in {config.data.name} {config.data.dir}")
    folder = os.path.basename(os.path.normpath(config.data.dir)) if config.data.dir else ""
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in "_".join(
        filter(None, (config.data.name, folder))))  # fmt: skip
    path = os.path.join(workdir, "predictions", f"{name}.csv")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writers.write_table(path, ["split", *header], rows)
        logging.info("Wrote %d predictions of %s to %s", len(rows), task.description, path)
    return path


# Keys that change no result: a run resumed with other values ends the same. The evaluation and
# explain sections change only what is computed from a checkpoint, so they are neutral too.
RESULT_NEUTRAL_SECTIONS = ("evaluation.", "explain.")
RESULT_NEUTRAL_KEYS = (
    "trainer.log_every_steps",
    "trainer.checkpoint_every_steps",
    "trainer.max_checkpoints_to_keep",
    "data.dir",
    "data.cache_dir",
    "data.download",
)


def _flat(config: ml_collections.ConfigDict) -> dict:
    """The config's keys flattened ("data.seed"), with values as JSON stores them."""
    return json.loads(json.dumps(traverse_util.flatten_dict(config.to_dict(), sep=".")))


def _results_config(config: ml_collections.ConfigDict) -> dict:
    """The config's keys that decide results, flattened, as JSON stores them."""
    return {
        k: v
        for k, v in _flat(config).items()
        if k not in RESULT_NEUTRAL_KEYS and not k.startswith(RESULT_NEUTRAL_SECTIONS)
    }


def _config_changes(old: dict, new: dict, keep=lambda key: True) -> list[str]:
    """`key: old -> new` for each flattened key (that `keep` accepts) whose values differ."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if keep(k) and old.get(k) != new.get(k)]  # fmt: skip


def _check_unchanged(saved: dict, current: dict, workdir: str, allow: bool) -> None:
    """Refuses (unless `allow`) a config or data that differ from the checkpoint's."""
    old, new = saved["config"], current["config"]
    changes = _config_changes(old, new)
    if saved["data"] != current["data"]:
        changes.append(f"the data (fingerprint {saved['data']} -> {current['data']})")
    if not changes:
        return
    if not allow:
        raise ConfigError(
            f"the checkpoint in {workdir} was trained with another config; resuming would change "
            f"the results: {'; '.join(changes)}. Use a new --workdir, or pass "
            "--allow_config_change to go on anyway"
        )
    logging.warning("Going on with a changed config (--allow_config_change): %s", changes)


def _check_privacy_unchanged(progress: dict, plan: privacy.Plan, workdir: str) -> None:
    """Records the privacy settings in `progress`; refuses to resume a private run with other
    ones, even with --allow_config_change: the accountant composes identical steps only."""
    settings = {
        "noise_multiplier": plan.noise_multiplier,
        "sampling_rate": plan.sampling_rate,
        "l2_norm_clip": plan.l2_norm_clip,
    }
    saved = progress.setdefault("privacy", settings)
    if saved != settings:
        raise ConfigError(
            f"the checkpoint in {workdir} was trained privately with {saved}; resuming with "
            f"{settings} would make its privacy accounting wrong. Use a new --workdir"
        )


def _write_privacy(workdir: str, plan: privacy.Plan, steps: int) -> float:
    """Writes privacy.json (process 0) for `steps` steps; returns the epsilon spent."""
    spent = privacy.summary(plan, steps)
    if jax.process_index() == 0:
        writers.write_atomically(
            os.path.join(workdir, "privacy.json"), json.dumps(spent, indent=2) + "\n"
        )
    return spent["epsilon"]


def _train(config, task, state, progress, schedule, ckpts, writer, mesh, plan, workdir):
    trainer = config.trainer
    step = int(state.step)
    if plan is not None:
        planned = plan.epsilon(trainer.num_train_steps)
        logging.info("Private training: epsilon %.4g after the planned %d steps (%s)",
                     planned, trainer.num_train_steps, plan)  # fmt: skip
        if plan.target_epsilon and planned > plan.target_epsilon:  # solved so it cannot be
            raise ConfigError(
                f"the planned {trainer.num_train_steps} steps would spend epsilon {planned:.4g}"
                f" > privacy.target_epsilon={plan.target_epsilon}; lower trainer.num_train_steps"
            )
    batches = task.train_batches(step)
    to_loop, train_on, from_loop = _stepper(config, task, mesh, plan)
    state = to_loop(state)
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=trainer.num_train_steps, every_steps=trainer.log_every_steps
    )
    logged, unchecked, log_start, log_start_step = [], [], time.time(), step
    stop = False
    with _sigterm_flag() as sigterm:
        while step < trainer.num_train_steps and not stop:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, scalars = train_on(state, next(batches))
            step += 1
            logged.append(scalars)
            unchecked.append((step, scalars["nonfinite"]))  # fetched when acted on, not now
            report_progress(step)
            last = step == trainer.num_train_steps
            log_now = step % trainer.log_every_steps == 0 or last
            eval_now = step % trainer.eval_every_steps == 0 or last
            save_now = step % trainer.checkpoint_every_steps == 0 or last
            # Several processes agree on stopping at log steps, not at every step's cost.
            preempted = sigterm.is_set() if jax.process_count() == 1 else (
                log_now and parallel.any_process(sigterm.is_set())
            )  # fmt: skip
            if log_now or eval_now or save_now or preempted:
                _check_finite(unchecked, trainer.on_nonfinite, progress, ckpts)
                unchecked = []
            if log_now:
                finite = [s for s in logged if not s["nonfinite"]]
                summary = {
                    k: float(np.mean([s[k] for s in finite])) if finite else math.nan
                    for k in ("loss", "l2_grads", "l2_params", "clipped_fraction")
                    if k in logged[0]
                }
                summary["skipped_steps"] = progress["skipped_steps"]
                summary["learning_rate"] = float(schedule(step - 1))
                elapsed = time.time() - log_start
                summary["examples_per_s"] = (step - log_start_step) * trainer.batch_size / elapsed
                if plan is not None:
                    summary["epsilon"] = _write_privacy(workdir, plan, step)
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
                logged, log_start, log_start_step = [], time.time(), step
            if eval_now or save_now or preempted:
                current = from_loop(state)  # the replicated layout, made once for both uses
            if eval_now:
                stop = _evaluate_and_select(config, task, current, step, progress, ckpts, writer,
                                            mesh)  # fmt: skip
            if save_now or stop or preempted:
                progress["finished"] = last or stop
                ckpts.save_latest(step, current, progress)
            if preempted and not progress["finished"]:
                raise Preempted(
                    f"stopped by SIGTERM at step {step}, with a checkpoint of that step in "
                    f"{ckpts.directory}; run the same command to continue"
                )
    writer.flush()
    return from_loop(state), progress


def _evaluate_and_select(config, task, state, step, progress, ckpts, writer, mesh) -> bool:
    """Validates `state`, keeps it if it is the best so far; True when it is time to stop."""
    trainer = config.trainer
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
        return True
    return False


def _check_finite(unchecked, on_nonfinite: str, progress: dict, ckpts) -> None:
    """Counts the steps whose loss or gradient was not finite (their updates were skipped),
    or, with `on_nonfinite` "stop", raises NonFiniteError naming the first of them."""
    bad = [step for step, flag in unchecked if int(flag)]
    if not bad:
        return
    if on_nonfinite == "stop":
        latest = ckpts.latest_step()
        kept = "no checkpoint was saved yet" if latest is None else (
            f"the latest checkpoint (step {latest}) is the last good one"
        )  # fmt: skip
        raise NonFiniteError(
            f"the loss or a gradient was not finite at step {bad[0]}; training stopped, and "
            f"{kept}. Lower "
            "optimizer.learning_rate, set optimizer.grad_clip_norm or check the data; or set "
            "trainer.on_nonfinite=skip to skip such steps"
        )
    progress["skipped_steps"] += len(bad)
    logging.warning("Skipped the update of steps %s: non-finite loss or gradient.", bad)


@contextlib.contextmanager
def _sigterm_flag():
    """An event that SIGTERM (preemption under SLURM or on Cloud TPU) sets while training."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach main only
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stepper(config, task, mesh, plan=None):
    """(to_loop, train_on, from_loop): the training loop's layout of the state, one step on
    this process's numpy batch, and the state back in the replicated layout of the rest."""
    accumulation_steps = config.trainer.accumulation_steps
    if config.parallel == "jit":

        def train_on(state, batch):
            batch = parallel.shard_batch(batch, mesh)
            return train_step(
                state, batch, task=task, accumulation_steps=accumulation_steps, plan=plan
            )

        return (lambda state: state), train_on, (lambda state: state)
    step = pmap_train_step(task, accumulation_steps)

    def train_on(state, batch):
        state, scalars = step(state, parallel.split_local(batch))
        return state, parallel.first_replica(scalars)

    return parallel.to_pmap, train_on, functools.partial(parallel.from_pmap, mesh=mesh)
