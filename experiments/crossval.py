"""K-fold cross-validation of a config, by patient: per-fold test metrics, mean and sd.

  python experiments/crossval.py --config=configs/ehr_rnn.py --workdir=runs/cv_ehr --folds=5 \
      [--config.KEY=VALUE ...]

Fold k trains `--config` with `data.num_folds=K`, `data.fold=k` in `<workdir>/fold<k>`: the
patients are dealt into K folds within each class (seeded by data.seed), fold k is the test
split and data.val_fraction of the other patients is val (selection, early stopping,
normalisation stays fitted on train). A rerun resumes or re-reads each fold's workdir.
Writes `<workdir>/crossval.md` and `<workdir>/crossval.json`: each fold's test metrics, and
their mean and sample standard deviation (ddof=1) over the folds, and the 95% interval of
the mean (Student t with K - 1 degrees of freedom).
"""

import json
import os
import sys

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import stats

from medjax import train
from medjax.errors import ConfigError
from medjax.outputs import writers

FLAGS = flags.FLAGS


def cross_validate(config: ml_collections.ConfigDict, workdir: str, num_folds: int) -> dict:
    """Trains and tests every fold; returns {"folds": [test metrics], "mean", "sd"} and writes
    the summary files."""
    results = []
    for fold in range(num_folds):
        fold_config = config.copy_and_resolve_references()
        fold_config.data.num_folds, fold_config.data.fold = num_folds, fold
        results.append(train.train_run(fold_config, os.path.join(workdir, f"fold{fold}")))
    names = [k for k in results[0] if all(np.isfinite(r[k]) for r in results)]
    values = {k: np.array([r[k] for r in results], np.float64) for k in names}
    summary = {
        "num_folds": num_folds,
        "folds": results,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "sd": {k: float(v.std(ddof=1)) for k, v in values.items()},
    }
    # The 95% interval of the mean over folds: mean ± t(0.975, K - 1) sd / sqrt(K).
    half = stats.t.ppf(0.975, num_folds - 1) / np.sqrt(num_folds)
    summary["interval"] = {
        k: [
            summary["mean"][k] - half * summary["sd"][k],
            summary["mean"][k] + half * summary["sd"][k],
        ]
        for k in names
    }
    lines = [
        f"# {num_folds}-fold cross-validation by patient",
        "",
        f"- data and model: {config.task} task, data {config.data.name}, model "
        f"{config.model.name}, data seed {config.data.seed}",
        f"- each fold's workdir: {workdir}/fold<k>; test metrics of its best checkpoint",
        "",
        "| fold | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {i} | " + " | ".join(f"{r[k]:.4f}" for k in names) + " |"
          for i, r in enumerate(results)),
        "| mean ± sd | " + " | ".join(
            f"{summary['mean'][k]:.4f} ± {summary['sd'][k]:.4f}" for k in names
        ) + " |",
        "| 95% interval of the mean (t) | " + " | ".join(
            "{:.4f} to {:.4f}".format(*summary["interval"][k]) for k in names
        ) + " |",
    ]  # fmt: skip
    writers.write_atomically(os.path.join(workdir, "crossval.json"), json.dumps(summary, indent=2))
    writers.write_atomically(os.path.join(workdir, "crossval.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.folds < 2:
        raise app.UsageError(f"--folds={FLAGS.folds}: cross-validation needs at least 2 folds")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only
    try:
        cross_validate(FLAGS.config, FLAGS.workdir, FLAGS.folds)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":  # flags only then: other scripts run this file for cross_validate
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Folder for the folds' workdirs and the summary.")
    flags.DEFINE_integer("folds", 5, "Number of folds K (>= 2).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
