"""One writer per workdir, damaged checkpoints walked back, config files that fail to load."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from test_crash_resume import REPO, _final

from medjax import train, workdir_lock
from medjax.errors import ConfigError

STEPS = {"trainer.num_train_steps": 12, "trainer.eval_every_steps": 4,
         "trainer.checkpoint_every_steps": 4}  # fmt: skip


def _popen(command, workdir, env, seed):
    return subprocess.Popen(
        [*command(STEPS | {"seed": seed}), f"--workdir={workdir}"],
        cwd=REPO, env=env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_exits_at_once(
    tmp_path, host_devices_env, tiny_ct_cnn_command
):
    first = _popen(tiny_ct_cnn_command, tmp_path / "run", host_devices_env, seed=0)
    deadline = time.time() + 120
    while not (tmp_path / "run" / ".lock").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    started = time.time()
    second = _popen(tiny_ct_cnn_command, tmp_path / "run", host_devices_env, seed=1)
    _, stderr = second.communicate(timeout=60)
    assert time.time() - started < 10 and second.returncode == 1
    assert f"error: {tmp_path / 'run'} is being written by the run started " in stderr
    assert f"on host {socket.gethostname()} (PID {first.pid})" in stderr
    assert "Traceback" not in stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert not (tmp_path / "run" / ".lock").exists()
    solo = _popen(tiny_ct_cnn_command, tmp_path / "solo", host_devices_env, seed=0)
    assert solo.wait(timeout=300) == 0
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["seed"] == 0
    survivor, alone = _final(tmp_path / "run"), _final(tmp_path / "solo")
    assert survivor[0] == alone[0] and survivor[2] == alone[2]  # step and test line
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [(r["step"], r["split"]) for r in map(json.loads, f)]
    assert len(rows) == len(set(rows))


def _hold(workdir, pid):
    with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": pid, "started": "2026-12-05T07:00:00"}, f)


def test_a_live_holder_refuses_writers_and_readers(finished_tiny_run):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    _hold(workdir, os.getppid())  # a live process other than this one
    message = "is being written by the run started 2026-12-05T07:00:00 on host "
    for run in (train.train_and_evaluate, train.evaluate, train.predict):
        with pytest.raises(ConfigError, match=message + f".*PID {os.getppid()}"):
            run(config, workdir)


def test_the_lock_of_a_dead_run_is_taken_over_and_released(finished_tiny_run, caplog):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    _hold(workdir, _dead_pid())
    train.train_and_evaluate(config, workdir)  # finished: evaluates again
    assert "the run that held it has ended" in caplog.text
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))


def test_a_lock_with_this_process_pid_from_another_process_is_not_ours(tmp_path):
    _hold(tmp_path, os.getpid())  # e.g. PID 1 of another container on this filesystem
    with pytest.raises(ConfigError, match=f"started 2026-12-05T07:00:00 .*PID {os.getpid()}"):
        with workdir_lock.writer(str(tmp_path)):
            pass
    with open(tmp_path / workdir_lock.LOCK_FILE) as f:
        assert json.load(f)["started"] == "2026-12-05T07:00:00"


# argv: workdir, name, a file to wait for before taking the lock, one to wait for when first
# judging a lock (that judgement touches <workdir>/<name>.judging). Inside the lock it
# touches <workdir>/<name>, then waits for <workdir>/release.
_TAKE_OVER = """
import os, sys, time
from medjax import workdir_lock
from medjax.errors import ConfigError
workdir, name, before, judging = sys.argv[1:]
def wait_for(file):
    deadline = time.time() + 60
    while file and not os.path.exists(os.path.join(workdir, file)) and time.time() < deadline:
        time.sleep(0.01)
alive = workdir_lock._alive
def first_judgement(pid):
    workdir_lock._alive = alive
    open(os.path.join(workdir, name + ".judging"), "w").close()
    wait_for(judging)
    return alive(pid)
workdir_lock._alive = first_judgement
wait_for(before)
try:
    with workdir_lock.writer(workdir):
        open(os.path.join(workdir, name), "w").close()
        wait_for("release")
except ConfigError as e:
    sys.exit(f"error: {e}")
