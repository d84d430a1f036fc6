"""The command line: bad input gets a plain message, no traceback, and an untouched workdir."""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_SPLITS = [
    "--config.data.num_train=96",
    "--config.data.num_val=40",
    "--config.data.num_test=48",
]


def _run(*args, devices=1, python=("-m", "medjax.main")):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, *python, *args],
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
            "model.name='resnet7' is not a model: medjax/models/resnet7.py with a Model class. "
            "Models: conv_vae, gru, gru_d, lstm, mtan, resnet10, resnet18, resnet34, resnet50",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.trainer.batch_size=-4"],
            "error: trainer.batch_size=-4 must be an integer >= 1",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.optimizer.learning_rate=-1"],
            "error: optimizer.learning_rate=-1.0 must be a finite number > 0",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.optimizer.learning_rate=nan"],
            "error: optimizer.learning_rate=nan must be a finite number > 0",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.trainer.batch_size=abc"],
            "flag --config.trainer.batch_size=abc: invalid literal for int()",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.data.name=nosuch"],
            "unknown dataset data.name='nosuch'; valid names: synthetic_ct, ct_folder, "
            "synthetic_ehr, physionet2012, pathmnist, pathmnist_64,",
        ),
        (
            # (the other splits small: the synthetic patients are drawn before the check)
            ["--config=configs/ct_cnn.py", "--config.data.num_val=0", *SMALL_SPLITS[::2]],
            "the val split is empty; add data, or change the split sizes (data.num_val",
        ),
        (
            ["--config=configs/ct_cnn.py", "--config.data.num_train=10", *SMALL_SPLITS[1:]],
            "the training split has 10 examples, fewer than trainer.batch_size=64",
        ),
        (["--config=configs/medmnist.py:foomnist"], "unknown MedMNIST dataset 'foomnist'"),
        (
            ["--config=configs/ct_cnn.py", "--num_processes=2"],
            "--coordinator_address, --num_processes and --process_id go together",
        ),
        (
            [
                "--config=configs/medmnist.py:breastmnist",
                "--config.data.dir=no_such_dir",
                "--config.data.download=false",
            ],
            "breastmnist.npz not found in",
        ),  # fmt: skip
        (
            ["--config=configs/medmnist.py"],
            "configs/medmnist.py needs the dataset's name after a colon: "
            "--config=configs/medmnist.py:breastmnist",
        ),
    ],
)
def test_bad_input_is_reported_plainly_and_writes_nothing(tmp_path, run_main, args, message):
    workdir = tmp_path / "run"
    returncode, stderr = run_main(*args, f"--workdir={workdir}")
    assert returncode != 0
    assert message in stderr
    assert "Traceback" not in stderr
    assert not workdir.exists()


def test_unwritable_workdir(tmp_path, run_main):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    returncode, stderr = run_main(
        "--config=configs/ct_cnn.py", *SMALL_SPLITS, f"--workdir={blocker}/run"
    )
    assert returncode != 0
    assert f"cannot write to --workdir='{blocker}/run'" in stderr
    assert "Traceback" not in stderr
    assert blocker.read_text() == "not a folder"


def test_a_workdir_that_is_a_file(tmp_path, run_main):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    returncode, stderr = run_main(
        "--config=configs/ct_cnn.py", *SMALL_SPLITS, f"--workdir={blocker}"
    )
    assert returncode == 1 and f"--workdir='{blocker}' is a file, not a folder" in stderr
    assert blocker.read_text() == "not a folder"


def test_evaluate_without_a_checkpoint(tmp_path, run_main):
    returncode, stderr = run_main(
        "--config=configs/ct_cnn.py", f"--workdir={tmp_path}/run", "--mode=evaluate"
    )
    assert returncode != 0 and "train first (--mode=train)" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_batch_not_divisible_by_the_devices(tmp_path):
    result = _run(
        "--config=configs/ct_cnn.py", "--config.trainer.batch_size=6", f"--workdir={tmp_path}/w",
        devices=4,
    )  # fmt: skip
    assert result.returncode == 1
    assert "trainer.batch_size=6 does not divide evenly over 4 devices; use a positive " \
        "multiple of 4" in result.stderr  # fmt: skip
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def _breastmnist(folder, labels=(0, 1, 0, 1)):
    os.makedirs(folder, exist_ok=True)
    splits = {}
    for split in ("train", "val", "test"):
        splits[f"{split}_images"] = np.zeros((len(labels), 28, 28), np.uint8)
        splits[f"{split}_labels"] = np.array(labels, np.uint8)[:, None]
    np.savez(os.path.join(folder, "breastmnist.npz"), **splits)


