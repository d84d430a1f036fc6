"""Task-agnostic training and what a trained workdir can do: `train_and_evaluate`, and the
modes `evaluate`, `explain` and `predict`.

state.py holds the training state; steps.py the jitted steps; loop.py the training loop;
evaluation.py the evaluation of a checkpoint; checks.py the pre-flight checks; run_config.py
the config diffs and fingerprints that guard resuming; modes.py the modes other than training.
"""

from medjax.train.loop import train_and_evaluate
from medjax.train.modes import evaluate, explain, predict

__all__ = ["evaluate", "explain", "predict", "train_and_evaluate"]
