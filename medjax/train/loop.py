"""`train_and_evaluate(config, workdir)`: the training loop, with periodic evaluation, checkpoints
(latest and best), early stopping, non-finite checks and preemption, then the final evaluation
of the best checkpoint on the test split."""

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from medjax import checkpoint, optim, parallel, pretrained, privacy, workdir_lock
from medjax.errors import ConfigError, NonFiniteError, Preempted
from medjax.outputs import writers
from medjax.tasks import Task, build_task
from medjax.train import checks, run_config, steps
from medjax.train.evaluation import evaluate_split, final_evaluation
from medjax.train.state import create_train_state, model_variables, open_checkpoints


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """What stays fixed while a run trains, made once before its first step."""

    config: ml_collections.ConfigDict
    task: Task
    workdir: str
    mesh: jax.sharding.Mesh
    plan: privacy.Plan | None  # a private run's settings; None without privacy
    schedule: optax.Schedule  # the learning rate of the run's optimiser
    ckpts: checkpoint.Checkpoints
    writer: metric_writers.MetricWriter  # writers.create_writer's


@dataclasses.dataclass
class Progress:
    """The trainer's bookkeeping, stored as JSON with every checkpoint."""

    best_metric: float | None = None  # the best validation selection metric so far
    best_step: int | None = None
    evals_since_best: int = 0  # for early stopping
    finished: bool = False
    skipped_steps: int = 0  # steps whose non-finite loss or gradient was skipped
    fingerprint: dict | None = None  # run_config.fingerprint; None in older checkpoints
    privacy: dict | None = None  # a private run's settings (checks.check_privacy_unchanged)

    def to_json(self) -> dict:
        stored = dataclasses.asdict(self)
        return {k: v for k, v in stored.items() if v is not None or k.startswith("best_")}

    @classmethod
    def from_json(cls, stored: dict) -> "Progress":
        return cls(**stored)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, float]:
    """Trains (or resumes) in `workdir`, then evaluates the best checkpoint on the test split;
    returns the test metrics. Bad input raises ConfigError before anything is written, as does
    a config or data that differ from the checkpoint's in a way that changes results, unless
    `allow_config_change`. A finished run is only evaluated again. The run holds the
    workdir's lock (medjax.workdir_lock) while it writes there."""
    workdir_lock.refuse_if_held(workdir, "train in")  # at once, before the data is read
    checks.check_values(config)
    task = build_task(config)
    checks.check_run(config, task)
    plan = privacy.plan(config, task.split_sizes()["train"])
    fingerprint = run_config.fingerprint(config, task)
    checks.refuse_ensemble_workdir(workdir)
    source = pretrained.source_of(config.init)
    checks.check_init(config, task, source)
    checks.prepare_workdir(workdir)
    with workdir_lock.writer(workdir):
        return _resume_or_start(config, task, workdir, source, plan, fingerprint,
                                allow_config_change)  # fmt: skip


def _resume_or_start(config, task, workdir, source, plan, fingerprint, allow_config_change):
    """train_and_evaluate's work in a checked, locked workdir."""
    mesh = parallel.data_mesh()
    tx, schedule = optim.run_optimizer(config)  # the run's one optimiser
    ckpts, abstract_state = open_checkpoints(config, task, workdir, mesh, tx)
    restored = ckpts.restore_latest(abstract_state)
    if restored:
        state, progress = restored[0], Progress.from_json(restored[1])
        run_config.check_unchanged(progress.fingerprint, fingerprint, workdir, allow_config_change)
        logging.info("Resumed from step %d of %s", int(state.step), workdir)
    else:
        state, progress = _initial_state(config, task, tx, mesh, source, workdir), Progress()
    progress.fingerprint = fingerprint
    if plan is not None:
        progress.privacy = checks.check_privacy_unchanged(progress.privacy, plan, workdir)
    elapsed = 0.0
    if jax.process_index() == 0:
        writers.write_atomically(
            os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
        )
        elapsed = writers.keep_metrics_up_to(
            os.path.join(workdir, "metrics.jsonl"), int(state.step)
        )
    writer = writers.create_writer(workdir, time.time() - elapsed)
    if progress.finished:
        logging.info("Not training (at step %d); evaluating the best checkpoint.", state.step)
    else:
        run = Run(config=config, task=task, workdir=workdir, mesh=mesh, plan=plan,
                  schedule=schedule, ckpts=ckpts, writer=writer)  # fmt: skip
        state = _train(run, state, progress)
    best = ckpts.restore_best(abstract_state)
    ckpts.close()
    best_state = best[0] if best else state
    return final_evaluation(config, task, best_state, int(state.step), workdir, writer, mesh)


