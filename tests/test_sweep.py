"""experiments/sweep.py: the grid, skipping and resuming, the summary, the refusals."""

import csv
import json
import os
import runpy
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sweep = runpy.run_path(os.path.join(REPO, "experiments", "sweep.py"))


def auroc_of(command):  # a made-up result that depends on the width and the seed
    options = dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--"))
    return float(options["config.model.width"]) / 2 + int(options["config.seed"]) / 100


def fake_execute(calls, finish=True):
    """Stands in for subprocess.run of medjax.main: writes the workdir's metrics.jsonl."""

    def execute(command, check):
        assert check and command[1:3] == ["-m", "medjax.main"]
        calls.append(command)
        workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
        os.makedirs(workdir, exist_ok=True)
        auroc = auroc_of(command)
        lines = [{"split": "val", "step": 5, "auroc": 0.5}]
        if finish:
            lines.append({"split": "test", "step": 5, "time": 1e9, "auroc": auroc,
                          "auroc_low": auroc - 0.1, "auroc_high": auroc + 0.1})  # fmt: skip
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)

    return execute


def test_grid_parsing():
    assert sweep["parse_grid"](["model.width=0.5,1.0", "seed_x=a"]) == [
        ("model.width", ["0.5", "1.0"]),
        ("seed_x", ["a"]),
    ]
    # A tuple, a list or a quoted string is one value, as ml_collections reads it.
    assert sweep["parse_grid"](["data.image_shape=(32,32),(24,24)", "a=[1,(2,3)],'x,y',z"]) == [
        ("data.image_shape", ["(32,32)", "(24,24)"]),
        ("a", ["[1,(2,3)]", "'x,y'", "z"]),
    ]
    for bad in (["model.width"], ["model.width=0.5,"], ["=1"], ["a=1", "a=2"], ["a=(1,2"],
                ["a=1),(2"], ["a='1,2"]):  # fmt: skip
        with pytest.raises(ValueError, match="--grid"):
            sweep["parse_grid"](bad)


def test_runs_every_combination_once_and_summarises_over_seeds(tmp_path):
    axes = sweep["parse_grid"](["model.width=0.5,1.0", "model.norm=batch,group"])
    out = str(tmp_path)
    runs = sweep["planned_runs"]("configs/x.py", axes, ["0", "1", "2"], out, ["--config.a=1"])
    assert len(runs) == 12 and len({r["workdir"] for r in runs}) == 12
    first = runs[0]
    assert first["command"] == [
        "python", "-m", "medjax.main", "--config=configs/x.py",
        f"--workdir={out}/model.width=0.5,model.norm=batch_seed0", "--config.seed=0",
        "--config.model.width=0.5", "--config.model.norm=batch", "--config.a=1",
    ]  # fmt: skip
    sweep["record_commands"](out, runs)
    calls = []
    # One run started before and did not finish: it runs again; two finished ones do not.
    fake_execute([], finish=False)(["python", *first["command"][1:]], check=True)
    for done in runs[1:3]:
        fake_execute([])(["python", *done["command"][1:]], check=True)
        with open(os.path.join(done["workdir"], sweep["WALL_TIME"]), "w") as f:
            json.dump(60.0, f)
    results = [sweep["run"](r, fake_execute(calls)) for r in runs]
    assert len(calls) == 10 and calls[0][1:] == first["command"][1:]

    summary = sweep["summarise"](runs, results)
    assert [row["name"] for row in summary] == [
        "model.width=0.5,model.norm=batch", "model.width=0.5,model.norm=group",
        "model.width=1.0,model.norm=batch", "model.width=1.0,model.norm=group",
    ]  # fmt: skip
    aurocs = [auroc_of(r["command"]) for r in runs[:3]]
    row = summary[0]
    assert row["seeds"] == ["0", "1", "2"]
    assert row["auroc_mean"] == pytest.approx(np.mean(aurocs))
    assert row["auroc_sd"] == pytest.approx(np.std(aurocs, ddof=1))
    assert row["auroc_low_mean"] == pytest.approx(np.mean(aurocs) - 0.1)
    assert "auroc_low_sd" not in row and "time_mean" not in row and "step_mean" not in row
    assert summary[2]["auroc_mean"] == pytest.approx(0.5 + 0.01)

    sweep["write_results"](out, summary, ["auroc"])
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["combination"] for r in rows] == [row["name"] for row in summary]
    assert float(rows[0]["auroc_mean"]) == pytest.approx(row["auroc_mean"])
    table = (tmp_path / "results.md").read_text()
    assert f"| {row['name']} | 0 1 2 | {row['auroc_mean']:.4f} ± {row['auroc_sd']:.4f} (" in table
    assert table.count("python -m medjax.main --config=configs/x.py") == 12


