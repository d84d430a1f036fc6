"""One writer per workdir: a lock file, created atomically, naming its holder.

`writer(workdir)` holds `<workdir>/.lock` ({host, pid, started, token}) while a run writes
there and removes it on every way out that Python sees (an error, SIGTERM, Ctrl-C). The token,
random per process, tells this process's lock from another's with the same host and PID (PID 1
in containers that share a filesystem). A lock left by a killed run (same host, no such
process) is taken over with a warning; one held by a live run, or by a run on another host,
refuses the second run. The read-only modes (evaluate, explain, predict, export) take no lock
but refuse a workdir a writer holds (`refuse_if_held`). On several hosts, process 0 holds it.

A lock appears whole (written aside, then hard-linked into place: that fails where one
exists). A stale lock is removed only by the run that creates `<lock>.takeover-<hash of its
text>` exclusively, and only while the lock still has that text: of runs taking over the
same stale lock at once, one writes and the others find its live lock and refuse.
"""

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import socket
import time

from absl import logging

from medjax.errors import ConfigError

LOCK_FILE = ".lock"
_TOKEN = secrets.token_hex(8)
_UNNAMED = {"host": "?", "pid": "?", "started": "?"}
_TAKEOVER_WAIT_S = 5  # for another run's takeover of a stale lock to finish


def holder(workdir: str) -> dict | None:
    """The live holder of `workdir`'s lock ({host, pid, started, ...}), or None: no lock, or
    one this process holds, or one whose process is gone (same host)."""
    text = _read(os.path.join(workdir, LOCK_FILE))
    if text is None:
        return None
    found = _parse(text)
    return found if _live(found) else None


def refuse_if_held(workdir: str, doing: str = "use") -> None:
    """ConfigError naming the holder where another live run holds `workdir`'s lock."""
    found = holder(workdir)
    if found is not None:
        raise _held(workdir, found, doing)


@contextlib.contextmanager
def writer(workdir: str):
    """Holds `workdir`'s lock (process 0) for the body; ConfigError where another run holds it.
    Re-entrant within one process."""
    import jax  # here: main() checks a lock before JAX and TensorFlow are imported

    path = os.path.join(workdir, LOCK_FILE)
    text = _read(path)
    if jax.process_index() != 0 or (text is not None and _mine(_parse(text))):
        yield  # not the writing process, or an outer call of this process holds it
        return
    mine = _acquire(workdir, path)
    try:
        yield
    finally:
        if _read(path) == mine:
            os.remove(path)


def _acquire(workdir: str, path: str) -> bytes:
    """Creates `path` naming this process, taking over a stale lock; returns its text."""
    started = datetime.datetime.now().isoformat(timespec="seconds")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "token": _TOKEN}
    mine = json.dumps(me).encode()
    aside = f"{path}.{_TOKEN}"
    with open(aside, "wb") as f:
        f.write(mine)
    try:
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
                return mine
            text = _read(path)
            if text is not None:
                found = _parse(text)
                if _live(found):
                    raise _held(workdir, found, "train in")
                _remove_stale(path, text)
    finally:
        os.remove(aside)
    raise ConfigError(f"{path} keeps being replaced by other runs; start this one again")


def _remove_stale(path: str, text: bytes) -> None:
    """Removes the lock at `path` if it still reads `text` (a run that ended), one taker at a
    time; where another run is taking it over, waits for that run to finish."""
    marker = f"{path}.takeover-{hashlib.sha256(text).hexdigest()[:16]}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        deadline = time.monotonic() + _TAKEOVER_WAIT_S
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(marker) and _read(path) == text:
            raise ConfigError(
                f"{path} was left by a run that ended, and {marker} by a takeover of it that "
                "did not finish; delete both and start this run again"
            ) from None
        return
    try:
        if _read(path) == text:
            logging.warning("Taking over %s: the run that held it has ended.", path)
            os.remove(path)
    finally:
        os.remove(marker)


def _held(workdir: str, found: dict, doing: str) -> ConfigError:
    return ConfigError(
        f"{workdir} is being written by the run started {found.get('started', '?')} on host "
        f"{found.get('host', '?')} (PID {found.get('pid', '?')}); wait for it to end before "
        f"you {doing} it, or use another --workdir (if that run is gone, delete "
        f"{workdir}/{LOCK_FILE})"
    )


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # unreadable: a holder we cannot name
        return b""


def _parse(text: bytes) -> dict:
    try:
        found = json.loads(text)
    except ValueError:  # garbled: a holder we cannot name
        return _UNNAMED
    return found if isinstance(found, dict) else _UNNAMED


def _mine(found: dict) -> bool:
    return found.get("token") == _TOKEN and found.get("pid") == os.getpid()


def _live(found: dict) -> bool:
    """Whether the lock `found` is another run's that may still write."""
    if found.get("host") != socket.gethostname():
        return True
    return not _mine(found) and _alive(found.get("pid"))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # a process we may not signal, or a pid we cannot read: assume it runs
    return True
