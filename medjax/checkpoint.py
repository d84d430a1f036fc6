"""Checkpoints: the latest few and the best by the validation metric, with orbax.

`checkpoints/latest/<step>` and `checkpoints/best/<step>` each hold the whole training state
(params, batch statistics, optimiser state, step, rng) and `progress`, the trainer's JSON
bookkeeping (early stopping, finished). Orbax writes each checkpoint to a temporary folder and
renames it when complete, so an interrupted save is never read: the previous one is used.
"""

import contextlib
import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
    def __init__(self, directory: str, *, max_to_keep: int):
        directory = os.path.abspath(directory)  # orbax refuses relative paths

        def manager(name, keep):
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            )
            with _quiet():
                return ocp.CheckpointManager(os.path.join(directory, name), options=options)

        self._latest = manager("latest", max_to_keep)
        self._best = manager("best", 1)

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
    if manager.latest_step() == step:
        return
    with _quiet():
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
            ),
        )


def _restore(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
    step = manager.latest_step()
    if step is None:
        return None
    with _quiet():
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()
            ),
        )
    return restored.state, restored.progress
