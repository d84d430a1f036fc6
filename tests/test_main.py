"""The command line: bad input gets a plain message, no traceback, and an untouched workdir."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "medjax.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=configs/ct_cnn.py", "--config.trainer.no_such_key=1"], "no_such_key"),
        (["--config=configs/does_not_exist.py"], "does_not_exist.py"),
        (
            ["--config=configs/ct_cnn.py", "--config.model.name=resnet7"],
            "unknown model 'resnet7'; valid names: resnet10, resnet18, resnet34, resnet50",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.trainer.batch_size=0"],
            "trainer.batch_size=0 does not divide evenly",
        ),
        (["--config=configs/medmnist.py:foomnist"], "unknown MedMNIST dataset 'foomnist'"),
        (
            ["--config=configs/ct_cnn.py", "--num_processes=2"],
            "--coordinator_address, --num_processes and --process_id go together",
        ),
        (
            [
                "--config=configs/medmnist.py",
                "--config.data.dir=no_such_dir",
                "--config.data.download=false",
            ],
            "breastmnist.npz not found in",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_reported_plainly_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = _run(*args, f"--workdir={workdir}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _run("--config=configs/ct_cnn.py", f"--workdir={blocker}/run")
    assert result.returncode != 0
    assert f"cannot write to --workdir='{blocker}/run'" in result.stderr
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "not a folder"


def test_evaluate_without_a_checkpoint(tmp_path):
    result = _run("--config=configs/ct_cnn.py", f"--workdir={tmp_path}/run", "--mode=evaluate")
    assert result.returncode != 0 and "train first (--mode=train)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