def _initial_state(config, task: Task, tx, mesh, source, workdir: str):
    """A fresh state of optimiser `tx`, initialised from `config.seed` and replicated over the
    mesh, with the tensors of `source` (pretrained.source_of) that match loaded; what was
    loaded is logged and written to `workdir/init.json`."""
    init_key, step_key = jax.random.split(jax.random.key(config.seed))
    create = functools.partial(create_train_state, task, tx, ema_decay=config.trainer.ema_decay)
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))(init_key, step_key)
    if source is None:
        return state
    fresh = jax.device_get(model_variables(state.params, state.batch_stats))
    variables, summary = pretrained.load(fresh, *source)
    summary["description"] = pretrained.describe(summary)
    logging.info("%s", summary["description"])
    if jax.process_index() == 0:
        writers.write_atomically(
            os.path.join(workdir, "init.json"), json.dumps(summary, indent=2) + "\n"
        )
    params = variables["params"]
    state = state.replace(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        ema_params=params if state.ema_params is not None else None,
    )
    return jax.device_put(state, parallel.replicated(mesh))


def _train(run: Run, state, progress: Progress):
    """Trains from `state` to the end (or early stopping, or SIGTERM or SIGINT: a checkpoint
    of the step, then Preempted), updating `progress`; returns the last state."""
    trainer, ckpts = run.config.trainer, run.ckpts
    step = int(state.step)
    _check_privacy_budget(run.plan, trainer.num_train_steps)
    batches = run.task.train_batches(step)
    to_loop, train_on, from_loop = steps.stepper(run.config, run.task, run.mesh, run.plan)
    state = to_loop(state)
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=trainer.num_train_steps, every_steps=trainer.log_every_steps
    )
    log = _TrainLog(run, step)
    unchecked, stop = [], False
    with _stop_signals() as received:
        while step < trainer.num_train_steps and not stop:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, scalars = train_on(state, next(batches))
            step += 1
            log.scalars.append(scalars)
            unchecked.append((step, scalars["nonfinite"]))  # fetched when acted on, not now
            report_progress(step)
            last = step == trainer.num_train_steps
            log_now = step % trainer.log_every_steps == 0 or last
            eval_now = step % trainer.eval_every_steps == 0 or last
            save_now = step % trainer.checkpoint_every_steps == 0 or last
            # Several processes agree on stopping at log steps, not at every step's cost.
            preempted = bool(received) if jax.process_count() == 1 else (
                log_now and parallel.any_process(bool(received))
            )  # fmt: skip
            if log_now or eval_now or save_now or preempted:
                _check_finite(unchecked, trainer.on_nonfinite, progress, ckpts)
                unchecked = []
            if log_now:
                log.write(step, progress.skipped_steps)
            if eval_now or save_now or preempted:
                current = from_loop(state)  # the replicated layout, made once for both uses
            if eval_now:
                stop = _evaluate_and_select(run, current, step, progress)
            if save_now or stop or preempted:
                progress.finished = last or stop
                ckpts.save_latest(step, current, progress.to_json())
            if preempted and not progress.finished:
                signum = received[0] if received else signal.SIGTERM  # another process's
                raise Preempted(
                    f"stopped by {signal.Signals(signum).name} at step {step}, with a checkpoint "
                    f"of that step in {ckpts.directory}; run the same command to continue",
                    signum,
                )
    run.writer.flush()
    return from_loop(state)


