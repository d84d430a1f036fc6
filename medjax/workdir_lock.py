"""One writer per workdir: a lock file, created atomically, naming its holder.

`writer(workdir)` holds `<workdir>/.lock` ({host, pid, started}) while a run writes there and
removes it on every way out that Python sees (an error, SIGTERM, Ctrl-C). A lock left by a
killed run (same host, no such process) is taken over with a warning; one held by a live run,
or by a run on another host, refuses the second run. The read-only modes (evaluate, explain,
predict, export) take no lock but refuse a workdir a writer holds (`refuse_if_held`). On
several hosts, process 0 holds it.
"""

import contextlib
import datetime
import json
import os
import socket

from absl import logging

from medjax.errors import ConfigError

LOCK_FILE = ".lock"


def holder(workdir: str) -> dict | None:
    """The live holder of `workdir`'s lock ({host, pid, started}), or None: no lock, or one
    this process holds, or one whose process is gone (same host)."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            found = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):  # being written, or garbled: a holder we cannot name
        return {"host": "?", "pid": "?", "started": "?"}
    if found.get("host") != socket.gethostname():
        return found
    if found.get("pid") == os.getpid() or not _alive(found.get("pid")):
        return None
    return found


def refuse_if_held(workdir: str, doing: str = "use") -> None:
    """ConfigError naming the holder where another live run holds `workdir`'s lock."""
    found = holder(workdir)
    if found is not None:
        raise ConfigError(
            f"{workdir} is being written by the run started {found['started']} on host "
            f"{found['host']} (PID {found['pid']}); wait for it to end before you {doing} it, "
            f"or use another --workdir (if that run is gone, delete {workdir}/{LOCK_FILE})"
        )


@contextlib.contextmanager
def writer(workdir: str):
    """Holds `workdir`'s lock (process 0) for the body; ConfigError where another run holds it.
    Re-entrant within one process."""
    import jax  # here: main() checks a lock before JAX and TensorFlow are imported

    if jax.process_index() != 0:
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    refuse_if_held(workdir, "train in")
    try:
        with open(path) as f:
            mine = json.load(f).get("pid") == os.getpid()
    except (OSError, ValueError):
        mine = False
    if mine:  # an outer call of this process holds it (an ensemble's members)
        yield
        return
    if os.path.exists(path):
        logging.warning("Taking over %s: the run that held it has ended.", path)
        os.remove(path)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another run took it between the check and here
        refuse_if_held(workdir, "train in")
        raise
    with os.fdopen(descriptor, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # a process we may not signal, or a pid we cannot read: assume it runs
    return True
