"""What self-supervised pretraining buys when labels are few: test AUC of a MedMNIST ResNet
trained on a share of the training labels, from scratch and fine-tuned from SimCLR pretraining
on all the training images without their labels.

  python experiments/label_efficiency/run.py --data_dir=DIR \
      --datasets=breastmnist,adrenalmnist3d --out_dir=experiments/label_efficiency

For each dataset: one SimCLR run (configs/simclr.py, seed 0, --pretrain_epochs); then, for
each seed and share of labels, two runs of configs/medmnist.py's single model (no ensemble)
that differ only in their start: fresh weights, or the SimCLR backbone
(init.from_workdir; its projection and head are left out). A seed picks the init, the data
order and which training examples keep their labels (data.seed; the same subset for both
starts). Each run trains --epochs over its labelled examples (at least MIN_STEPS steps), and
keeps the checkpoint with the best validation AUC; val and test are whole. Runs are in-process,
one after another, in workdirs under --workdir_root; a finished run's test line is only read.
Writes results.md (mean ± sd over seeds, the t interval of the mean, and of the paired
difference) and label_efficiency.png to --out_dir.
"""

import json
import math
import os
import runpy
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy import stats  # noqa: E402

from configs import medmnist, simclr  # noqa: E402
from medjax import train  # noqa: E402
from medjax.data import medmnist as medmnist_data  # noqa: E402
from medjax.errors import ConfigError  # noqa: E402
from medjax.outputs import writers  # noqa: E402

# experiments/sweep.py's reader of a finished run's test line (its flags are defined only when
# it runs as a script).
test_line = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "sweep.py"))["test_line"]  # fmt: skip
MIN_STEPS = 100
STARTS = ("scratch", "pretrained")

flags.DEFINE_string("data_dir", None, "Folder holding the MedMNIST .npz files.")
flags.DEFINE_list("datasets", ["breastmnist", "adrenalmnist3d"], "MedMNIST names.")
flags.DEFINE_list("fractions", ["0.05", "0.1", "0.25", "1.0"], "Shares of the training labels.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the fine-tuning runs.")
flags.DEFINE_integer("epochs", 20, "Fine-tuning epochs over the labelled training examples.")
flags.DEFINE_list(
    "pretrain_epochs", ["100", "25"], "SimCLR epochs over all the training images, per dataset."
)
flags.DEFINE_string("workdir_root", "runs/label_efficiency", "Workdirs go in here.")
flags.DEFINE_string("out_dir", "experiments/label_efficiency", "Where results.md and the plot go.")
FLAGS = flags.FLAGS


def _data(config, name: str):
    config.data.update(dir=FLAGS.data_dir, download=False)
    config.explain.num_examples = 0
    return config


def pretrain_config(name: str, epochs: int):
    config = _data(simclr.get_config(name), name)
    steps_per_epoch = -(-_info(name).num_train // config.trainer.batch_size)
    config.trainer.num_train_steps = epochs * steps_per_epoch
    return config


def finetune_config(name: str, fraction: float, seed: int, pretrained: str):
    """configs/medmnist.py's single model on `fraction` of the labels, from `pretrained` ("":
    fresh weights)."""
    config = _data(medmnist.get_config(name), name)
    config.seed = config.data.seed = seed
    config.data.label_fraction = fraction
    config.trainer.ensemble_size = 1
    config.init.from_workdir = pretrained
    labelled = round(fraction * _info(name).num_train)
    batch = min(config.trainer.batch_size, 2 ** int(math.log2(labelled)))
    config.trainer.batch_size = batch
    config.trainer.num_train_steps = max(MIN_STEPS, FLAGS.epochs * -(-labelled // batch))
    return config


def _info(name: str):
    return medmnist_data.INFO[medmnist_data.parse_name(name)[0]]


def run_dataset(name: str, pretrain_epochs: int) -> list[dict]:
    """Every run of one dataset; returns a row per fine-tuning run."""
    root = os.path.join(FLAGS.workdir_root, name)
    pretrained = os.path.join(root, "pretrain")
    if not test_line(pretrained):
        train.train_and_evaluate(pretrain_config(name, pretrain_epochs), pretrained)
    rows = []
    for seed in map(int, FLAGS.seeds):
        for fraction in map(float, FLAGS.fractions):
            for start in STARTS:
                workdir = os.path.join(root, f"{start}_f{fraction:g}_s{seed}")
                init = pretrained if start == "pretrained" else ""
                config = finetune_config(name, fraction, seed, init)
                test = test_line(workdir) or train.train_and_evaluate(config, workdir)
                rows.append({"dataset": name, "fraction": fraction, "seed": seed, "start": start,
                             "auroc": test["auroc"], "accuracy": test["accuracy"],
                             "steps": config.trainer.num_train_steps})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% t interval of the mean of `values`."""
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def summarise(rows: list[dict]) -> list[str]:
    """The results table: per dataset and share, each start's test AUC, and the difference."""
    lines = [
        "| dataset | labels | scratch AUC | pretrained AUC | pretrained - scratch (paired) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for fraction in dict.fromkeys(r["fraction"] for r in rows):
            auc = {start: np.array([r["auroc"] for r in rows if (r["dataset"], r["fraction"],
                                    r["start"]) == (name, fraction, start)])
                   for start in STARTS}  # fmt: skip
            cells = []
            for values, sign in ((auc["scratch"], ""), (auc["pretrained"], ""),
                                 (auc["pretrained"] - auc["scratch"], "+")):  # fmt: skip
                low, high = _interval(values)
                cells.append(f"{values.mean():{sign}.3f} ± {values.std(ddof=1):.3f} "
                             f"({low:{sign}.3f} to {high:{sign}.3f})")  # fmt: skip
            labelled = round(fraction * _info(name).num_train)
            lines.append(f"| {name} | {fraction:.0%} ({labelled}) | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: str) -> None:
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for start, marker in zip(STARTS, "os"):
            fractions = sorted({r["fraction"] for r in rows if r["dataset"] == name})
            values = [np.array([r["auroc"] for r in rows if (r["dataset"], r["fraction"],
                                r["start"]) == (name, f, start)]) for f in fractions]  # fmt: skip
            means = [v.mean() for v in values]
            errors = np.array([[m - _interval(v)[0] for m, v in zip(means, values)]] * 2)
            ax.errorbar(np.array(fractions) * 100, means, yerr=errors, marker=marker,
                        capsize=3, label=start)  # fmt: skip
        ax.set(xscale="log", xlabel="training labels used (%)", ylabel="test AUC", title=name)
        ax.set_xticks([5, 10, 25, 100], ["5", "10", "25", "100"])
        ax.legend()
    figure.suptitle("Mean test AUC over seeds, with 95% t intervals")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only
    if len(FLAGS.pretrain_epochs) != len(FLAGS.datasets):
        raise app.UsageError("--pretrain_epochs needs one number per dataset of --datasets")
    try:
        rows = [row for name, epochs in zip(FLAGS.datasets, FLAGS.pretrain_epochs)
                for row in run_dataset(name, int(epochs))]  # fmt: skip
    except ConfigError as e:
        sys.exit(f"error: {e}")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    writers.write_atomically(os.path.join(FLAGS.out_dir, "runs.json"), json.dumps(rows, indent=1))
    table = summarise(rows)
    writers.write_atomically(os.path.join(FLAGS.out_dir, "results.md"), "\n".join(table) + "\n")
    plot(rows, os.path.join(FLAGS.out_dir, "label_efficiency.png"))
    print("\n".join(table))


if __name__ == "__main__":
    flags.mark_flags_as_required(["data_dir"])
    app.run(main)
