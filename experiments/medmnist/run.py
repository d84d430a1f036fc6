"""MedMNIST datasets over 3 seeds: test AUC and ACC (mean and standard deviation), wall time.

  python experiments/medmnist/run.py --data_dir=DIR --datasets=breastmnist,pneumoniamnist \
      --out=experiments/medmnist/results.md

Each (dataset, seed) is one `python -m medjax.main --config=configs/medmnist.py:NAME` run in
its own workdir under --workdir_root (a finished run is re-read, not retrained); the table puts
the paper's ResNet-18 (28) figures beside ours. Extra config overrides go after `--`, e.g.
`-- --config.model.width=1.0`.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
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


def run(name: str, seed: str, overrides: list[str]) -> dict:
    """Test metrics and wall time of one run (trained now unless its workdir has them)."""
    workdir = os.path.join(FLAGS.workdir_root, f"{name}_seed{seed}")
    timing = os.path.join(workdir, "wall_time_s.json")
    if not os.path.exists(timing):
        start = time.time()
        command = [sys.executable, "-m", "medjax.main", f"--config=configs/medmnist.py:{name}",
                   f"--workdir={workdir}", f"--config.data.dir={FLAGS.data_dir}",
                   f"--config.seed={seed}", *overrides]  # fmt: skip
        subprocess.run(command, check=True)
        with open(timing, "w") as f:
            json.dump(time.time() - start, f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        test = [row for row in map(json.loads, f) if row["split"] == "test"][-1]
    with open(timing) as f:
        return {"auc": test["auroc"], "acc": test["accuracy"], "time": json.load(f)}


def main(argv):
    overrides = argv[1:]
    lines = [
        "| dataset | test AUC | test ACC | wall time per run | paper ResNet-18 (28) AUC / ACC |",
        "|---|---|---|---|---|",
    ]
    for name in FLAGS.datasets:
        results = [run(name, seed, overrides) for seed in FLAGS.seeds]
        auc, acc, wall = (np.array([r[k] for r in results]) for k in ("auc", "acc", "time"))
        paper = PAPER.get(name)
        lines.append(
            f"| {name} | {auc.mean():.3f} ± {auc.std(ddof=1):.3f} | "
            f"{acc.mean():.3f} ± {acc.std(ddof=1):.3f} | {wall.mean() / 60:.1f} min | "
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
