"""experiments/benchmark.py: the results it writes name no path of the machine they ran on."""

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "benchmark.py")


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_portable_command():
    benchmark = _benchmark()
    argv = [SCRIPT, "--torch=/opt/torchvenv/bin/python", "--rounds=3", "--out=/data/x/results"]
    assert benchmark.portable_command(argv) == (
        "experiments/benchmark.py --torch=PYTHON --rounds=3 --out=results"
    )
    argv = ["experiments/benchmark.py", "--torch", "/opt/torchvenv/bin/python", "--models=gru_ehr"]
    assert benchmark.portable_command(argv) == (
        "experiments/benchmark.py --torch PYTHON --models=gru_ehr"
    )


def test_written_results_name_no_local_path(tmp_path, monkeypatch):
    benchmark = _benchmark()
    result = dict(batch=256, ex_s_median=100.0, ex_s_min=90.0, ex_s_max=110.0, compile_s=1.0,
                  flops_per_example=1e9, gflop_s=10.0, peak_fraction=0.1,
                  matmul_peak_gflop_s=100.0, jax="0", jaxlib="0", flax="0", torch="0")  # fmt: skip
    commands = []
    monkeypatch.setattr(benchmark, "_run", lambda command: commands.append(command) or result)
    torch = str(tmp_path / "torchvenv" / "bin" / "python")
    out = tmp_path / "out"
    argv = [SCRIPT, f"--torch={torch}", "--rounds=1", "--models=gru_ehr", "--configs="]
    argv.append(f"--out={out}")
    monkeypatch.setattr(benchmark.sys, "argv", argv)
    benchmark.main()
    assert commands[1][0] == torch  # the interpreter given is the one run
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["command"] == (
        "experiments/benchmark.py --torch=PYTHON --rounds=1 --models=gru_ehr --configs= --out=out"
    )
    assert saved["models"]["gru_ehr"]["ratio_median"] == 1.0
    for name in ("benchmark.json", "benchmark.md"):
        text = (out / name).read_text()
        assert "--torch=PYTHON" in text
        assert str(tmp_path) not in text and REPO not in text
