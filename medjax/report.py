"""report.md: the final summary of a run."""

import os

import ml_collections

from medjax import bootstrap, writers


def write(
    workdir: str,
    *,
    config: ml_collections.ConfigDict,
    description: str,
    num_params: int,
    best_step: int,
    last_step: int,
    val_metrics: dict[str, float],
    test_metrics: dict[str, float],
    test_intervals: dict[str, tuple[float, float]],
) -> None:
    """Writes `workdir/report.md`: the run, the val and test metrics, and the plots."""
    trainer = config.trainer
    names = list(test_metrics)
    lines = [
        "# medjax report",
        "",
        f"- data and model: {description}",
        f"- parameters: {num_params:,}",
        f"- trained {last_step} of {trainer.num_train_steps} steps, batch {trainer.batch_size}, "
        f"{config.optimizer.name} at learning rate {config.optimizer.learning_rate:g}, "
        f"seed {config.seed}",
        f"- evaluated: the checkpoint of step {best_step}, the best by validation "
        f"{trainer.selection_metric} ({trainer.selection_mode}); the test split was used for "
        "nothing else",
        "",
        "| split | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for split, values in (("val", val_metrics), ("test", test_metrics)):
        lines.append(f"| {split} | " + " | ".join(f"{values[k]:.4f}" for k in names) + " |")
    if test_intervals:
        lines += [
            "",
            "## Test metrics with 95% intervals",
            "",
            f"Stratified bootstrap (classes resampled apart), {bootstrap.NUM_RESAMPLES} "
            "resamples, percentile intervals.",
            "",
            "| metric | test | 95% interval |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {test_metrics[k]:.4f} | [{low:.4f}, {high:.4f}] |"
            for k, (low, high) in test_intervals.items()
        ]
    lines += ["", "## Plots (test split)", ""]
    plots = sorted(p for p in os.listdir(os.path.join(workdir, "plots")) if p.endswith(".png"))
    lines += [f"![{p[:-4]}](plots/{p})" for p in plots]
    writers.write_atomically(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
