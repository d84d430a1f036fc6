"""Test AUROC against epsilon: DP-SGD at epsilon 1, 3, 8 and without privacy.

  python experiments/privacy/run.py --data_dir=../shared/data/medmnist \
      --datasets=synthetic_ct,breastmnist --epsilons=1,3,8,none

Each (dataset, epsilon, seed) is one `python -m medjax.main` run in its own workdir under
--workdir_root/<dataset>_eps<epsilon>, run by experiments/sweep.py's functions (a finished run is
re-read, not retrained; an unfinished one resumes): synthetic_ct with
configs/ct_cnn_dp.py, a MedMNIST name with configs/medmnist.py:NAME, both with group norm;
`none` is the same config with privacy.enabled=false. Every private run solves its noise for its
planned steps (privacy.target_epsilon) at delta = 1 / (10 N); the table reports the epsilon of
its privacy.json and the test AUROC of its best (by validation AUROC) checkpoint. Extra config
overrides go after `--`.
"""

import json
import os
import runpy

from absl import app, flags

flags.DEFINE_string("data_dir", "", "Folder holding the MedMNIST .npz files.")
flags.DEFINE_list("datasets", ["synthetic_ct", "breastmnist"], "synthetic_ct or MedMNIST names.")
flags.DEFINE_list("epsilons", ["1", "3", "8", "none"], "Target epsilons; none: no privacy.")
flags.DEFINE_list("seeds", ["0"], "Values of config.seed.")
flags.DEFINE_string("workdir_root", "runs/privacy", "One workdir per run in here.")
flags.DEFINE_string("out", "experiments/privacy/results.md", "The results table (markdown).")
FLAGS = flags.FLAGS


def config_arguments(dataset: str, epsilon: str) -> tuple[str, list[str]]:
    """(--config, its overrides) of a dataset at a target epsilon ('none': no privacy)."""
    if dataset == "synthetic_ct":
        config, extra = "configs/ct_cnn_dp.py", []
    else:
        config = f"configs/medmnist.py:{dataset}"
        extra = [
            f"--config.data.dir={FLAGS.data_dir}",
            "--config.model.norm=group",
            "--config.privacy.microbatch_size=16",
            "--config.optimizer.grad_clip_norm=0",
        ]
    if epsilon == "none":
        return config, [*extra, "--config.privacy.enabled=false"]
    return config, [*extra, "--config.privacy.enabled=true",
                    f"--config.privacy.target_epsilon={epsilon}"]  # fmt: skip


def epsilon_spent(workdir: str) -> float:
    with open(os.path.join(workdir, "privacy.json")) as f:
        return json.load(f)["epsilon"]


def main(argv):
    overrides = argv[1:]
    lines = [
        "| dataset | target epsilon | epsilon spent | test AUROC | wall time per run |",
        "|---|---|---|---|---|",
    ]
    sweep = runpy.run_path(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sweep.py")
    )["sweep"]
    for dataset in FLAGS.datasets:
        for epsilon in FLAGS.epsilons:
            config, extra = config_arguments(dataset, epsilon)
            out = os.path.join(FLAGS.workdir_root, f"{dataset}_eps{epsilon}")
            runs, (row,) = sweep(config, [], FLAGS.seeds, out, [*extra, *overrides])
            spread = f" ± {row['auroc_sd']:.3f}" if len(runs) > 1 else ""
            spent = "-" if epsilon == "none" else max(epsilon_spent(r["workdir"]) for r in runs)
            lines.append(
                f"| {dataset} | {epsilon} | {spent if spent == '-' else f'{spent:.3f}'} | "
                f"{row['auroc_mean']:.3f}{spread} | {row['wall_time_s_mean'] / 60:.1f} min |"
            )
    seeds = ", ".join(FLAGS.seeds)
    text = "\n".join(lines) + f"\n\nSeeds {seeds}; delta = 1 / (10 N), RDP accountant.\n"
    with open(FLAGS.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
