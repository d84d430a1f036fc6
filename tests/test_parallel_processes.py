"""Two processes joined by jax.distributed (gloo, 127.0.0.1) train, checkpoint and resume as
one process with the same devices."""

import json
import os
import shutil
import socket
import subprocess

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHANGES = {
    "trainer.num_train_steps": 4,
    "trainer.eval_every_steps": 2,
    "trainer.checkpoint_every_steps": 2,
}


def _train(workdir, env, command, *, processes):
    """Runs the tiny ct_cnn in `processes` processes joined on 127.0.0.1; returns the
    metrics.jsonl lines."""
    command = [*command(CHANGES), f"--workdir={workdir}"]
    if processes > 1:
        port = _free_port()
        command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    logs = [open(f"{workdir}.{i}.log", "w+") for i in range(processes)]  # no pipe to fill
    launched = [
        subprocess.Popen(
            command + ([f"--process_id={i}"] if processes > 1 else []),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for i, log in enumerate(logs)
    ]
    try:
        for p in launched:
            p.wait(timeout=400)
    finally:
        for p in launched:
            p.kill()
    for p, log in zip(launched, logs, strict=True):
        log.seek(0)
        assert p.returncode == 0, log.read()[-3000:]
        log.close()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _by_split(lines, split, key):
    return {line["step"]: line[key] for line in lines if line["split"] == split}


def test_two_processes_train_checkpoint_and_resume_as_one(
    tmp_path, host_devices_env, tiny_ct_cnn_command
):
    one = _train(tmp_path / "one", host_devices_env(4), tiny_ct_cnn_command, processes=1)
    two_dir = tmp_path / "two"
    two = _train(two_dir, host_devices_env(2), tiny_ct_cnn_command, processes=2)

    losses = _by_split(one, "train", "loss")
    assert sorted(losses) == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [_by_split(two, "train", "loss")[s] for s in losses], list(losses.values()), rtol=1e-5
    )
    for split in ("val", "test"):
        assert _by_split(two, split, "auroc") == _by_split(one, split, "auroc")

    # A crash after the step-2 checkpoint: the last one lost, both processes resume from it.
    shutil.rmtree(two_dir / "checkpoints" / "latest" / "4")
    resumed = _train(two_dir, host_devices_env(2), tiny_ct_cnn_command, processes=2)

    def before_the_crash(lines):
        return [line for line in lines if line["step"] <= 2 and line["split"] != "test"]

    assert before_the_crash(resumed) == before_the_crash(two)  # kept, not trained again
    assert [(line["split"], line["step"]) for line in resumed] == [
        (line["split"], line["step"]) for line in two
    ]
    np.testing.assert_allclose(
        [_by_split(resumed, "train", "loss")[s] for s in losses],
        [_by_split(two, "train", "loss")[s] for s in losses],
        rtol=1e-6,
    )
    assert _by_split(resumed, "test", "auroc") == _by_split(two, "test", "auroc")
