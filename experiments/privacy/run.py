"""Test AUROC against epsilon: DP-SGD at epsilon 1, 3, 8 and without privacy.

  python experiments/privacy/run.py --data_dir=../shared/data/medmnist \
      --datasets=synthetic_ct,breastmnist --epsilons=1,3,8,none

Each (dataset, epsilon, seed) is one `python -m medjax.main` run in its own workdir under
--workdir_root (a finished run is re-read, not retrained): synthetic_ct with
configs/ct_cnn_dp.py, a MedMNIST name with configs/medmnist.py:NAME, both with group norm;
`none` is the same config with privacy.enabled=false. Every private run solves its noise for its
planned steps (privacy.target_epsilon) at delta = 1 / (10 N); the table reports the epsilon of
its privacy.json and the test AUROC of its best (by validation AUROC) checkpoint. Extra config
overrides go after `--`.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("data_dir", "", "Folder holding the MedMNIST .npz files.")
flags.DEFINE_list("datasets", ["synthetic_ct", "breastmnist"], "synthetic_ct or MedMNIST names.")
flags.DEFINE_list("epsilons", ["1", "3", "8", "none"], "Target epsilons; none: no privacy.")
flags.DEFINE_list("seeds", ["0"], "Values of config.seed.")
flags.DEFINE_string("workdir_root", "runs/privacy", "One workdir per run in here.")
flags.DEFINE_string("out", "experiments/privacy/results.md", "The results table (markdown).")
FLAGS = flags.FLAGS


def command(dataset: str, epsilon: str, seed: str, workdir: str, overrides: list[str]):
    if dataset == "synthetic_ct":
        config = ["--config=configs/ct_cnn_dp.py"]
    else:
        config = [f"--config=configs/medmnist.py:{dataset}", f"--config.data.dir={FLAGS.data_dir}",
                  "--config.model.norm=group", "--config.privacy.microbatch_size=16",
                  "--config.optimizer.grad_clip_norm=0"]  # fmt: skip
    private = (
        ["--config.privacy.enabled=false"]
        if epsilon == "none"
        else ["--config.privacy.enabled=true", f"--config.privacy.target_epsilon={epsilon}"]
    )
    return [sys.executable, "-m", "medjax.main", *config, *private, f"--workdir={workdir}",
            f"--config.seed={seed}", *overrides]  # fmt: skip


def run(dataset: str, epsilon: str, seed: str, overrides: list[str]) -> dict:
    """Test AUROC, epsilon spent and wall time of one run (trained now unless done before)."""
    workdir = os.path.join(FLAGS.workdir_root, f"{dataset}_eps{epsilon}_seed{seed}")
    timing = os.path.join(workdir, "wall_time_s.json")
    if not os.path.exists(timing):
        start = time.time()
        subprocess.run(command(dataset, epsilon, seed, workdir, overrides), check=True)
        with open(timing, "w") as f:
            json.dump(time.time() - start, f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        test = [row for row in map(json.loads, f) if row["split"] == "test"][-1]
    spent = float("inf")
    if epsilon != "none":
        with open(os.path.join(workdir, "privacy.json")) as f:
            spent = json.load(f)["epsilon"]
    with open(timing) as f:
        return {"auroc": test["auroc"], "epsilon": spent, "time": json.load(f)}


def main(argv):
    overrides = argv[1:]
    lines = [
        "| dataset | target epsilon | epsilon spent | test AUROC | wall time per run |",
        "|---|---|---|---|---|",
    ]
    for dataset in FLAGS.datasets:
        for epsilon in FLAGS.epsilons:
            results = [run(dataset, epsilon, seed, overrides) for seed in FLAGS.seeds]
            auroc = np.array([r["auroc"] for r in results])
            spread = f" ± {auroc.std(ddof=1):.3f}" if len(auroc) > 1 else ""
            spent = max(r["epsilon"] for r in results)
            lines.append(
                f"| {dataset} | {epsilon} | {'-' if epsilon == 'none' else f'{spent:.3f}'} | "
                f"{auroc.mean():.3f}{spread} | "
                f"{np.mean([r['time'] for r in results]) / 60:.1f} min |"
            )
    seeds = ", ".join(FLAGS.seeds)
    text = "\n".join(lines) + f"\n\nSeeds {seeds}; delta = 1 / (10 N), RDP accountant.\n"
    with open(FLAGS.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
