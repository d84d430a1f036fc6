"""Compare two runs on the same test set: paired bootstrap intervals and DeLong's test.

  python experiments/compare.py --a=runs/ct_a --b=runs/ct_b [--split=test]

Reads `predictions/<split>.csv` of both workdirs (binary tasks: two `prob_*` columns, the second
the positive class), matches the examples by id, and prints, for auroc, auprc, accuracy,
sensitivity and specificity (threshold 0.5), each run's value, the difference a - b and its 95%
interval from a stratified bootstrap that resamples the same examples for both runs (1000
resamples, seed 0); then DeLong's test of equal AUROC.
"""

import csv
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medjax.stats import bootstrap, significance  # noqa: E402

flags.DEFINE_string("a", None, "Workdir of the first run.")
flags.DEFINE_string("b", None, "Workdir of the second run.")
flags.DEFINE_string("split", "test", "Which predictions/<split>.csv to compare.")

THRESHOLD = 0.5


def read_predictions(workdir: str, split: str) -> dict[str, tuple[int, float]]:
    """{id: (label, positive-class probability)} from a binary run's predictions CSV."""
    path = os.path.join(workdir, "predictions", f"{split}.csv")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found; run the workdir to the end first")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        probs = [c for c in reader.fieldnames or () if c.startswith("prob_")]
        if len(probs) != 2 or "label" not in (reader.fieldnames or ()):
            raise ValueError(f"{path} is not a binary run's predictions (label, two prob_ columns)")
        return {row["id"]: (int(row["label"]), float(row[probs[1]])) for row in reader}


def compare(workdir_a: str, workdir_b: str, split: str = "test") -> dict:
    """The comparison as a dict: `metrics` {name: (a, b, difference, (low, high))}, `delong`."""
    a, b = read_predictions(workdir_a, split), read_predictions(workdir_b, split)
    if a.keys() != b.keys():
        raise ValueError(
            f"the runs scored different examples ({len(a.keys() ^ b.keys())} ids in one only); "
            "compare runs on the same data and split"
        )
    ids = sorted(a)
    labels = np.array([a[i][0] for i in ids])
    if any(a[i][0] != b[i][0] for i in ids):
        raise ValueError("the runs disagree on some labels; compare runs on the same data")
    scores_a, scores_b = (np.array([run[i][1] for i in ids]) for run in (a, b))
    ones = np.ones((1, labels.size))
    value_a, value_b = (
        bootstrap.weighted_metrics(labels, s, ones, threshold=THRESHOLD)
        for s in (scores_a, scores_b)
    )
    differences = bootstrap.paired_intervals(labels, scores_a, scores_b, threshold=THRESHOLD)
    return {
        "num_examples": labels.size,
        "metrics": {
            name: (
                float(value_a[name][0]),
                float(value_b[name][0]),
                float(value_a[name][0] - value_b[name][0]),
                differences[name],
            )
            for name in value_a
        },
        "delong": significance.delong_test(labels, scores_a, scores_b),
    }


def main(argv):
    del argv
    a, b, split = flags.FLAGS.a, flags.FLAGS.b, flags.FLAGS.split
    result = compare(a, b, split)
    print(f"{result['num_examples']} examples of the {split} split; a = {a}, b = {b}\n")
    print("| metric | a | b | a - b | 95% interval of a - b |\n|---|---|---|---|---|")
    for name, (value_a, value_b, difference, (low, high)) in result["metrics"].items():
        interval = f"[{low:+.4f}, {high:+.4f}]"
        print(f"| {name} | {value_a:.4f} | {value_b:.4f} | {difference:+.4f} | {interval} |")
    d = result["delong"]
    print(
        f"\nDeLong: AUROC difference {d['difference']:+.4f} (se {d['se']:.4f}), "
        f"z = {d['z']:.2f}, two-sided p = {d['p_value']:.3g}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["a", "b"])
    app.run(main)
