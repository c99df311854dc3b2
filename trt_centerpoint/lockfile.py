"""One build at a time per build folder: a lock file holding the owner's pid.

Two builds into one folder would both do all the work, and the second would delete the first's live temporary
files as "left by an interrupted build". The lock is a file created exclusively (O_EXCL) with the holder's pid,
host and start time; a second build exits with one line naming the holder. A lock whose pid no longer runs
(a build that was killed) is taken over, with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from trt_centerpoint.errors import UserError

LOCK_NAME = ".build.lock"

__all__ = ["LOCK_NAME", "hold_lock", "pid_running"]


def pid_running(pid: int) -> bool:
    """True when a process with this pid exists on this machine (signal 0 checks without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as stale below only if its pid is gone


def _try_create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
    return True


@contextlib.contextmanager
def hold_lock(folder: str | Path, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold `folder`'s build lock for the `with` block; `UserError` (one line) when a running process holds it."""
    path = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):  # create; or, past a stale lock, remove it and create again
        if _try_create(path, me):
            break
        holder = _read_holder(path)
        pid = int(holder.get("pid", -1)) if str(holder.get("pid", "")).lstrip("-").isdigit() else -1
        other_host = holder.get("host") not in (None, me["host"])
        if other_host or pid_running(pid):
            where = f" on {holder['host']}" if other_host else ""
            raise UserError(f"{folder}: another build is running in this folder (pid {pid}{where}, since "
                            f"{holder.get('started', '?')}); wait for it to finish, or stop it and run again")
        log(f"{folder}: took over the lock of a build that no longer runs (pid {pid})")
        path.unlink(missing_ok=True)
    else:
        raise UserError(f"{folder}: cannot take the build lock {path} (other builds keep taking it)")
    try:
        yield path
    finally:
        if _read_holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
