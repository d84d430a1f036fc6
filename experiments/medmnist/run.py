"""MedMNIST datasets over 3 seeds: test AUC and ACC (mean and standard deviation), wall time.

  python experiments/medmnist/run.py --data_dir=DIR --datasets=breastmnist,pneumoniamnist \
      --out=experiments/medmnist/results.md

Each (dataset, seed) is one `python -m medjax.main --config=configs/medmnist.py:NAME` run in
its own workdir under --workdir_root/NAME, run by experiments/sweep.py's functions (a finished
run is re-read, not retrained; an unfinished one resumes); the table puts
the paper's ResNet-18 (28) figures beside ours. Extra config overrides go after `--`, e.g.
`-- --config.model.width=1.0`.
"""

import os
import runpy

from absl import app, flags

# Yang et al., MedMNIST v2, Scientific Data 2023, Table 4: ResNet-18 (28) test AUC, ACC.
PAPER = {"pathmnist": (0.983, 0.907), "pneumoniamnist": (0.944, 0.854),
         "breastmnist": (0.901, 0.863)}  # fmt: skip

flags.DEFINE_string("data_dir", None, "Folder holding (or to receive) the MedMNIST .npz files.")
flags.DEFINE_list("datasets", ["breastmnist"], "MedMNIST names, e.g. pneumoniamnist_64.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Values of config.seed.")
flags.DEFINE_string("workdir_root", "runs/medmnist", "One workdir per dataset and seed in here.")
flags.DEFINE_string("out", "experiments/medmnist/results.md", "The results table (markdown).")
FLAGS = flags.FLAGS


def main(argv):
    sweep = runpy.run_path(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sweep.py")
    )["sweep"]
    overrides = [f"--config.data.dir={FLAGS.data_dir}", *argv[1:]]
    lines = [
        "| dataset | test AUC | test ACC | wall time per run | paper ResNet-18 (28) AUC / ACC |",
        "|---|---|---|---|---|",
    ]
    for name in FLAGS.datasets:
        out = os.path.join(FLAGS.workdir_root, name)
        config = f"configs/medmnist.py:{name}"
        _, (row,) = sweep(config, [], FLAGS.seeds, out, overrides)
        paper = PAPER.get(name)
        lines.append(
            f"| {name} | {row['auroc_mean']:.3f} ± {row['auroc_sd']:.3f} | "
            f"{row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f} | "
            f"{row['wall_time_s_mean'] / 60:.1f} min | "
            f"{f'{paper[0]:.3f} / {paper[1]:.3f}' if paper else '-'} |"
        )
    seeds = ", ".join(FLAGS.seeds)
    text = "\n".join(lines) + f"\n\nMean ± standard deviation over seeds {seeds}.\n"
    with open(FLAGS.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
