"""NVIDIA's library runs in a child process: our compiled caller, with the CUDA runtime we choose.

Why a child: libspconv aborts (`Assert failed`) or segfaults on input it does not expect (a dangling input
name, a channel count it has no kernel for); in-process that would kill the toolkit with no message. Here a
crash becomes one `LibspconvCrash` line with the signal and the library's last messages.
The CUDA runtime is the stand-in (`host_side=True`: host memory, no kernel launched) or the real one found
next to the Python packages (pip `nvidia-cuda-runtime-cu12` ...), on LD_LIBRARY_PATH, or in the system's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.libspconv.compile import NativeBuild
from trt_centerpoint.runtime.libspconv.locate import Libspconv

__all__ = ["CallerRun", "CallerServer", "LibspconvCrash", "find_cudart", "run_caller"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARK = "trtcp: "
LAST_MESSAGES = 3
RUN_SECONDS = 600
SYSTEM_LIB_DIRS = ("/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu")


class LibspconvCrash(UserError):
    """libspconv (or our caller inside it) died: a signal, or an exit status without our completion line."""


@dataclass
class CallerRun:
    returncode: int
    messages: list[str]  # the library's own lines (ANSI colours and emoji markers stripped), in order
    ours: list[str] = field(default_factory=list)  # our caller's "trtcp:" lines, without the mark


def clean(line: str) -> str:
    """A library line without colour codes and its decorative markers."""
    line = ANSI.sub("", line)
    return re.sub(r"[^\x20-\x7e]+", "", line).replace("[Verb]", "").replace("[Erro ]", "error:").strip()


def find_cudart(soname: str) -> Path | None:
    """The folder holding the real CUDA runtime `soname`: pip's nvidia/cuda_runtime/lib, LD_LIBRARY_PATH, system."""
    candidates = [Path(p) / "nvidia" / "cuda_runtime" / "lib" for p in sys.path if p]
    candidates += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    candidates += [Path(p) for p in SYSTEM_LIB_DIRS]
    return next((folder for folder in candidates if (folder / soname).exists()), None)


def _library_path(library: Libspconv, native: NativeBuild, host_side: bool) -> str:
    soname = library.cudart_soname
    if host_side:
        cudart = native.standin_dir
    else:
        cudart = find_cudart(soname) if soname else None
        if soname and cudart is None:
            raise UserError(f"{soname} not found (the CUDA runtime libspconv {library.version} links against): "
                            f"pip install {library.cudart_wheel}, or put its folder on LD_LIBRARY_PATH")
    parts = [str(cudart)] if cudart else []
    parts.append(str(library.lib_dir))  # libspconv.so, and 1.0.x's libprotobuf.so.17
    return ":".join(parts)


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def run_caller(library: Libspconv, native: NativeBuild, args: list[str], host_side: bool, what: str,
               timeout: float = RUN_SECONDS) -> CallerRun:
    """Run our caller with `args`; a crash or an error of ours is a one-line `LibspconvCrash` about `what`."""
    env = dict(os.environ, LD_LIBRARY_PATH=_library_path(library, native, host_side), TRTCP_SPCONV_VERBOSE="1")
    try:
        done = subprocess.run([str(native.caller), *args], capture_output=True, text=True, errors="replace",
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LibspconvCrash(f"{what}: libspconv {library.version} did not finish in {timeout:.0f} s") from None
    messages, ours = [], []
    for raw in (done.stdout + "\n" + done.stderr).splitlines():
        if raw.startswith(MARK):
            ours.append(raw[len(MARK):].strip())
        elif clean(raw):
            messages.append(clean(raw))
    run = CallerRun(done.returncode, messages, ours)
    errors = [line[len("error "):] for line in ours if line.startswith("error ")]
    if done.returncode != 0 or errors:
        how = "stopped" if done.returncode in (0, 3) else f"crashed ({_signal_name(done.returncode)})"
        last = [m for m in messages if not m.startswith(("Add ", "Parse node", "[Warn]"))][-LAST_MESSAGES:]
        said = "; ".join(errors + last) or "none printed"
        raise LibspconvCrash(f"{what}: libspconv {library.version} {how}; its last messages: {said}")
    return run


class CallerServer:
    """Our caller in "serve" mode: the engine is built once, then one request per frame over stdin (the
    library's messages and ours come back on one pipe); a dead child is a `LibspconvCrash` with its last lines."""

    def __init__(self, library: Libspconv, native: NativeBuild, args: list[str], host_side: bool, what: str):
        self.library, self.what = library, what
        env = dict(os.environ, LD_LIBRARY_PATH=_library_path(library, native, host_side), TRTCP_SPCONV_VERBOSE="1")
        self.recent: deque[str] = deque(maxlen=20)
        self.child = subprocess.Popen([str(native.caller), "serve", *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                      env=env, bufsize=1)
        self.messages = self._until("built")

    def _until(self, word: str) -> list[str]:
        """The lines up to our next "trtcp: <word>" line; a crash or an error of ours raises."""
        seen = []
        for raw in self.child.stdout:
            line = raw.rstrip("\n")
            if line.startswith(MARK + word):
                seen.append(line[len(MARK):])
                return seen
            if line.startswith(MARK + "error"):
                self.close()
                raise LibspconvCrash(f"{self.what}: libspconv {self.library.version} stopped: {line[len(MARK):]}")
            if clean(line):
                seen.append(clean(line))
                self.recent.append(clean(line))
        returncode = self.child.wait()
        last = [m for m in self.recent if not m.startswith(("Add ", "Parse node", "[Warn]"))][-LAST_MESSAGES:]
        raise LibspconvCrash(f"{self.what}: libspconv {self.library.version} crashed ({_signal_name(returncode)}); "
                             f"its last messages: {'; '.join(last) or 'none printed'}")

    def request(self, fields: list[str]) -> str:
        """One forward pass; returns our "output DTYPE D0 D1 ..." line."""
        try:
            self.child.stdin.write("\t".join(fields) + "\n")
            self.child.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone: _until reports how
        return self._until("output")[-1]

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.stdin.close()
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
