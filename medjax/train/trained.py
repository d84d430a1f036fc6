"""The model of a trained workdir, as --mode=evaluate, predict and export use it (`load_model`):
the best checkpoint of one run, or, where the workdir holds an ensemble (medjax.ensemble_file:
--mode=ensemble's workdir, or trainer.ensemble_size's), the best checkpoints of its members,
whose logits are averaged per example (Task.ensemble_outputs)."""

import json
import os
import typing
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from medjax import ensemble_file, parallel
from medjax.errors import ConfigError
from medjax.outputs import report
from medjax.tasks import Task
from medjax.train import checks, run_config
from medjax.train.evaluation import evaluate_split
from medjax.train.state import open_checkpoints

# What a member's config may differ in from the ensemble's: how its weights were fitted. All
# else (task, data, model, dtype, privacy, ...) must agree, and the data itself (its fingerprint).
FREE_KEYS = ("seed",)
FREE_SECTIONS = ("trainer.", "optimizer.", "loss.")


class Member(typing.NamedTuple):
    """One run of a model: the state evaluated (its best checkpoint's), and its latest."""

    workdir: str
    config: ml_collections.ConfigDict  # the config it was restored with
    state: Any  # the best checkpoint's training state
    progress: dict  # the best checkpoint's progress metadata (fingerprint, ...)
    last_step: int  # the latest checkpoint's step
    latest_progress: dict  # the latest checkpoint's progress metadata (finished, ...)

    def checkpoint(self) -> report.Checkpoint:
        num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
        return report.Checkpoint(
            self.workdir, self.config, int(self.state.step), self.last_step, num_params
        )


class Model(typing.NamedTuple):
    """The model of a workdir: one member (a run), or an ensemble's members."""

    workdir: str
    members: tuple[Member, ...]
    ensemble: bool  # the workdir is an ensemble's: the outputs are the members' mean logits

    def outputs(self, task: Task, split: str, mesh) -> dict[str, np.ndarray]:
        """The model's per-example outputs of `split` (evaluation.evaluate_split's gathered
        arrays); an ensemble's are Task.ensemble_outputs of its members'."""
        gathered = []
        for member in self.members:
            metrics, outputs = evaluate_split(member.state, task, split, mesh)
            if self.ensemble:
                found = json.dumps(metrics)
                logging.info("Member %s, %s metrics: %s", member.workdir, split, found)
            gathered.append(outputs)
        return task.ensemble_outputs(gathered) if self.ensemble else gathered[0]


def load_model(config: ml_collections.ConfigDict, task: Task, workdir: str) -> Model:
    """The model of the trained `workdir`: its best checkpoint (the latest where it kept no
    best), restored as `config` describes it; or, for an ensemble's workdir, its members,
    each checked against the ensemble's config.json (`load_members`). ConfigError where
    there is none."""
    members = ensemble_file.members(workdir)
    if members is None:
        latest, best = restore_latest_and_best(config, task, workdir)
        state, progress = best or latest
        member = Member(workdir, config, state, progress, int(latest[0].step), latest[1])
        return Model(workdir, (member,), ensemble=False)
    if task.ensemble_outputs is None:  # not written by medjax: its ensembles have logits
        raise ConfigError(f"{workdir} holds an ensemble, but the {config.task} task has no logits")
    source = os.path.join(workdir, ensemble_file.FILE)
    loaded = load_members(trained_config(workdir), task, members, None, source)
    return Model(workdir, loaded, ensemble=True)


def load_members(
    config: ml_collections.ConfigDict, task: Task, members: Sequence[str], data, source: str
) -> tuple[Member, ...]:
    """The best checkpoints of the finished runs `members`, each refused (ConfigError naming
    `source`, where they were listed) where it is unfinished, or its config differs from
    `config` in more than FREE_KEYS and FREE_SECTIONS, or it scored other data than the
    fingerprint `data` (None: than the first member)."""
    loaded = []
    for member in members:
        loaded.append(_restore_member(config, task, member, data, source))
        data = (loaded[-1].progress.get("fingerprint") or {}).get("data")
    return tuple(loaded)


def _restore_member(config, task: Task, member: str, data, source: str) -> Member:
    checks.refuse_ensemble_workdir(member)
    member_config = trained_config(member, f"each of {source}")
    changes = run_config.config_changes(
        run_config.results_config(member_config),
        run_config.results_config(config),
        keep=lambda key: key not in FREE_KEYS and not key.startswith(FREE_SECTIONS),
    )
    if changes:
        raise ConfigError(
            f"{source}: {member} was trained with another data or model config: "
            f"{'; '.join(changes)}. Members may differ only in {', '.join(FREE_KEYS)} and the "
            f"{', '.join(s[:-1] for s in FREE_SECTIONS)} settings"
        )
    (last_state, progress), best = restore_latest_and_best(member_config, task, member)
    last_step = int(last_state.step)
    if best is None or not progress.get("finished"):
        raise ConfigError(
            f"{source}: {member} is not a finished run (at step {last_step} of "
            f"{member_config.trainer.num_train_steps}); finish it first (--mode=train)"
        )
    saved = (best[1].get("fingerprint") or {}).get("data")
    if data is not None and saved != data:
        raise ConfigError(
            f"{source}: {member} scored other examples: its data (fingerprint {saved}) differ "
            f"from the ensemble's ({data}); ensemble runs of the same data"
        )
    return Member(member, member_config, best[0], best[1], last_step, progress)


def restore_latest_and_best(config: ml_collections.ConfigDict, task: Task, workdir: str):
    """The latest and the best checkpoints of `workdir`, each (state, progress), the best None
    where none was kept; ConfigError when there is no checkpoint."""
    checks.require_checkpoint_dir(workdir)
    ckpts, abstract_state = open_checkpoints(config, task, workdir, parallel.data_mesh())
    latest, best = ckpts.restore_latest(abstract_state), ckpts.restore_best(abstract_state)
    ckpts.close()
    if latest is None:
        raise checks.no_checkpoint(ckpts.directory)
    return latest, best


def restore_best(config: ml_collections.ConfigDict, task: Task, workdir: str):
    """(state, progress) of the best checkpoint of `workdir`; ConfigError when there is none."""
    checks.require_checkpoint_dir(workdir)
    ckpts, abstract_state = open_checkpoints(config, task, workdir, parallel.data_mesh())
    best = ckpts.restore_best(abstract_state)
    ckpts.close()
    if best is None:
        raise checks.no_checkpoint(ckpts.directory)
    return best


def trained_config(workdir: str, flag: str = "--workdir") -> ml_collections.ConfigDict:
    """The config of the run (or ensemble) in `workdir`, its config.json; ConfigError naming
    `flag` if none."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"no {config_path}: {flag} must hold a trained run (--mode=train)")
    with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))
