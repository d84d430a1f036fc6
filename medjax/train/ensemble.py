"""`--mode=ensemble`: the final evaluation of the mean logits of several finished runs of one
config (seeds, say), in a workdir of its own; and `train_ensemble`, which trains those runs
first (`trainer.ensemble_size` > 1)."""

import os
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from medjax import ensemble_file, parallel, workdir_lock
from medjax.errors import ConfigError
from medjax.outputs import writers
from medjax.tasks import build_task
from medjax.train import checks, trained
from medjax.train.evaluation import report_evaluation
from medjax.train.loop import train_and_evaluate


def ensemble(
    config: ml_collections.ConfigDict, workdir: str, members: Sequence[str], *, split: str = "test"
) -> dict[str, float]:
    """Evaluates each member's best checkpoint on val and `split`, averages their logits per
    example (Task.ensemble_outputs) and evaluates that as a run's final evaluation does (the
    operating point and calibration fitted on the ensemble's val outputs), writing its report,
    predictions, plots and metrics.jsonl to `workdir`, with `ensemble.json` (the members,
    relative to `workdir`: medjax.ensemble_file). Returns the split's metrics. Bad input
    raises ConfigError before anything is written."""
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
    for member in members:
        workdir_lock.refuse_if_held(member, "ensemble")
    loaded = trained.load_members(config, task, members, task.data_fingerprint(), "--members")
    model = trained.Model(workdir, loaded, ensemble=True)
    mesh = parallel.data_mesh()
    evaluated = {}
    for name in ("val", split):
        mean = model.outputs(task, name, mesh)
        evaluated[name] = task.compute_metrics(mean), mean
    checks.prepare_workdir(workdir)
    with workdir_lock.writer(workdir):
        elapsed = 0.0
        if jax.process_index() == 0:
            writers.write_atomically(
                os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
            )
            writers.write_atomically(
                os.path.join(workdir, ensemble_file.FILE), ensemble_file.text(workdir, members)
            )
            if split == "test":  # the ensemble trains no step: its test line is at step 0
                elapsed = writers.keep_metrics_up_to(os.path.join(workdir, "metrics.jsonl"), 0)
        writer = writers.create_writer(workdir, time.time() - elapsed)
        checkpoints = [member.checkpoint() for member in loaded]
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
    if len(found) < 2:
        raise ConfigError(
            f"--members={','.join(members)}: an ensemble needs at least 2 finished workdirs, "
            "comma-separated"
        )
    for k, path in enumerate(found):
        if path in found[:k]:
            first, again = members[found.index(path)], members[k]
            twice = "is listed twice" if first == again else f"and {again} are the same folder"
            raise ConfigError(
                f"--members={','.join(members)}: {first} {twice}; give each member once"
            )
    if os.path.realpath(workdir) in found:
        raise ConfigError(f"--workdir={workdir} is one of the --members; give it another")
    _refuse_training_workdir(workdir)


def _refuse_training_workdir(workdir: str) -> None:
    if os.path.exists(os.path.join(workdir, "checkpoints")):
        raise ConfigError(f"--workdir={workdir} holds a training run (checkpoints/); give another")