def _check_privacy_budget(plan: privacy.Plan | None, num_train_steps: int) -> None:
    """Logs the epsilon a private run will spend; refuses one over its target."""
    if plan is None:
        return
    planned = plan.epsilon(num_train_steps)
    logging.info("Private training: epsilon %.4g after the planned %d steps (%s)",
                 planned, num_train_steps, plan)  # fmt: skip
    if plan.target_epsilon and planned > plan.target_epsilon:  # solved so it cannot be
        raise ConfigError(
            f"the planned {num_train_steps} steps would spend epsilon {planned:.4g}"
            f" > privacy.target_epsilon={plan.target_epsilon}; lower trainer.num_train_steps"
        )


class _TrainLog:
    """The `train` lines: health scalars averaged over the steps since the last line."""

    def __init__(self, run: Run, step: int):
        self.scalars = []  # each step's health scalars since the last line
        self._run = run
        self._start, self._start_step = time.time(), step

    def write(self, step: int, skipped_steps: int) -> None:
        finite = [s for s in self.scalars if not s["nonfinite"]]
        summary = {
            k: float(np.mean([s[k] for s in finite])) if finite else math.nan
            for k in ("loss", "l2_grads", "l2_params", "clipped_fraction")
            if k in self.scalars[0]
        }
        summary["skipped_steps"] = skipped_steps
        run = self._run
        summary["learning_rate"] = float(run.schedule(step - 1))
        elapsed = time.time() - self._start
        batch_size = run.config.trainer.batch_size
        summary["examples_per_s"] = (step - self._start_step) * batch_size / elapsed
        if run.plan is not None:
            summary["epsilon"] = _write_privacy(run.workdir, run.plan, step)
        run.writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
        self.scalars, self._start, self._start_step = [], time.time(), step


def _write_privacy(workdir: str, plan: privacy.Plan, steps: int) -> float:
    """Writes privacy.json (process 0) for `steps` steps; returns the epsilon spent."""
    spent = privacy.summary(plan, steps)
    if jax.process_index() == 0:
        writers.write_atomically(
            os.path.join(workdir, "privacy.json"), json.dumps(spent, indent=2) + "\n"
        )
    return spent["epsilon"]


def _improved(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _evaluate_and_select(run: Run, state, step: int, progress: Progress) -> bool:
    """Validates `state`, keeps it if it is the best so far; True when it is time to stop."""
    trainer = run.config.trainer
    val_metrics, _ = evaluate_split(state, run.task, "val", run.mesh)
    run.writer.write_scalars(step, {f"val/{k}": v for k, v in val_metrics.items()})
    value = val_metrics[trainer.selection_metric]
    if _improved(value, progress.best_metric, trainer.selection_mode):
        progress.best_metric, progress.best_step, progress.evals_since_best = value, step, 0
        run.ckpts.save_best(step, state, progress.to_json())
    else:
        progress.evals_since_best += 1
    patience = trainer.early_stopping_patience
    if patience and progress.evals_since_best >= patience:
        logging.info(
            "Early stopping at step %d: val %s has not improved for %d evaluations "
            "(best %.4f at step %d).",
            step, trainer.selection_metric, patience, progress.best_metric, progress.best_step,
        )  # fmt: skip
        return True
    return False


def _check_finite(unchecked, on_nonfinite: str, progress: Progress, ckpts) -> None:
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
    progress.skipped_steps += len(bad)
    logging.warning("Skipped the update of steps %s: non-finite loss or gradient.", bad)


@contextlib.contextmanager
def _stop_signals():
    """The list of stop signals received while training: SIGTERM (preemption under SLURM or
    on Cloud TPU) and SIGINT (Ctrl-C; a second one interrupts at once)."""
    received = []
    if threading.current_thread() is not threading.main_thread():  # signals reach main only
        yield received
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
