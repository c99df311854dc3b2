"""How many CPU threads the compute libraries use (torch, and ONNX Runtime, which follows torch here).

Measured on a 2-core machine: idle, two threads make a build about 1.4x faster than one; with other jobs on the
cores, two threads spin against them and are several times slower than one (a demo build 426 s vs 110 s).
So the default looks at the machine: as many threads as there are cores not busy with other work (the 1-minute
load average), at least one. `--threads N` or the environment variable TRT_CENTERPOINT_THREADS overrides it.
"""

from __future__ import annotations

import math
import os

import torch

from trt_centerpoint.errors import UserError

ENV = "TRT_CENTERPOINT_THREADS"

__all__ = ["ENV", "auto_threads", "set_threads"]


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores not busy with other work, rounded to the nearest, at least 1."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def set_threads(requested: int | None) -> int:
    """Apply `requested` (None: the environment variable, else `auto_threads`) to torch; returns the count."""
    if requested is None and os.environ.get(ENV):
        text = os.environ[ENV]
        if not text.isdigit():
            raise UserError(f"{ENV}={text!r}: must be a positive whole number of threads")
        requested = int(text)
    if requested is not None and requested < 1:
        raise UserError(f"--threads {requested}: must be >= 1")
    count = requested if requested is not None else auto_threads()
    torch.set_num_threads(count)
    return count
