"""Metric writers: metrics.jsonl (the workdir contract) beside TensorBoard and the log."""

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence

import jax
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per (step, split) to `metrics.jsonl`.

    Scalars are named `<split>/<metric>` (as in TensorBoard); a line holds `step`, `split`,
    `time` (seconds since the run started, resumptions included) and the metrics.
    """

    def __init__(self, path: str, start_time: float):
        self._path = path
        self._start_time = start_time

    def write_scalars(self, step: int, scalars: Mapping[str, float]):
        lines: dict[str, dict] = {}
        for name, value in scalars.items():
            split, _, metric = name.rpartition("/")
            line = lines.setdefault(
                split or "train", {"step": int(step), "split": split or "train"}
            )
            line["time"] = round(time.time() - self._start_time, 3)
            line[metric] = float(value)
        with open(self._path, "a") as f:
            for line in lines.values():
                f.write(json.dumps(line) + "\n")

    # Only scalars belong in metrics.jsonl; the other kinds go to TensorBoard.
    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def write_atomically(path: str, text: str) -> None:
    """Writes a whole file or, on a crash, leaves the previous one: never half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_table(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Writes a CSV file atomically (`write_atomically`)."""
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(header)
    out.writerows(rows)
    write_atomically(path, text.getvalue())


def keep_metrics_up_to(path: str, step: int) -> float:
    """On resume: drops lines after `step` and earlier test lines from metrics.jsonl.

    Returns the `time` of the last kept line (0 if none), so times continue across resumes.
    """
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        text = f.read()
    if not text.endswith("\n"):  # a line cut short by a crash
        text = text[: text.rfind("\n") + 1]
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    kept = [line for line in lines if line["step"] <= step and line["split"] != "test"]
    write_atomically(path, "".join(json.dumps(line) + "\n" for line in kept))
    return kept[-1]["time"] if kept else 0.0


def create_writer(workdir: str, start_time: float) -> metric_writers.MetricWriter:
    """Process 0 writes metrics.jsonl, TensorBoard events and log lines; others only log."""
    if jax.process_index() > 0:
        return metric_writers.LoggingWriter()
    return metric_writers.MultiWriter(
        [
            metric_writers.create_default_writer(workdir, asynchronous=False),
            JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_time),
        ]
    )
