"""One build per folder: a second build exits with one line naming the holder; a dead holder's lock is taken."""

import json
import subprocess
import sys

import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.errors import UserError
from trt_centerpoint.lockfile import LOCK_NAME, hold_lock

HOLDER = """
import sys, time
from trt_centerpoint.lockfile import hold_lock
with hold_lock(sys.argv[1], log=lambda line: None):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_build_exits_naming_the_running_one(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["build", "--config", "tiny", "--out", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"another build is running in this folder (pid {holder.pid}" in err[0]
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # its lock is untouched
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_build_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "started": "earlier"}))
    notes = []
    with hold_lock(tmp_path, log=notes.append) as path:
        assert json.loads(path.read_text())["pid"] != dead.pid
    assert notes == [f"{tmp_path}: took over the lock of a build that no longer runs (pid {dead.pid})"]
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_the_lock_is_released_when_the_build_fails(tmp_path):
    with pytest.raises(RuntimeError), hold_lock(tmp_path):
        raise RuntimeError("a stage failed")
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_lock(tmp_path), pytest.raises(UserError, match=r"another build is running.*since \d{4}-"):
        with hold_lock(tmp_path):
            pass
