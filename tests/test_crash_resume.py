"""A run killed with SIGKILL at random steps, or stopped by SIGTERM, and started again with the
same command ends exactly as a run never interrupted."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
CHANGES = {
    "model.dropout_rate": 0.3,  # randomness in the step must resume exactly too
    "trainer.num_train_steps": STEPS,
    "trainer.eval_every_steps": 4,
    "trainer.checkpoint_every_steps": 3,
}


def _start(workdir, env, command):
    return subprocess.Popen(
        [*command(CHANGES), f"--workdir={workdir}"],
        cwd=REPO,
        env=env(1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(workdir, env, command):
    process = _start(workdir, env, command)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def _last_step(workdir):
    """The last step in metrics.jsonl (0 before the first line)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max([json.loads(line)["step"] for line in f if line.endswith("\n")], default=0)


def _wait_for_step(process, workdir, step):
    """Waits until metrics.jsonl shows a line at `step` or later."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if _last_step(workdir) >= step:
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def _final(workdir):
    """The latest checkpoint's arrays and the test line of metrics.jsonl (without its time)."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    step = max(int(name) for name in os.listdir(latest) if name.isdigit())
    arrays = ocp.StandardCheckpointer().restore(os.path.join(latest, str(step), "state"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        test = [json.loads(line) for line in f if '"split": "test"' in line]
    assert len(test) == 1
    del test[0]["time"]
    return step, arrays, test[0]


def _assert_same(a, b):
    step_a, arrays_a, test_a = a
    step_b, arrays_b, test_b = b
    assert step_a == step_b == STEPS
    assert test_a == test_b
    flat_a, flat_b = ocp.tree.to_flat_dict(arrays_a), ocp.tree.to_flat_dict(arrays_b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), str(key))


def test_sigkill_at_random_steps_then_rerun_ends_bit_identical(
    tmp_path, host_devices_env, tiny_ct_cnn_command
):
    straight = tmp_path / "straight"
    _finish(straight, host_devices_env, tiny_ct_cnn_command)
    expected = _final(straight)
    # One run killed three times, at a random step of each third of its steps: each start
    # resumes from the last complete checkpoint that the previous one left.
    rng = np.random.default_rng(0)
    kill_steps = [rng.integers(start, start + 3) for start in (1, 5, 9)]
    workdir, saved = tmp_path / "killed", []
    for kill_step in kill_steps:
        logged = _last_step(workdir)  # by the killed start, up to the step it reached
        process = _start(workdir, host_devices_env, tiny_ct_cnn_command)
        _wait_for_step(process, workdir, max(kill_step, logged + 1))  # a line of this start
        process.send_signal(signal.SIGKILL)
        _, log = process.communicate(timeout=60)
        if saved:  # it resumed from the last complete checkpoint, not from the start
            assert f"Resumed from step {max(saved)} of" in log
        saved = [int(name) for name in os.listdir(workdir / "checkpoints" / "latest")
                 if name.isdigit()]  # fmt: skip
    log = _finish(workdir, host_devices_env, tiny_ct_cnn_command)
    assert f"Resumed from step {max(saved)} of" in log
    _assert_same(_final(workdir), expected)


@pytest.mark.parametrize(
    "stop, status, prefix",
    [(signal.SIGTERM, 143, "preempted: stopped by SIGTERM"),
     (signal.SIGINT, 130, "interrupted: stopped by SIGINT")],
)  # fmt: skip
def test_a_stop_signal_saves_the_current_step_and_the_rerun_finishes(
    tmp_path, host_devices_env, tiny_ct_cnn_command, stop, status, prefix
):
    """SIGTERM (preemption) and SIGINT (Ctrl-C) alike."""
    process = _start(tmp_path, host_devices_env, tiny_ct_cnn_command)
    _wait_for_step(process, tmp_path, 4)
    sent = time.time()
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert time.time() - sent < 30
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    message = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(message) == 1 and "run the same command to continue" in message[0]
    assert not (tmp_path / ".lock").exists()
    step = int(message[0].split("at step ")[1].split(",")[0])
    assert 4 <= step < STEPS
    assert str(step) in os.listdir(tmp_path / "checkpoints" / "latest")
    log = _finish(tmp_path, host_devices_env, tiny_ct_cnn_command)
    assert f"Resumed from step {step} of" in log
    assert _final(tmp_path)[0] == STEPS
