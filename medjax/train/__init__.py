"""Task-agnostic training and what a trained workdir can do: `train_and_evaluate`, and the
modes `evaluate`, `explain`, `predict`, `export` and `ensemble`.

state.py holds the training state; steps.py the training step, top to bottom, and the
evaluation step; loop.py the training loop, over one frozen `Run`;
evaluation.py the evaluation of a checkpoint; checks.py the pre-flight checks; run_config.py
the config diffs and fingerprints that guard resuming; trained.py the model of a trained
workdir (a run's best checkpoint, or an ensemble's members); modes.py evaluate, explain and predict;
ensemble.py the evaluation of an ensemble of runs, and their training (`train_ensemble`);
export.py the model with its preprocessing as a jax.export function and a SavedModel.
"""

from medjax.train.ensemble import ensemble, train_ensemble, train_run
from medjax.train.export import export
from medjax.train.loop import train_and_evaluate
from medjax.train.modes import evaluate, explain, predict

__all__ = [
    "ensemble",
    "evaluate",
    "explain",
    "export",
    "predict",
    "train_and_evaluate",
    "train_ensemble",
    "train_run",
]
