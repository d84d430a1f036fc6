"""`--mode=ensemble`: the final evaluation of the mean logits of several finished runs of one
config (seeds, say), in a workdir of its own; and `train_ensemble`, which trains those runs
first (`trainer.ensemble_size` > 1)."""

import json
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from medjax import parallel, workdir_lock
from medjax.errors import ConfigError
from medjax.outputs import report, writers
from medjax.tasks import Task, build_task
from medjax.train import checks, run_config
from medjax.train.evaluation import evaluate_split, report_evaluation
from medjax.train.loop import train_and_evaluate
from medjax.train.modes import restore_latest_and_best, trained_config

# What a member's config may differ in from the ensemble's: how its weights were fitted. All
# else (task, data, model, dtype, privacy, ...) must agree, and the data itself (its fingerprint).
FREE_KEYS = ("seed",)
FREE_SECTIONS = ("trainer.", "optimizer.", "loss.")


def ensemble(
    config: ml_collections.ConfigDict, workdir: str, members: Sequence[str], *, split: str = "test"
) -> dict[str, float]:
    """Evaluates each member's best checkpoint on val and `split`, averages their logits per
    example (Task.ensemble_outputs) and evaluates that as a run's final evaluation does (the
    operating point and calibration fitted on the ensemble's val outputs), writing its report,
    predictions, plots and metrics.jsonl to `workdir`, with `ensemble.json` (the members).
    Returns the split's metrics. Bad input raises ConfigError before anything is written."""
    checks.check_split(split)
    workdir_lock.refuse_if_held(workdir, "write an ensemble in")
    _check_members(workdir, members)
    task = build_task(config)
    if task.ensemble_outputs is None:
        raise ConfigError(
            f"the {config.task} task's outputs have no logits to average; ensembles are for "
            "the classifiers (task classification or ehr)"
        )
    checks.check_run(config, task)
    data = task.data_fingerprint()
    mesh = parallel.data_mesh()
    outputs, checkpoints = {"val": [], split: []}, []  # each split's outputs of each member
    for member in members:
        workdir_lock.refuse_if_held(member, "ensemble")
        state, checkpoint = _restore_member(config, task, member, data)
        for name, gathered in outputs.items():
            member_metrics, member_outputs = evaluate_split(state, task, name, mesh)
            gathered.append(member_outputs)
        logging.info("Member %s, %s metrics: %s", member, split, json.dumps(member_metrics))
        checkpoints.append(checkpoint)
    evaluated = {}
    for name, gathered in outputs.items():
        mean = task.ensemble_outputs(gathered)
        evaluated[name] = task.compute_metrics(mean), mean
    checks.prepare_workdir(workdir)
    with workdir_lock.writer(workdir):
        elapsed = 0.0
        if jax.process_index() == 0:
            writers.write_atomically(
                os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
            )
            text = json.dumps({"members": list(members)}, indent=2) + "\n"
            writers.write_atomically(os.path.join(workdir, checks.ENSEMBLE_FILE), text)
            if split == "test":  # the ensemble trains no step: its test line is at step 0
                elapsed = writers.keep_metrics_up_to(os.path.join(workdir, "metrics.jsonl"), 0)
        writer = writers.create_writer(workdir, time.time() - elapsed)
        return report_evaluation(
            config, task, evaluated, split, workdir, writer, checkpoints, variables=None, step=0
        )


def train_ensemble(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, float]:
    """Trains (or resumes, or re-reads) `config.trainer.ensemble_size` runs of `config`, seeds
    seed, seed + 1, ..., in `workdir/members/seed_<s>`, then evaluates the mean of their logits
    on the test split in `workdir` (`ensemble`). Returns the ensemble's test metrics."""
    _refuse_training_workdir(workdir)
    size = config.trainer.ensemble_size
    members = []
    for k in range(size):
        member = config.copy_and_resolve_references()
        with member.unlocked():
            member.seed, member.trainer.ensemble_size = config.seed + k, 1
        members.append(member_workdir(workdir, member.seed))
        logging.info("Ensemble member %d of %d: %s", k + 1, size, members[-1])
        train_and_evaluate(member, members[-1], allow_config_change=allow_config_change)
    return ensemble(config, workdir, members)


def train_run(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, float]:
    """What --mode=train runs: `train_ensemble` when trainer.ensemble_size > 1, else
    `train_and_evaluate`. Returns the test metrics."""
    run = train_ensemble if config.trainer.ensemble_size > 1 else train_and_evaluate
    return run(config, workdir, allow_config_change=allow_config_change)


def member_workdir(workdir: str, seed: int) -> str:
    """Where `train_ensemble` trains the member of seed `seed` of the ensemble in `workdir`."""
    return os.path.join(workdir, "members", f"seed_{seed}")


def _check_members(workdir: str, members: Sequence[str]) -> None:
    """Refuses fewer than two members, one listed twice, or a --workdir that holds a run."""
    found = [os.path.realpath(member) for member in members]
    if len(found) < 2 or len(set(found)) < len(found):
        raise ConfigError(
            f"--members={','.join(members)}: an ensemble needs at least 2 different finished "
            "workdirs, comma-separated"
        )
    if os.path.realpath(workdir) in found:
        raise ConfigError(f"--workdir={workdir} is one of the --members; give it another")
    _refuse_training_workdir(workdir)


def _refuse_training_workdir(workdir: str) -> None:
    if os.path.exists(os.path.join(workdir, "checkpoints")):
        raise ConfigError(f"--workdir={workdir} holds a training run (checkpoints/); give another")


def _restore_member(config, task: Task, member: str, data: str):
    """(the best state, its report.Checkpoint) of the finished run in `member`; ConfigError
    where the run is unfinished or its config or data differ from the ensemble's."""
    member_config = trained_config(member, "each of --members")
    changes = run_config.config_changes(
        run_config.results_config(member_config),
        run_config.results_config(config),
        keep=lambda key: key not in FREE_KEYS and not key.startswith(FREE_SECTIONS),
    )
    if changes:
        raise ConfigError(
            f"--members: {member} was trained with another data or model config: "
            f"{'; '.join(changes)}. Members may differ only in {', '.join(FREE_KEYS)} and the "
            f"{', '.join(s[:-1] for s in FREE_SECTIONS)} settings"
        )
    (last_state, progress), best = restore_latest_and_best(member_config, task, member)
    last_step = int(last_state.step)
    if best is None or not progress.get("finished"):
        raise ConfigError(
            f"--members: {member} is not a finished run (at step {last_step} of "
            f"{member_config.trainer.num_train_steps}); finish it first (--mode=train)"
        )
    saved = (best[1].get("fingerprint") or {}).get("data")
    if saved != data:
        raise ConfigError(
            f"--members: {member} scored other examples: its data (fingerprint {saved}) differ "
            f"from the ensemble's ({data}); ensemble runs of the same data"
        )
    state = best[0]
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    return state, report.Checkpoint(member, member_config, int(state.step), last_step, num_params)
