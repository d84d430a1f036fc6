"""Every combination of a grid of config values over several seeds, and their results table.

  python experiments/sweep.py --config=configs/medmnist.py:breastmnist \
      --grid=model.width=0.5,1.0 [--grid=optimizer.learning_rate=1e-3,3e-3] --seeds=0,1,2 \
      --out=runs/sweep_breast [-- --config.data.dir=DIR ...]

Each (combination, seed) is one `python -m medjax.main` run in its own workdir,
`<out>/<key>=<value>[,...]_seed<s>`: a rerun skips the finished runs (their test line is in
metrics.jsonl) and resumes the unfinished ones from their checkpoints; it refuses a workdir that
another command started (`<out>/sweep_commands.json` records them) or that it did not start.
Arguments after `--` go to every run: config overrides that set no --grid or --seeds key (each
key once), and medjax.main's flags but --config, --workdir and --mode. Then `<out>/results.md`
and `<out>/results.csv` hold one row per combination: the mean and sample standard deviation
(ddof=1) over the seeds of every test metric, the mean of each metric's bootstrap interval
bounds, and the mean wall time per run (of the start that finished it); results.md also lists
the exact command of each run.
"""

import csv
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from medjax.outputs import writers

FLAGS = flags.FLAGS

WALL_TIME = "sweep_wall_time_s.json"  # in each run's workdir, once it has finished
COMMANDS = "sweep_commands.json"  # in --out
# medjax.main's flags that the sweep sets for each run (--mode: train), or that would hide
# arguments from its checks (--flagfile), refused after `--`.
SET_BY_SWEEP = ("config", "workdir", "mode", "members", "flagfile")
# The metrics of results.md, those a test line has (results.csv has every one).
TABLE_METRICS = ("auroc", "accuracy", "auprc", "min_se_ppv", "nelbo", "anomaly_auroc")


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """[(key, values)] of `KEY=V1,V2` strings, split at the commas outside brackets and quotes
    (a tuple value, `(32,32)`, is one, as ml_collections reads it); ValueError on a malformed
    or repeated key."""
    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        split = _split_values(values)
        if not key or not values or split is None or not all(split):
            raise ValueError(
                f"--grid={item!r}: expected KEY=V1,V2,... (e.g. model.width=0.5,1.0, or "
                "data.image_shape=(32,32),(24,24): a value's brackets and quotes closed)"
            )
        if key in dict(axes):
            raise ValueError(f"--grid names {key} twice; give all its values in one --grid")
        axes.append((key, split))
    return axes


def _split_values(values: str) -> list[str] | None:
    """`values` split at its commas outside brackets and quotes; None if one is left open."""
    parts, depth, quote, start = [], 0, "", 0
    for k, char in enumerate(values):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif char == "," and depth == 0:
            parts.append(values[start:k])
            start = k + 1
    return None if depth or quote else [*parts, values[start:]]


def check_overrides(config: str, axes, seeds, extra: list[str]) -> None:
    """ValueError unless each row of the table will describe what ran: a seed or more; each
    seed, grid value and argument after `--` parses as medjax.main would parse it (a key of the
    config, a value of its type); each key is set once (a --grid or --seeds key not again after
    `--`); the values of each axis differ; and the sweep's own flags are not after `--`."""
    if not seeds:
        raise ValueError("--seeds is empty: give one or more, e.g. --seeds=0,1,2")
    named = [(arg, arg.lstrip("-").partition("=")[0]) for arg in extra if arg.startswith("-")]
    names = [name for _, name in named]
    for arg, name in named:
        if name in SET_BY_SWEEP:
            raise ValueError(
                f"{arg} after --: the sweep sets each run's --config, --workdir (under --out) and "
                "--mode=train; give --config and --out to the sweep, and after -- only config "
                "overrides (--config.KEY=VALUE) and medjax.main's other flags"
            )
    axes = [("seed", list(seeds)), *axes]
    for key, _ in axes:
        if f"config.{key}" in names:
            where = "--seeds" if key == "seed" else f"--grid={key}=..."
            raise ValueError(
                f"--config.{key} after -- sets a key that {where} sets; give its values in "
                f"{where} only"
            )
    for k, (arg, name) in enumerate(named):
        if name.startswith("config.") and name in names[:k]:
            raise ValueError(
                f"{named[names.index(name)][0]} and {arg} after -- set the same key; give each "
                "key once (a tuple as one value, e.g. --config.data.image_shape='(32, 32)')"
            )
    first = {key: values[0] for key, values in axes}
    for key, values in axes:
        parsed = []
        for value in values:
            grid = [f"--config.{k}={value if k == key else v}" for k, v in first.items()]
            loaded = _parse_config([f"--config={config}", *grid, *extra])
            parsed.append(config_path.get_value(key, loaded))
            if parsed[-1] in parsed[:-1]:
                raise ValueError(
                    f"{'--seeds' if key == 'seed' else '--grid'}: {key}="
                    f"{values[parsed.index(parsed[-1])]} and {key}={value} are the same value; "
                    "give each value once"
                )