"""


def _dead_pid():
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return gone.pid


def test_two_runs_taking_over_one_stale_lock_at_once_one_writes(tmp_path, host_devices_env):
    _hold(tmp_path, _dead_pid())

    def start(name, before, judging):
        argv = [sys.executable, "-c", _TAKE_OVER, tmp_path, name, before, judging]
        return subprocess.Popen(argv, env=host_devices_env(1), stderr=subprocess.PIPE, text=True)

    # slow judges the stale lock, then waits while fast takes it over and writes.
    slow = start("slow", "", "fast")
    fast = start("fast", "slow.judging", "")
    deadline = time.time() + 120
    while slow.poll() is None and not (tmp_path / "slow").exists() and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "release").touch()
    _, slow_stderr = slow.communicate(timeout=120)
    _, fast_stderr = fast.communicate(timeout=120)
    assert fast.returncode == 0, fast_stderr[-2000:]
    assert "the run that held it has ended" in fast_stderr
    assert slow.returncode == 1 and not (tmp_path / "slow").exists(), slow_stderr[-2000:]
    assert (
        slow_stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {tmp_path} is being written by the run started ")
        and f"(PID {fast.pid})" in slow_stderr
    )
    assert "Traceback" not in slow_stderr
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".lock")]


def test_a_stale_lock_whose_takeover_did_not_finish_is_one_error(tmp_path, monkeypatch):
    _hold(tmp_path, _dead_pid())
    lock = tmp_path / workdir_lock.LOCK_FILE
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    (tmp_path / f".lock.takeover-{digest}").touch()  # its taker was killed
    monkeypatch.setattr(workdir_lock, "_TAKEOVER_WAIT_S", 0.1)
    with pytest.raises(ConfigError, match=f"{lock} was left by a run that ended, and "
                       f"{lock}.takeover-{digest} by a takeover of it that did not finish; "
                       "delete both"):  # fmt: skip
        with workdir_lock.writer(str(tmp_path)):
            pass
    assert sorted(os.listdir(tmp_path)) == [".lock", f".lock.takeover-{digest}"]


@pytest.mark.parametrize("damage", ["manifest", "progress", "truncated_blob"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_resumed(
    finished_tiny_run, damage, caplog
):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    latest = os.path.join(workdir, "checkpoints", "latest")
    newest = max(int(s) for s in os.listdir(latest) if s.isdigit())
    path = os.path.join(latest, str(newest))
    if damage == "manifest":
        os.remove(os.path.join(path, "state", "manifest.ocdbt"))
    elif damage == "progress":
        shutil.rmtree(os.path.join(path, "progress"))
    else:
        blobs = os.path.join(path, "state", "ocdbt.process_0", "d")
        for name in os.listdir(blobs):
            with open(os.path.join(blobs, name), "r+b") as f:
                f.truncate(os.path.getsize(f.name) // 2)
    test = train.train_and_evaluate(config, workdir)
    assert f"Checkpoint {path} cannot be read" in caplog.text
    assert test == finished_tiny_run.test_metrics
    assert os.path.isdir(f"{path}.damaged") and os.path.isdir(path)  # trained again


def test_no_readable_checkpoint_is_one_error_naming_the_folder(finished_tiny_run):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    latest = os.path.join(workdir, "checkpoints", "latest")
    for step in os.listdir(latest):
        os.remove(os.path.join(latest, step, "state", "manifest.ocdbt"))
    with pytest.raises(ConfigError, match=f"no checkpoint in .*{latest} can be read .*Delete"):
        train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize(
    "text, message",
    [("def get_config(:\n    pass\n", "line 1: SyntaxError: invalid syntax"),
     ("import no_such_module\n", "line 1: ModuleNotFoundError: No module named 'no_such_module'"),
     ("def get_config():\n    return dict(seed=1)\n",
      "get_config() returned a dict; it must return an ml_collections.ConfigDict")],
)  # fmt: skip
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, run_main, text, message):
    path = tmp_path / "my_config.py"
    path.write_text(text)
    status, stderr = run_main(f"--config={path}", f"--workdir={tmp_path}/run")
    assert status == 1 and f"error: the config file {path}" in stderr and message in stderr
    # No traceback through the config or medjax (a thread of an earlier test in this process
    # may print its own on stderr).
    assert f'File "{path}"' not in stderr and "medjax/main.py" not in stderr
    assert not (tmp_path / "run").exists()
