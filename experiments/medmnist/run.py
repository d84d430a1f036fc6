"""MedMNIST recipes (configs/medmnist.py) on the official test splits, beside the MedMNIST v2
paper's table, with the wall time per run.

  python experiments/medmnist/run.py --data_dir=DIR \
      --datasets=breastmnist,retinamnist,adrenalmnist3d --out=experiments/medmnist/results.md

A recipe of one model runs --seeds and reports their mean ± sd. A recipe that is an ensemble of
seeds (trainer.ensemble_size K) runs once, from the first seed (its members are that seed and the
K - 1 after it), and reports the ensemble, with its members' mean ± sd beside it. Each run is
experiments/sweep.py's (a workdir under --workdir_root/NAME; a finished run is re-read, not
retrained; an unfinished one resumes). Extra config overrides go after `--`.
"""

import os
import runpy

from absl import app, flags

from configs import medmnist
from medjax.train.ensemble import member_workdir

# MedMNIST v2 (Yang et al., Scientific Data 2023), test AUC and ACC of the methods of its
# benchmark tables, as copies of the tables give them (experiments/medmnist/results.md says
# which; AdrenalMNIST3D: only the rows we found in a copy of the published table).
PAPER = {
    "breastmnist": [("ResNet-18 (28)", 0.901, 0.863), ("ResNet-18 (224)", 0.891, 0.833),
                    ("ResNet-50 (28)", 0.857, 0.812), ("ResNet-50 (224)", 0.866, 0.842),
                    ("auto-sklearn", 0.836, 0.803), ("AutoKeras", 0.871, 0.831),
                    ("Google AutoML Vision", 0.919, 0.861)],
    "retinamnist": [("ResNet-18 (28)", 0.717, 0.524), ("ResNet-18 (224)", 0.710, 0.493),
                    ("ResNet-50 (28)", 0.726, 0.528), ("ResNet-50 (224)", 0.716, 0.511),
                    ("auto-sklearn", 0.690, 0.515), ("AutoKeras", 0.719, 0.503),
                    ("Google AutoML Vision", 0.750, 0.531)],
    "adrenalmnist3d": [("ResNet-50 + 3D", 0.828, 0.745)],
}  # fmt: skip

SOURCES = """\
The paper's figures were checked against copies of its published tables (the paper's own pages
were not readable from here): BreastMNIST and RetinaMNIST rows agree across several copies,
except BreastMNIST ResNet-18 (224), found only on the authors' pre-publication page. For
AdrenalMNIST3D only the ResNet-50 + 3D row was found in a copy of the final table; the best rows
quoted by issue 19 (AUC 0.839, ResNet-18 + ACS; ACC 0.802, auto-sklearn) could not be checked.
"""

flags.DEFINE_string("data_dir", None, "Folder holding (or to receive) the MedMNIST .npz files.")
flags.DEFINE_list("datasets", ["breastmnist"], "MedMNIST names, e.g. pneumoniamnist_64.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Values of config.seed (an ensemble: its first).")
flags.DEFINE_string("workdir_root", "runs/medmnist", "One workdir per dataset and seed in here.")
flags.DEFINE_string("out", "experiments/medmnist/results.md", "The results table (markdown).")
FLAGS = flags.FLAGS


def _cell(row, metric):
    return f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_sd']:.3f}"


def main(argv):
    sweep = runpy.run_path(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sweep.py")
    )
    overrides = [f"--config.data.dir={FLAGS.data_dir}", *argv[1:]]
    lines = [
        "| dataset | recipe | test AUC | test ACC | single models: AUC, ACC | wall time per run |",
        "|---|---|---|---|---|---|",
    ]
    for name in FLAGS.datasets:
        out = os.path.join(FLAGS.workdir_root, name)
        config = medmnist.get_config(name)
        size = config.trainer.ensemble_size
        seeds = FLAGS.seeds[:1] if size > 1 else FLAGS.seeds
        runs, (row,) = sweep["sweep"](f"configs/medmnist.py:{name}", [], seeds, out, overrides)
        if size > 1:
            (run,) = runs
            members = [member_workdir(run["workdir"], int(run["seed"]) + k) for k in range(size)]
            results = [(sweep["test_line"](m), 0.0) for m in members]
            (single,) = sweep["summarise"]([run] * size, results)
            recipe = f"ensemble of {size} seeds"
            scores = (f"{row['auroc_mean']:.3f}", f"{row['accuracy_mean']:.3f}")
        else:
            single, recipe = row, f"one model, seeds {', '.join(seeds)}"
            scores = (_cell(row, "auroc"), _cell(row, "accuracy"))
        if config.evaluation.test_time_flips:
            recipe += ", test-time flips"
        lines.append(
            f"| {name} | {recipe} | {' | '.join(scores)} | {_cell(single, 'auroc')}, "
            f"{_cell(single, 'accuracy')} | {row['wall_time_s_mean'] / 60:.1f} min |"
        )
    lines += ["", "The MedMNIST v2 paper's rows, test AUC / ACC:", ""]
    for name in FLAGS.datasets:
        rows = PAPER.get(name, [])
        lines += [f"- {name}: " + "; ".join(f"{m} {auc:.3f} / {acc:.3f}" for m, auc, acc in rows)]
    text = "\n".join(lines) + "\n\nMean ± standard deviation over seeds.\n\n" + SOURCES
    with open(FLAGS.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
