"""Checkpoints: the latest few and the best by the validation metric, with orbax.

`checkpoints/latest/<step>` and `checkpoints/best/<step>` each hold the whole training state
(params, batch statistics, optimiser state, step, rng) and `progress`, the trainer's JSON
bookkeeping (early stopping, finished, fingerprint). Orbax writes each checkpoint to a
temporary folder and renames it when complete, so an interrupted save is never read: the
previous one is used, and the leftover folder is removed when the run starts again.
"""

import contextlib
import errno
import glob
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from medjax.errors import ConfigError


class Checkpoints:
    def __init__(self, directory: str, *, max_to_keep: int):
        if max_to_keep < 1:  # 0 would delete each checkpoint as soon as it is written
            raise ConfigError(
                f"trainer.max_checkpoints_to_keep={max_to_keep}: keep at least 1 latest "
                "checkpoint, or a run cannot resume"
            )
        directory = os.path.abspath(directory)  # orbax refuses relative paths

        def manager(name, keep):
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            )
            with _quiet():
                return ocp.CheckpointManager(os.path.join(directory, name), options=options)

        self.directory = directory
        self._latest = manager("latest", max_to_keep)
        # The trainer saves a best checkpoint only when the validation metric improved (a NaN
        # never does), so the newest one in best/ is the best: keep it alone. Orbax's BestN would
        # rank the saved metrics itself, and sorting puts a NaN anywhere.
        self._best = manager("best", 1)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save_latest(self, step: int, state: Any, progress: dict) -> None:
        _save(self._latest, step, state, progress)

    def save_best(self, step: int, state: Any, progress: dict) -> None:
        _save(self._best, step, state, progress)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the latest checkpoint, or None if there is none."""
        return _restore(self._latest, abstract_state)

    def restore_best(self, abstract_state: Any) -> tuple[Any, dict] | None:
        return _restore(self._best, abstract_state)

    def close(self) -> None:
        with _quiet():
            self._latest.close()
            self._best.close()


@contextlib.contextmanager
def _quiet():
    """Orbax logs every file it writes at INFO; keep its warnings, drop the chatter."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(min(verbosity, logging.WARNING))
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _save(manager: ocp.CheckpointManager, step: int, state: Any, progress: dict) -> None:
    previous = manager.latest_step()
    if previous == step:
        return
    try:
        with _quiet():
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
                ),
            )
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        for partial in glob.glob(os.path.join(manager.directory, f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(partial, ignore_errors=True)
        kept = f"; the checkpoint of step {previous} is intact" if previous is not None else ""
        raise ConfigError(
            f"no space left on the device while saving the checkpoint of step {step} in "
            f"{manager.directory}{kept}. Free some space, or move the workdir to a disk with "
            "room, and run the same command again"
        ) from None


def _restore(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that can be read; one that cannot (missing or corrupt files) is
    renamed <step>.damaged, with a warning, and the next older one tried. ConfigError where
    checkpoints exist and none can be read, or where they hold another model."""
    problems = []
    for step in sorted(manager.all_steps(), reverse=True):
        path = os.path.join(manager.directory, str(step))
        try:
            _check_shapes(os.path.join(path, "state"), abstract_state)
            with _quiet():
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        progress=ocp.args.JsonRestore(),
                    ),
                )
        except ConfigError:  # another model: no older checkpoint of this run would fit either
            raise
        except Exception as e:  # orbax reports damage as many kinds of error
            problems.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            logging.warning("Checkpoint %s cannot be read (%s); trying an older one.",
                            path, problems[-1])  # fmt: skip
            _set_aside(manager, path)
            continue
        return restored.state, restored.progress
    if problems:
        raise ConfigError(
            f"no checkpoint in {manager.directory} can be read ({'; '.join(problems)}); they "
            "were renamed <step>.damaged. Delete the workdir's checkpoints folder to start over"
        )
    return None


def _set_aside(manager: ocp.CheckpointManager, path: str) -> None:
    """Renames a damaged checkpoint folder out of the manager's sight (process 0)."""
    if jax.process_index() == 0:
        damaged = f"{path}.damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        os.rename(path, damaged)
    manager.reload()


def _check_shapes(path: str, abstract_state: Any) -> None:
    """Raises ConfigError naming the parameters whose shapes differ from the checkpoint's."""
    stored = ocp.StandardCheckpointer().metadata(path).item_metadata.tree

    def shapes(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(k, simple=True, separator="/"): x.shape for k, x in flat}

    ours, theirs = {}, {}
    for name in ("params", "batch_stats"):
        ours |= {f"{name}/{k}": v for k, v in shapes(getattr(abstract_state, name)).items()}
        theirs |= {f"{name}/{k}": tuple(v) for k, v in shapes(stored.get(name, {})).items()}
    differ = sorted(
        (k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)),
        key=lambda k: (k.startswith("batch_stats"), k),
    )
    if differ:
        shown = "; ".join(
            f"{k}: checkpoint {theirs.get(k, 'absent')}, config {ours.get(k, 'absent')}"
            for k in differ[:5]
        )
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise ConfigError(
            f"the checkpoint in {os.path.dirname(os.path.dirname(path))} holds a different model:"
            f" {shown}{more}; train this config in a new --workdir"
        )