def _corrupt_npz(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "breastmnist.npz"), "wb") as f:
        f.write(b"PK\x03\x04 not really a zip file")


def _corrupt_dicom(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("scan_id,label,patient_id,split\n")
        for i, split in enumerate(("train", "val", "test")):
            f.write(f"s{i},{i % 2},p{i},{split}\n")
            os.makedirs(os.path.join(folder, f"s{i}"))
            with open(os.path.join(folder, f"s{i}", "001.dcm"), "wb") as dcm:
                dcm.write(b"\0" * 128 + b"DICM" + b"\x02\x00")  # cut short in the header


def _corrupt_tarball(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "set-a.tar.gz"), "wb") as f:
        f.write(b"\x1f\x8b not really gzip")
    with open(os.path.join(folder, "Outcomes-a.txt"), "w") as f:
        f.write("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n")


MEDMNIST = ["--config=configs/medmnist.py:breastmnist", "--config.data.download=false"]
CT_FOLDER = [
    "--config=configs/ct_cnn3d.py",
    "--config.data.name=ct_folder",
    "--config.data.image_shape=(8,8,8)",
]


@pytest.mark.parametrize(
    "make, args, message",
    [
        (os.makedirs, MEDMNIST, "breastmnist.npz not found in"),  # an empty data folder
        (_corrupt_npz, MEDMNIST, "breastmnist.npz"),
        (
            lambda d: _breastmnist(d, labels=(0, 1, 5, 1)),
            MEDMNIST,
            "train_labels[2] = 5 is outside the dataset's 2 classes 0..1",
        ),
        (_corrupt_dicom, CT_FOLDER, "001.dcm"),
        (_corrupt_tarball, ["--config=configs/ehr_physionet.py"], "set-a.tar.gz is not a readable"),
    ],
    ids=["empty_folder", "corrupt_npz", "label_out_of_range", "corrupt_dicom", "corrupt_tarball"],
)
def test_bad_data_is_named_and_nothing_is_written(tmp_path, run_main, make, args, message):
    data = str(tmp_path / "data")
    make(data)
    workdir = tmp_path / "run"
    returncode, stderr = run_main(
        *args, f"--config.data.dir={data}", f"--config.data.cache_dir={tmp_path}/cache",
        f"--workdir={workdir}",
    )  # fmt: skip
    assert returncode == 1, stderr[-3000:]
    assert message in stderr and "Traceback" not in stderr
    assert "\nerror: " in "\n" + stderr.replace("\r", "\n")  # at a line's start in a log
    assert "\r" not in stderr.split("error: ")[0][-200:]
    assert not workdir.exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_dir() for p in cache.rglob("*")), list(
        cache.rglob("*")
    )


DISK_FULL_ON_SECOND_SAVE = """
import errno, sys
import orbax.checkpoint as ocp
from medjax import main

save, calls = ocp.CheckpointManager.save, []

def save_until_the_disk_is_full(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

ocp.CheckpointManager.save = save_until_the_disk_is_full
sys.argv[0] = "medjax.main"
main.run()
"""


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    result = _run(
        "--config=configs/ct_cnn.py",
        "--config.data.num_train=64",
        "--config.data.num_val=32",
        "--config.data.num_test=32",
        "--config.data.image_shape=(32,32)",
        "--config.model.width=0.125",
        "--config.trainer.batch_size=16",
        "--config.trainer.num_train_steps=6",
        "--config.trainer.checkpoint_every_steps=2",
        "--config.trainer.eval_every_steps=6",
        "--config.optimizer.warmup_steps=1",
        f"--workdir={tmp_path}",
        python=("-c", DISK_FULL_ON_SECOND_SAVE),
    )
    assert result.returncode == 1
    latest = tmp_path / "checkpoints" / "latest"
    assert (
        f"error: no space left on the device while saving the checkpoint of step 4 in {latest}; "
        "the checkpoint of step 2 is intact. Free some space" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert os.listdir(latest) == ["2"]


@pytest.mark.slow
def test_the_error_is_the_last_line_when_training_fails(tmp_path):
    """TensorFlow's input iterators are finalised before the error is printed, not after it
    (they logged "Error occurred when finalizing GeneratorDataset iterator" below it)."""
    result = subprocess.run(
        [sys.executable, "-m", "medjax.main", "--config=configs/ehr_rnn.py",
         f"--workdir={tmp_path}/run", "--config.optimizer.learning_rate=1e9",
         "--config.optimizer.grad_clip_norm=0", "--config.data.num_train=200",
         "--config.data.num_val=100", "--config.data.num_test=100"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and lines[-1].startswith("error: the loss or a gradient was not")