def test_a_workdir_of_another_command_is_refused(tmp_path):
    axes = sweep["parse_grid"](["model.width=0.5"])
    runs = sweep["planned_runs"]("configs/x.py", axes, ["0"], str(tmp_path), [])
    sweep["record_commands"](str(tmp_path), runs)
    other = sweep["planned_runs"]("configs/x.py", axes, ["0"], str(tmp_path), ["--config.a=2"])
    with pytest.raises(ValueError, match="holds a run of another command"):
        sweep["record_commands"](str(tmp_path), other)


def test_a_workdir_the_sweep_did_not_start_is_refused(tmp_path):
    axes = sweep["parse_grid"](["model.width=0.5"])
    runs = sweep["planned_runs"]("configs/x.py", axes, ["0"], str(tmp_path), [])
    os.makedirs(runs[0]["workdir"])  # another program's, or one whose record was deleted
    with pytest.raises(ValueError, match="exists but .*sweep_commands.json does not record it"):
        sweep["record_commands"](str(tmp_path), runs)
    assert not (tmp_path / sweep["COMMANDS"]).exists()


def test_a_failed_run_stops_the_sweep_with_its_command(tmp_path):
    (planned,) = sweep["planned_runs"]("configs/x.py", [], ["0"], str(tmp_path), [])

    def execute(command, check):
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(ValueError, match="--config.seed=0 exited with status 1; fix its error"):
        sweep["run"](planned, execute)
    assert not os.path.exists(os.path.join(planned["workdir"], sweep["WALL_TIME"]))


@pytest.mark.parametrize(
    "grid, seeds, extra, message",
    [
        (["model.widht=0.5"], ["0"], [], "--config.model.widht=0.5: the config has no key widht "
         r"\(did you mean width\?\)"),
        (["model.width=0.5,wide"], ["0"], [], "--config.model.width=wide: could not convert"),
        (["trainer.num_train_steps=1.5"], ["0"], [], "steps=1.5: invalid literal for int"),
        ([], ["0", "one"], [], "--config.seed=one: invalid literal for int"),
        ([], [], [], "--seeds is empty"),
        ([], ["0"], ["--config.data.dri=x"], "--config.data.dri=x: the config has no key dri;"),
        # A row names its combination and seeds: a key of either is not set again after --.
        (["model.width=0.25"], ["0"], ["--config.model.width=0.125"],
         r"--config.model.width after -- sets a key that --grid=model.width=... sets"),
        (["model.width=0.25"], ["0"], ["-config.model.width", "0.125"], "--grid=model.width"),
        ([], ["0"], ["--config.seed=3"], "--config.seed after -- sets a key that --seeds sets"),
        ([], ["0"], ["--config.model.width=1", "--config.model.width=2"],
         "--config.model.width=1 and --config.model.width=2 after -- set the same key"),
        ([], ["0"], ["--workdir=elsewhere"], "--workdir=elsewhere after --: the sweep sets"),
        ([], ["0"], ["--config=configs/ct_cnn.py"], "--config=configs/ct_cnn.py after --"),
        ([], ["0"], ["--mode", "evaluate"], "--mode after --"),
        (["model.width=0.5,1.0,0.50"], ["0"], [],
         "--grid: model.width=0.5 and model.width=0.50 are the same value"),
        ([], ["0", "1", "00"], [], "--seeds: seed=0 and seed=00 are the same value"),
        (["data.image_shape=(32,32),(24,24),(32, 32)"], ["0"], [],
         r"data.image_shape=\(32,32\) and data.image_shape=\(32, 32\) are the same value"),
    ],
)  # fmt: skip
def test_bad_keys_values_and_seeds_are_refused_before_anything_runs(
    tmp_path, monkeypatch, grid, seeds, extra, message
):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    axes = sweep["parse_grid"](grid)
    with pytest.raises(ValueError, match=message):
        sweep["sweep"]("configs/medmnist.py:breastmnist", axes, seeds, str(out), extra)
    assert not out.exists()
