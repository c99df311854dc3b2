"""The GPU-architecture gate: does this libspconv.so carry machine code (SASS) for the GPU it will meet?

No libspconv release carries PTX, so the driver cannot JIT-compile a kernel for a GPU the build has no SASS
for: the program dies at the first launch. CUDA runs SASS built for sm_XY on a GPU of compute capability X.Z
with Z >= Y (same major only), so the question is answered from the library's SASS list (`fatbin.py`) and the
GPU's capability: the one present (torch.cuda), or those named with `--compute-capability X.Y`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.libspconv.fatbin import GpuCode, read_gpu_code
from trt_centerpoint.runtime.libspconv.locate import Libspconv

__all__ = ["GateVerdict", "gate", "gpu_capabilities", "parse_capability"]


@dataclass(frozen=True)
class GateVerdict:
    ok: bool  # False: the library cannot run on (one of) the GPUs
    checked: bool  # False: no GPU here and none named: nothing to compare with
    line: str


def parse_capability(text: str) -> tuple[int, int]:
    """'9.0' -> (9, 0); one UserError line for anything else."""
    match = re.fullmatch(r"\s*(\d+)\.(\d)\s*", str(text))
    if not match:
        raise UserError(f"--compute-capability {text}: expected MAJOR.MINOR, e.g. 8.6, 9.0 or 12.0")
    return int(match.group(1)), int(match.group(2))


def gpu_capabilities(named=()) -> tuple[list[tuple[int, int]], str]:
    """(capabilities, where they come from): the named ones, else every CUDA device torch sees, else none."""
    if named:
        return [parse_capability(c) for c in named], "--compute-capability"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return [tuple(torch.cuda.get_device_capability(i)) for i in range(count)], "the GPU present"
    return [], ""


def runs_on(code: GpuCode, capability: tuple[int, int]) -> int | None:
    """The SASS target CUDA would pick on a GPU of this capability (the newest of the same major with a minor
    not above it), None when there is none."""
    major, minor = capability
    fits = [sm for sm in code.sass if sm // 10 == major and sm % 10 <= minor]
    return max(fits) if fits else None


def gate(library: Libspconv, named=()) -> GateVerdict:
    """One verdict line for the library against the GPU(s); `ok` False when one has no SASS to run."""
    code = read_gpu_code(library.library)
    capabilities, source = gpu_capabilities(named)
    targets = ", ".join(f"sm_{s}" for s in code.sass) or "no SASS at all"
    jit = "no PTX: no JIT" if not code.ptx else f"PTX {', '.join(f'compute_{p}' for p in code.ptx)}"
    head = f"libspconv {library.version} GPU code: {targets} ({jit})"
    if not capabilities:
        return GateVerdict(True, False, f"{head}; no GPU here and no --compute-capability: not gated")
    parts, ok = [], True
    for capability in capabilities:
        name = f"{capability[0]}.{capability[1]}"
        sm = runs_on(code, capability)
        ptx_ok = any(p <= capability[0] * 10 + capability[1] for p in code.ptx)
        if sm is not None:
            parts.append(f"{name} runs sm_{sm}" + ("" if sm == capability[0] * 10 + capability[1] else
                                                   " (same major, binary compatible)"))
        elif ptx_ok:
            parts.append(f"{name} by JIT from PTX")
        else:
            ok = False
            parts.append(f"{name} needs sm_{capability[0]}{capability[1]}: not in this build")
    verdict = "ok" if ok else "refused (use a libspconv built for that GPU: NVIDIA's 1.1.10 was the first with sm_90)"
    return GateVerdict(ok, True, f"{head}; {source} {'; '.join(parts)}: {verdict}")
