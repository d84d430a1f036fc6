"""report.md: the final summary of a run."""

import math
import os

import ml_collections
from scipy import special

from medjax.outputs import writers
from medjax.stats import bootstrap

EXPLANATION_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")
OPERATING_POINT_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def write(
    workdir: str,
    *,
    config: ml_collections.ConfigDict,
    description: str,
    split_sizes: dict[str, int],
    num_params: int,
    best_step: int,
    last_step: int,
    split: str,
    val_metrics: dict[str, float],
    split_metrics: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    binary: dict[str, float],
    binary_intervals: dict[str, tuple[float, float]],
    subgroup_rows: list[dict],
) -> None:
    """Writes `workdir/report.md`: data and splits, model and training, the metrics of the
    evaluated `split` with intervals, the operating point and calibration (`binary`, empty for
    tasks that are not binary), and the plots."""
    fitted_on = "fitted on val and applied unchanged to " + (
        "val itself (in-sample: optimistic)" if split == "val" else f"the {split} split"
    )
    lines = _data_and_model(config, description, split_sizes, num_params, best_step, last_step,
                            split)  # fmt: skip
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


def _data_and_model(config, description, split_sizes, num_params, best_step, last_step, split):
    trainer = config.trainer
    sizes = ", ".join(f"{name} {size:,}" for name, size in split_sizes.items())
    return [
        "# medjax report",
        "",
        "## Data and model",
        "",
        f"- data and model: {description}",
        f"- examples per split: {sizes}",
        f"- parameters: {num_params:,}",
        f"- trained {last_step} of {trainer.num_train_steps} steps, batch {trainer.batch_size}, "
        f"{config.optimizer.name} at learning rate {config.optimizer.learning_rate:g}, "
        f"seed {config.seed}",
        f"- evaluated: the checkpoint of step {best_step}, the best by validation "
        f"{trainer.selection_metric} ({trainer.selection_mode}), on the {split} split"
        + ("; the test split was used for nothing else" if split == "test" else ""),
        "",
    ]


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
    return [
        "",
        "## Operating point",
        "",
        f"Threshold at {rule} on the val split, {shown}, {fitted_on}; positive iff the score is "
        "at or above it.",
        "",
        *_table(["metric", split, "95% interval"], rows),
        "",
        f"PhysioNet 2012's score, min(sensitivity, PPV) at the threshold that maximises it on "
        f"val: {binary['min_se_ppv']:.4f}.",
    ]


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
