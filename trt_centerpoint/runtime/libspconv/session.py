"""A libspconv ready to run: located, gated, our caller compiled, and which CUDA runtime it will load.

`host_side` is True where no GPU is visible to torch: the stand-in CUDA runtime then serves the library's
calls, the whole engine build runs, and no kernel does (every line we print says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trt_centerpoint.runtime.libspconv.compile import NativeBuild, compile_native
from trt_centerpoint.runtime.libspconv.engine import HOST_SIDE
from trt_centerpoint.runtime.libspconv.gate import GateVerdict, gate
from trt_centerpoint.runtime.libspconv.locate import Libspconv, locate_libspconv

__all__ = ["SpconvSession", "open_libspconv"]


@dataclass(frozen=True)
class SpconvSession:
    library: Libspconv
    native: NativeBuild
    host_side: bool
    verdict: GateVerdict

    @property
    def label(self) -> str:
        return f"libspconv {self.library.version}"

    @property
    def where(self) -> str:
        return HOST_SIDE if self.host_side else f"on the GPU ({torch.cuda.get_device_name(0)})"


def open_libspconv(folder: str | Path, capabilities=(), cache: Path | None = None,
                   host_side: bool | None = None) -> SpconvSession:
    """Locate and gate (no compile when the gate refuses: the caller stops there), then compile our caller."""
    library = locate_libspconv(folder)
    verdict = gate(library, capabilities)
    host = (not torch.cuda.is_available()) if host_side is None else host_side
    native = compile_native(library, cache) if verdict.ok else NativeBuild(Path())
    return SpconvSession(library, native, host, verdict)
