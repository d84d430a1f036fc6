"""report.md: the final summary of a run."""

import json
import math
import os
from typing import NamedTuple

import ml_collections
from scipy import special

from medjax.outputs import writers
from medjax.stats import bootstrap

EXPLANATION_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")
OPERATING_POINT_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


class Checkpoint(NamedTuple):
    """A best checkpoint evaluated: a run's, or one of an ensemble's members'."""

    workdir: str
    config: ml_collections.ConfigDict  # its run's
    best_step: int
    last_step: int  # the step training ended at
    num_params: int


def write(
    workdir: str,
    *,
    config: ml_collections.ConfigDict,
    description: str,
    split_sizes: dict[str, int],
    checkpoints: list[Checkpoint],
    split: str,
    val_metrics: dict[str, float],
    split_metrics: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    binary: dict[str, float],
    binary_intervals: dict[str, tuple[float, float]],
    subgroup_rows: list[dict],
) -> None:
    """Writes `workdir/report.md`: data and splits, model and training (of the best checkpoint
    of a run, or of each member of an ensemble: `checkpoints`), the metrics of the evaluated
    `split` with intervals, the operating point and calibration (`binary`, empty for
    tasks that are not binary), and the plots."""
    fitted_on = "fitted on val and applied unchanged to " + (
        "val itself (in-sample: optimistic)" if split == "val" else f"the {split} split"
    )
    lines = _data_and_model(description, split_sizes, checkpoints, split)
    lines += [
        *_images(workdir, ["curves.png"]),
        "## Metrics",
        "",
        *_table(
            ["split", *split_metrics],
            [
                [name, *(values[k] for k in split_metrics)]
                for name, values in (("val", val_metrics), (split, split_metrics))
            ],
        ),  # fmt: skip
    ]
    if intervals:
        lines += _intervals(split, split_metrics, intervals)
    if binary:
        lines += _operating_point(config, split, binary, binary_intervals, fitted_on)
        lines += _calibration(split, split_metrics, intervals, binary, binary_intervals, fitted_on)
        lines += _images(workdir, ["calibration.png"])
    if subgroup_rows:
        lines += _subgroups(split, subgroup_rows)
    plots = sorted(p for p in os.listdir(os.path.join(workdir, "plots")) if p.endswith(".png"))
    explained = [p for p in plots if p.startswith(EXPLANATION_METHODS)]
    if explained:
        lines += ["## Explanations", "", *_images(workdir, explained)]
    shown = {"curves.png", "calibration.png", *explained}
    lines += [f"## Plots ({split} split)", "", *_images(workdir, sorted(set(plots) - shown))]
    writers.write_atomically(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")


def _data_and_model(description, split_sizes, checkpoints, split):
    sizes = ", ".join(f"{name} {size:,}" for name, size in split_sizes.items())
    untouched = "; the test split was used for nothing else" if split == "test" else ""
    lines = [
        "# medjax report",
        "",
        "## Data and model",
        "",
        f"- data and model: {description}",
        f"- examples per split: {sizes}",
    ]
    if len(checkpoints) == 1:
        (checkpoint,) = checkpoints
        return lines + [
            f"- parameters: {checkpoint.num_params:,}",
            f"- {_trained(checkpoint)}",
            *_initialised(checkpoint),
            f"- evaluated: {_best(checkpoint)}, on the {split} split{untouched}",
            "",
        ]
    return lines + [
        f"- parameters: {checkpoints[0].num_params:,} per member",
        f"- evaluated: an ensemble of {len(checkpoints)} members, the mean of their logits per "
        f"example, on the {split} split{untouched}; the operating point and calibration are the "
        "ensemble's own, fitted on its val outputs",
        *(f"- member `{c.workdir}`: {_trained(c)}; {_best(c)}" for c in checkpoints),
        "",
    ]


def _trained(checkpoint: Checkpoint) -> str:
    config = checkpoint.config
    trainer, optimizer = config.trainer, config.optimizer
    return (
        f"trained {checkpoint.last_step} of {trainer.num_train_steps} steps, batch "
        f"{trainer.batch_size}, {optimizer.name} at learning rate {optimizer.learning_rate:g}, "
        f"seed {config.seed}"
    )


def _initialised(checkpoint: Checkpoint) -> list[str]:
    """The line saying which weights training started from (init.json), and what was frozen."""
    path = os.path.join(checkpoint.workdir, "init.json")
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines.append(f"- {json.load(f)['description']}")
    freeze = checkpoint.config.get("init", {}).get("freeze")  # None in runs from before init.*
    if freeze:
        lines.append(f"- frozen (not trained): {freeze}")
    return lines


def _best(checkpoint: Checkpoint) -> str:
    trainer = checkpoint.config.trainer
    return (
        f"the checkpoint of step {checkpoint.best_step}, the best by validation "
        f"{trainer.selection_metric} ({trainer.selection_mode})"
    )


def _intervals(split, split_metrics, intervals) -> list[str]:
    return [
        "",
        f"## {split.capitalize()} metrics with 95% intervals",
        "",
        f"Bootstrap of the examples, {bootstrap.NUM_RESAMPLES} resamples, percentile "
        "intervals; each class is resampled apart (stratified), but multi-label rows are "
        "resampled whole.",
        "",
        *_table(
            ["metric", split, "95% interval"],
            [[k, split_metrics[k], _interval(v)] for k, v in intervals.items()],
        ),
    ]


def _subgroups(split, subgroup_rows) -> list[str]:
    header = ["grouping", "group", "n", "positives", "auroc", "95% interval"]
    rows = [
        [
            *(r[k] for k in header[:5]),
            _interval((r["auroc_low"], r["auroc_high"])),
            *(r[k] for k in OPERATING_POINT_METRICS[:4]),
        ]
        for r in subgroup_rows
    ]
    return [
        "## Subgroups",
        "",
        f"AUROC with its 95% interval, and the operating point's metrics, within groups of "
        f"the {split} split (also in subgroups.csv); small groups have wide intervals.",
        "",
        *_table([*header, *OPERATING_POINT_METRICS[:4]], rows),
        "",
    ]


def _operating_point(config, split, binary, binary_intervals, fitted_on) -> list[str]:
    evaluation = config.evaluation
    if evaluation.operating_point == "youden":
        rule = "the maximum of Youden's J (sensitivity + specificity - 1)"
    elif evaluation.operating_point == "min_se_ppv":
        rule = "the maximum of min(sensitivity, PPV)"
    else:
        rule = f"the highest threshold with sensitivity >= {evaluation.target_sensitivity:g}"
    threshold = binary["operating_threshold"]
    shown = f"score {threshold:.4g}"
    if "temperature" in binary:  # log-odds: the threshold as the model's probability
        shown = f"probability {special.expit(threshold):.4g} (log-odds {threshold:.4g})"
    rows = [[k, binary[f"operating_{k}"], _interval(binary_intervals.get(f"operating_{k}"))]
            for k in OPERATING_POINT_METRICS]  # fmt: skip
    lines = [
        "",
        "## Operating point",
        "",
        f"Threshold at {rule} on the val split, {shown}, {fitted_on}; positive iff the score is "
        "at or above it.",
        "",
        *_table(["metric", split, "95% interval"], rows),
    ]
    if "min_se_ppv" in binary:  # the task's final_metrics (medjax.tasks.scoring.min_se_ppv)
        lines += [
            "",
            f"PhysioNet 2012's score, min(sensitivity, PPV) at the threshold that maximises it "
            f"on val: {binary['min_se_ppv']:.4f}.",
        ]
    return lines


def _calibration(split, split_metrics, intervals, binary, binary_intervals, fitted_on):
    if "temperature" in binary:
        how = f"temperature scaling, T = {binary['temperature']:.4g}"
        model = (split_metrics[k] for k in ("ece", "brier"))
        rows = [["model", *model, *(_interval(intervals.get(k)) for k in ("ece", "brier"))]]
    else:
        how = (
            f"Platt scaling of the anomaly score, slope {binary['platt_scale']:.4g}, offset "
            f"{binary['platt_offset']:.4g}"
        )
        rows = []
    recalibrated = (binary[f"calibrated_{k}"] for k in ("ece", "brier"))
    bounds = (_interval(binary_intervals.get(f"calibrated_{k}")) for k in ("ece", "brier"))
    rows.append(["recalibrated", *recalibrated, *bounds])
    return [
        "",
        "## Calibration",
        "",
        f"Top-label ECE (15 equal-width bins) and Brier score on the {split} split; "
        f"recalibration by {how}, {fitted_on}.",
        "",
        *_table(["probabilities", "ECE", "Brier", "ECE 95% interval", "Brier 95% interval"], rows),
        "",
    ]


def _interval(bounds) -> str:
    if bounds is None or math.isnan(bounds[0]):
        return "n/a"
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]


def _images(workdir: str, names: list[str]) -> list[str]:
    """Markdown images of the plots that exist, then a blank line."""
    found = [n for n in names if os.path.exists(os.path.join(workdir, "plots", n))]
    return [*(f"![{n[:-4]}](plots/{n})" for n in found), ""] if found else []
