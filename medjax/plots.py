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