def _parse_config(argv: list[str]):
    """The config of `argv` with its overrides, as medjax.main loads it (ml_collections reads
    them from sys.argv; the config file's imports need the working directory, the repository
    root, on sys.path); medjax.main's other flags are left to it."""
    holder = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=holder, lock_config=True)
    saved = sys.argv, sys.path
    sys.argv, sys.path = ["sweep", *argv], [os.getcwd(), *sys.path]
    try:
        holder(sys.argv, known_only=True)
        return holder.config
    except (AttributeError, KeyError) as e:  # ml_collections: a key the config does not have
        name = re.findall(r"\w+", str(e))[0]
        flag = next(arg for arg in argv[1:] if re.search(rf"\b{name}\b", arg.partition("=")[0]))
        guess = re.search(r'Did you mean "(\w+)"', str(e))
        raise ValueError(
            f"{flag}: the config has no key {name}"
            + (f" (did you mean {guess[1]}?)" if guess else "")
            + "; the keys are in medjax/settings/defaults.py"
        ) from None
    except (flags.Error, OSError, TypeError, ValueError) as e:
        raise ValueError(f"{e}") from None
    finally:
        sys.argv, sys.path = saved


def planned_runs(config: str, axes, seeds, out: str, extra: list[str]) -> list[dict]:
    """One dict per (combination, seed): name, combination, seed, workdir and command (run with
    this interpreter)."""
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        combination = dict(zip((k for k, _ in axes), values))
        name = ",".join(f"{k}={v}" for k, v in combination.items()) or "config"
        for seed in seeds:
            workdir = os.path.join(out, f"{name}_seed{seed}")
            command = ["python", "-m", "medjax.main", f"--config={config}",
                       f"--workdir={workdir}", f"--config.seed={seed}",
                       *(f"--config.{k}={v}" for k, v in combination.items()), *extra]  # fmt: skip
            runs.append(dict(name=name, combination=combination, seed=seed, workdir=workdir,
                             command=command))  # fmt: skip
    return runs


def record_commands(out: str, runs: list[dict]) -> None:
    """Adds the runs' commands to `<out>/sweep_commands.json` ({workdir: command}); ValueError
    if a workdir there was started by another command (other arguments after `--`, say), or
    exists but is not recorded (another program's)."""
    path = os.path.join(out, COMMANDS)
    recorded = {}
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
    for planned in runs:
        if planned["workdir"] not in recorded and os.path.exists(planned["workdir"]):
            raise ValueError(
                f"{planned['workdir']} exists but {path} does not record it: this sweep did not "
                "start it; move it away, or give the sweep another --out"
            )
        previous = recorded.setdefault(planned["workdir"], planned["command"])
        if previous != planned["command"]:
            raise ValueError(
                f"{planned['workdir']} holds a run of another command ({shlex.join(previous)}); "
                "rerun the sweep with the same arguments, or give it another --out"
            )
    os.makedirs(out, exist_ok=True)
    writers.write_atomically(path, json.dumps(recorded, indent=1))


