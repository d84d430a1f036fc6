"""Evaluation plots as PNG files (matplotlib's object API: no global pyplot state)."""

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def roc_curve(path: str, fpr: np.ndarray, tpr: np.ndarray, auroc: float, title: str) -> None:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def confusion_matrix(path: str, counts: np.ndarray, class_names: Sequence[str], title: str) -> None:
    fig = Figure(figsize=(2.5 + 0.8 * len(class_names), 2.2 + 0.8 * len(class_names)))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    for (row, col), n in np.ndenumerate(counts):
        color = "white" if n > counts.max() / 2 else "black"
        ax.text(col, row, str(n), ha="center", va="center", color=color)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def image_grid(path: str, rows: Sequence[np.ndarray]) -> np.ndarray:
    """Saves rows of images ([N, H, W, C] or volumes [N, D, H, W, C]: the middle slice) in [0, 1]
    as a grey grid, and returns the picture as an RGB uint8 array [H, W, 3] for TensorBoard."""
    rows = [np.asarray(r)[:, r.shape[1] // 2] if r.ndim == 5 else np.asarray(r) for r in rows]
    num = max(len(r) for r in rows)
    fig = Figure(figsize=(1.1 * num, 1.1 * len(rows)))
    canvas = FigureCanvasAgg(fig)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            ax = fig.add_subplot(len(rows), num, i * num + j + 1)
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def reliability_diagram(path: str, curves: dict, title: str = "calibration") -> None:
    """Observed fraction of positives against mean predicted probability per bin, one line per
    entry of `curves` ({name: ((mean_prob, observed, counts), ece)}, from
    `calibration.reliability`), with the examples per bin below."""
    fig = Figure(figsize=(4.5, 5.5))
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for name, ((mean_prob, observed, counts), ece) in curves.items():
        ax.plot(mean_prob, observed, "o-", ms=4, label=f"{name} (ECE {ece:.3f})")
        width = 1 / len(counts)
        hist.bar((np.arange(len(counts)) + 0.5) * width, counts, width, alpha=0.5, label=name)
    ax.set(ylabel="observed fraction of class 1", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    hist.set(xlabel="predicted probability of class 1", ylabel="examples", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def training_curves(path: str, lines: Sequence[dict], metric: str, best_step: int) -> None:
    """Training and validation loss, and the validation selection `metric`, against the step
    (from the lines of metrics.jsonl), with the best step marked."""
    fig = Figure(figsize=(9, 3.8))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(line["step"], line["loss"]) for line in lines
                  if line["split"] == split and "loss" in line]  # fmt: skip
        if points:
            loss_ax.plot(*zip(*points), style, ms=3, label=split)
    val = [(line["step"], line[metric]) for line in lines
           if line["split"] == "val" and metric in line]  # fmt: skip
    if val:
        metric_ax.plot(*zip(*val), "o-", ms=3, color="tab:orange")
    for ax in (loss_ax, metric_ax):
        ax.axvline(best_step, color="grey", ls=":", lw=1, label=f"best (step {best_step})")
        ax.set(xlabel="step")
    loss_ax.set(ylabel="loss", title="loss")
    loss_ax.legend()
    metric_ax.set(ylabel=f"val {metric}", title=f"validation {metric} (selection)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def attribution_overlay(
    path: str, images: np.ndarray, maps: np.ndarray, titles: Sequence[str], num_slices: int = 8
) -> None:
    """Inputs in grey (channel mean, each example scaled to its own range) with a non-negative
    attribution map in 'hot' on top (opacity rising with the map, scaled to each example's max).
    2D images [N, H, W, C], maps [N, H, W]: one column per example. Volumes [N, D, H, W, C],
    maps [N, D, H, W]: a row per example of `num_slices` evenly spaced axial slices."""
    images, maps = np.asarray(images, np.float32).mean(-1), np.asarray(maps, np.float32)
    volume = images.ndim == 4
    if not volume:  # a 2D image is a volume of one slice
        images, maps = images[:, None], maps[:, None]
    depths = np.unique(np.linspace(0, images.shape[1] - 1, num_slices).round().astype(int))
    rows, cols = (len(images), len(depths)) if volume else (1, len(images))
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows))
    for k, (n, d) in enumerate((n, d) for n in range(len(images)) for d in depths):
        ax = fig.add_subplot(rows, cols, k + 1)
        low, high = images[n].min(), images[n].max()
        scaled = maps[n, d] / max(float(maps[n].max()), 1e-12)
        ax.imshow(images[n, d], cmap="gray", vmin=low, vmax=max(high, low + 1e-6))
        ax.imshow(scaled, cmap="hot", vmin=0, vmax=1, alpha=np.clip(scaled, 0, 1) * 0.7)
        ax.set_title(titles[n] if d == depths[0] else f"slice {d}", fontsize=7)
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # two-line titles stay whole


def series_attribution(
    path: str, attributions: np.ndarray, variable_names: Sequence[str], title: str
) -> None:
    """Signed attributions [T, V] of one series as a (variable x time) heatmap, red positive and
    blue negative, centred at 0."""
    attributions = np.asarray(attributions, np.float32)
    limit = max(float(np.abs(attributions).max()), 1e-12)
    fig = Figure(figsize=(7, 1.2 + 0.18 * len(variable_names)))
    ax = fig.add_subplot()
    image = ax.imshow(
        attributions.T, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="none"
    )
    ax.set_yticks(range(len(variable_names)), variable_names, fontsize=6)
    ax.set(xlabel="time step", title=title)
    fig.colorbar(image, ax=ax, label="attribution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def variable_importance(
    path: str, importance: np.ndarray, variable_names: Sequence[str], title: str = ""
) -> None:
    """Horizontal bars of a non-negative importance per variable, largest at the top."""
    order = np.argsort(np.asarray(importance))
    fig = Figure(figsize=(5, 1.2 + 0.18 * len(variable_names)))
    ax = fig.add_subplot()
    ax.barh(range(len(order)), np.asarray(importance)[order], color="tab:red")
    ax.set_yticks(range(len(order)), [variable_names[k] for k in order], fontsize=6)
    ax.set(xlabel="mean |integrated gradients| over valid steps", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
