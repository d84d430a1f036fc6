"""Chooses each MedMNIST recipe without the test split: K-fold cross-validation over the official
train and val images together, one run per fold and candidate, the official test split unread.

  python experiments/medmnist/choose_recipes.py --data_dir=DIR --datasets=breastmnist,retinamnist,\
adrenalmnist3d [--folds=5] [--seed=0] [--out=experiments/medmnist/recipes.md]

The candidates of a dataset (CANDIDATES: the levers the study of experiments/medmnist/README.md
compared) are each configs/medmnist.py:NAME without its recipe, plus the candidate's keys; each
is cross-validated by experiments/crossval.py, in its own process (data.num_folds, data.fold:
fold k is the run's "test" split, val is data.val_fraction of the rest and chooses the
checkpoint) in <workdir_root>/NAME/<candidate>. The recipe is the candidate of the highest
mean fold AUC (`auroc`); ties go to the earlier, simpler one. Writes --out: per dataset and
candidate the mean, sd and 95% t interval of the fold AUC and ACC, and the choice, as a RECIPES
entry for configs/medmnist.py. The chosen recipe's test figures then come from one run of
experiments/medmnist/run.py, which reads each test split once. Extra config overrides go after
`--` (the same for every run).
"""

import json
import os
import subprocess
import sys

from absl import app, flags

from configs import medmnist
from medjax.data import medmnist as medmnist_data

HERE = os.path.dirname(os.path.abspath(__file__))
CROSSVAL = os.path.join(HERE, "..", "crossval.py")
FLIPS = {"evaluation.test_time_flips": True}
# name -> [(candidate, epochs, keys)], simplest first; every candidate sets the recipes' keys.
PLAIN = {"trainer.ensemble_size": 1, "evaluation.test_time_flips": False,
         "data.augment.mixup_alpha": 0.0, "optimizer.weight_decay": 1e-4}  # fmt: skip
ACS_OFF = {"model.conv3d": "full", "model.small_input": True, "model.width": 0.25}
ACS = {"model.conv3d": "acs", "model.small_input": False, "model.width": 0.5}
CANDIDATES = {
    "breastmnist": [
        ("common", 50, {}),
        ("flips", 50, FLIPS),
        ("mixup 0.2, flips", 50, {**FLIPS, "data.augment.mixup_alpha": 0.2}),
        ("ensemble of 5, flips", 50, {**FLIPS, "trainer.ensemble_size": 5}),
    ],
    "retinamnist": [
        ("flips", 50, FLIPS),
        ("mixup 0.4, flips", 50, {**FLIPS, "data.augment.mixup_alpha": 0.4}),
        ("mixup 0.4, wd 0.05, flips", 50,
         {**FLIPS, "data.augment.mixup_alpha": 0.4, "optimizer.weight_decay": 0.05}),
        ("mixup 0.4, wd 0.05, flips, ensemble of 5", 50,
         {**FLIPS, "data.augment.mixup_alpha": 0.4, "optimizer.weight_decay": 0.05,
          "trainer.ensemble_size": 5}),
    ],
    "adrenalmnist3d": [
        ("ACS, standard stem, width 0.5, flips, 30 epochs", 30, {**ACS, **FLIPS}),
        ("ACS, standard stem, width 0.5, flips, 50 epochs", 50, {**ACS, **FLIPS}),
    ],
}  # fmt: skip

FLAGS = flags.FLAGS


def candidate_flags(name: str, epochs: int, keys: dict) -> list[str]:
    """medjax's --config flags of a candidate: configs/medmnist.py:NAME with the candidate's keys
    in place of its recipe's."""
    batch_size = medmnist.get_config(name).trainer.batch_size
    steps = epochs * -(-medmnist_data.INFO[name].num_train // batch_size)
    keys = {**PLAIN, **ACS_OFF, **keys, "trainer.num_train_steps": steps}
    return [f"--config=configs/medmnist.py:{name}", *(f"--config.{k}={v}" for k, v in keys.items())]


def main(argv):
    overrides = [f"--config.data.dir={FLAGS.data_dir}", *argv[1:]]
    unknown = [name for name in FLAGS.datasets if name not in CANDIDATES]
    if unknown:
        sys.exit(f"error: --datasets: no candidates for {', '.join(unknown)}; "
                 f"CANDIDATES has {', '.join(CANDIDATES)}")  # fmt: skip
    lines = [f"# MedMNIST recipes chosen by {FLAGS.folds}-fold cross-validation over the "
             "official train and val images (the test splits unread)", ""]  # fmt: skip
    try:
        for name in FLAGS.datasets:
            lines += [f"## {name}", "", "| candidate | fold AUC, mean ± sd (95% t interval) | "
                      "fold ACC, mean ± sd |", "|---|---|---|"]  # fmt: skip
            scores = []
            for candidate, epochs, keys in CANDIDATES[name]:
                workdir = os.path.join(FLAGS.workdir_root, name, candidate.replace(", ", "_")
                                       .replace(" ", "-"))  # fmt: skip
                subprocess.run(
                    [sys.executable, CROSSVAL, *candidate_flags(name, epochs, keys),
                     f"--config.seed={FLAGS.seed}", f"--folds={FLAGS.folds}",
                     f"--workdir={workdir}", *overrides],
                    check=True,
                )  # fmt: skip
                with open(os.path.join(workdir, "crossval.json")) as f:
                    summary = json.load(f)
                mean, sd, (low, high) = (summary[k]["auroc"] for k in ("mean", "sd", "interval"))
                scores.append(mean)
                lines.append(
                    f"| {candidate} | {mean:.3f} ± {sd:.3f} ({low:.3f} to {high:.3f}) | "
                    f"{summary['mean']['accuracy']:.3f} ± {summary['sd']['accuracy']:.3f} |"
                )
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            candidate, epochs, keys = CANDIDATES[name][best]
            lines += ["", f"Chosen: **{candidate}**, as configs/medmnist.py's RECIPES entry:",
                      "", f'    "{name}": ({epochs}, {keys!r}),', ""]  # fmt: skip
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd)} failed with status {e.returncode}")
    with open(FLAGS.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":  # flags only then: tests run this file for its functions
    flags.DEFINE_string("data_dir", None, "Folder holding the MedMNIST .npz files.")
    flags.DEFINE_list("datasets", list(CANDIDATES), "Datasets of CANDIDATES.")
    flags.DEFINE_integer("folds", 5, "K of the K-fold cross-validation (>= 2).")
    flags.DEFINE_integer("seed", 0, "config.seed of every run (the folds are dealt by data.seed).")
    flags.DEFINE_string("workdir_root", "runs/medmnist_recipes", "Workdirs go in here.")
    flags.DEFINE_string("out", os.path.join(HERE, "recipes.md"), "The table (markdown).")
    flags.mark_flag_as_required("data_dir")
    app.run(main)