def test_line(workdir: str) -> dict | None:
    """The last test line of a workdir's metrics.jsonl, or None (not finished)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        tests = [line for line in map(json.loads, f) if line["split"] == "test"]
    return tests[-1] if tests else None


def run(planned: dict, execute=subprocess.run) -> tuple[dict, float]:
    """(test line, wall time in s) of a run, training or resuming it unless it has finished."""
    timing = os.path.join(planned["workdir"], WALL_TIME)
    line = test_line(planned["workdir"])
    if line is None or not os.path.exists(timing):
        start = time.time()
        try:
            execute([sys.executable, *planned["command"][1:]], check=True)
        except subprocess.CalledProcessError as e:
            raise ValueError(
                f"{shlex.join(planned['command'])} exited with status {e.returncode}; fix its "
                "error above and rerun the sweep: finished runs are kept, this one resumes"
            ) from None
        with open(timing, "w") as f:
            json.dump(time.time() - start, f)
        line = test_line(planned["workdir"])
    with open(timing) as f:
        return line, json.load(f)


def sweep(config: str, axes, seeds, out: str, extra: list[str]) -> tuple[list, list]:
    """(planned runs, summary rows): records the commands, runs what has not finished and
    summarises; ValueError (a clear message), before anything runs, on a key or value the config
    refuses or no seeds, and on another command's workdir; after, on a failed run."""
    check_overrides(config, axes, seeds, extra)
    runs = planned_runs(config, axes, seeds, out, extra)
    record_commands(out, runs)
    return runs, summarise(runs, [run(planned) for planned in runs])


def summarise(runs: list[dict], results: list[tuple[dict, float]]) -> list[dict]:
    """One row per combination: `name`, `seeds`, mean/sd of each test metric, mean of its
    interval bounds, mean wall time, and the commands."""
    rows = {}
    for planned, result in zip(runs, results):
        rows.setdefault(planned["name"], []).append((planned, *result))
    summary = []
    for name, members in rows.items():
        tests = [test for _, test, _ in members]
        metrics = [k for k, v in tests[0].items() if isinstance(v, float) and k != "time"]
        row = {"name": name, "seeds": [p["seed"] for p, _, _ in members]}
        for metric in metrics:
            values = np.array([t[metric] for t in tests], np.float64)
            row[f"{metric}_mean"] = float(values.mean())
            if not metric.endswith(("_low", "_high")):  # an interval's bounds: their mean only
                row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        row["wall_time_s_mean"] = float(np.mean([seconds for _, _, seconds in members]))
        row["commands"] = [shlex.join(p["command"]) for p, _, _ in members]
        summary.append(row)
    return summary


def write_results(out: str, summary: list[dict], metrics: list[str]) -> None:
    """results.csv (every column) and results.md (`metrics`: mean ± sd and interval)."""
    columns = [k for k in summary[0] if k not in ("name", "seeds", "commands")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["combination", "seeds", *columns, "commands"])
    for row in summary:
        writer.writerow([row["name"], " ".join(row["seeds"]), *(row.get(c, "") for c in columns),
                         " ; ".join(row["commands"])])  # fmt: skip
    lines = [
        "| combination | seeds | " + " | ".join(metrics) + " | wall time per run |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for row in summary:
        cells = []
        for m in metrics:
            cell = f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_sd']:.4f}"
            if f"{m}_low_mean" in row:
                cell += f" ({row[f'{m}_low_mean']:.4f}-{row[f'{m}_high_mean']:.4f})"
            cells.append(cell)
        minutes = row["wall_time_s_mean"] / 60
        lines.append(
            f"| {row['name']} | {' '.join(row['seeds'])} | {' | '.join(cells)} | "
            f"{minutes:.1f} min |"
        )
    note = "Mean ± sd over the seeds (interval: the mean of the seeds' 95% bootstrap bounds)."
    lines += ["", note, "", "Commands:", "", "```bash"]
    lines += [command for row in summary for command in row["commands"]] + ["```"]
    writers.write_atomically(os.path.join(out, "results.csv"), buffer.getvalue())
    writers.write_atomically(os.path.join(out, "results.md"), "\n".join(lines) + "\n")


def main(argv):
    extra = argv[1:]
    try:
        _, summary = sweep(FLAGS.config, parse_grid(FLAGS.grid), FLAGS.seeds, FLAGS.out, extra)
    except ValueError as e:
        sys.exit(f"error: {e}")
    metrics = [m for m in TABLE_METRICS if f"{m}_mean" in summary[0]]
    write_results(FLAGS.out, summary, metrics)
    with open(os.path.join(FLAGS.out, "results.md")) as f:
        print(f.read())


if __name__ == "__main__":  # flags only here: other scripts and tests import the functions
    flags.DEFINE_string("config", None, "The config, as medjax.main's --config (path[:arg]).")
    flags.DEFINE_multi_string(
        "grid", [], "KEY=V1,V2,...: one config key's values (a tuple is one: (32,32)); repeatable."
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Values of config.seed.")
    flags.DEFINE_string("out", None, "Folder for the runs' workdirs and the results.")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
