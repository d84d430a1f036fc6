"""Evaluation plots as PNG files (matplotlib's object API: no global pyplot state)."""

from collections.abc import Sequence

import numpy as np
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
