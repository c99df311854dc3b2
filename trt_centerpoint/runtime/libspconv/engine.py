"""One scn file through NVIDIA's libspconv: the engine build (`check`) and a forward pass (the backend).

1.0.x reads the ONNX file itself; for 1.1.x we write the description `describe.py` makes next to the inputs.
Inference precision is Int8 when any layer asks for int8 (per-layer precisions then apply), else Float16, as
NVIDIA's samples choose it. What the library prints is kept: its error lines are findings, the rest context.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trt_centerpoint.export.lint_common import attributes, text
from trt_centerpoint.runtime.libspconv.compile import NativeBuild
from trt_centerpoint.runtime.libspconv.describe import describe_scn
from trt_centerpoint.runtime.libspconv.locate import Libspconv
from trt_centerpoint.runtime.libspconv.process import run_caller

__all__ = ["EngineBuild", "HOST_SIDE", "build_engine", "caller_args", "forward", "inference_precision", "read_output"]

HOST_SIDE = "host-side build only: no kernel ran"
ERROR_WORDS = re.compile(r"error:|Assert failed|Can not|Invalid|Unsupport", re.IGNORECASE)
NODE_SIZE = re.compile(r"Node size: (\d+)")


@dataclass
class EngineBuild:
    nodes: int | None  # the library's node count after its own fusions ("Node size: N")
    errors: list[str]  # the library's error lines while building (it may still return an engine)
    messages: list[str]


def inference_precision(model: onnx.ModelProto) -> str:
    layers = (text(attributes(n).get("precision", b"")) for n in model.graph.node)
    return "int8" if any(p == "int8" for p in layers) else "fp16"


def caller_args(library: Libspconv, model: onnx.ModelProto, path: Path, work: Path) -> list[str]:
    """The network part of the caller's command line: the file (1.0.x), or description + weights (1.1.x)."""
    if library.api == "1.0":
        return [str(path)]
    described = describe_scn(model)
    (work / "net.txt").write_text(described.text)
    (work / "weights.bin").write_bytes(described.weights)
    return [str(work / "net.txt"), str(work / "weights.bin")]


def _result(run) -> EngineBuild:
    sizes = [int(m.group(1)) for line in run.messages if (m := NODE_SIZE.search(line))]
    errors = [line for line in run.messages if ERROR_WORDS.search(line) and not line.startswith("[Warn]")]
    return EngineBuild(sizes[-1] if sizes else None, errors, run.messages)


def build_engine(library: Libspconv, native: NativeBuild, path: str | Path, host_side: bool) -> EngineBuild:
    """NVIDIA's parse + engine build of one scn file; a crash is a `LibspconvCrash` line naming the file."""
    path = Path(path)
    model = onnx.load(str(path))
    with tempfile.TemporaryDirectory(prefix="trtcp-spconv-") as tmp:
        args = ["build", *caller_args(library, model, path, Path(tmp)), inference_precision(model)]
        run = run_caller(library, native, args, host_side, str(path))
    return _result(run)


def forward(library: Libspconv, native: NativeBuild, path: str | Path, features: np.ndarray, coords: np.ndarray,
            grid: tuple[int, int, int], host_side: bool) -> tuple[np.ndarray, EngineBuild]:
    """One frame (features [N, C], coords [N, 4] batch, z, y, x) -> the library's output (float32) and its log."""
    path = Path(path)
    model = onnx.load(str(path))
    features = np.ascontiguousarray(features, dtype=np.float16)
    coords = np.ascontiguousarray(coords, dtype=np.int32)
    with tempfile.TemporaryDirectory(prefix="trtcp-spconv-") as tmp:
        work = Path(tmp)
        (work / "features.bin").write_bytes(features.tobytes())
        (work / "indices.bin").write_bytes(coords.tobytes())
        args = ["forward", *caller_args(library, model, path, work), inference_precision(model),
                str(work / "features.bin"), str(work / "indices.bin"), str(len(features)), str(features.shape[1]),
                ",".join(str(int(g)) for g in grid), str(work / "out.bin")]
        run = run_caller(library, native, args, host_side, str(path))
        line = next((line for line in run.ours if line.startswith("output ")), None)
        if line is None:
            raise ValueError("our caller reported no output")
        out = read_output(line, work / "out.bin")
    return out, _result(run)


def read_output(line: str, path: Path) -> np.ndarray:
    """Our caller's "output DTYPE D0 D1 ..." line + the raw file it wrote -> a float32 array of that shape."""
    fields = line.split()
    dtype, shape = fields[1], [int(d) for d in fields[2:]]
    array = np.fromfile(path, dtype=np.int8 if dtype.lower() == "int8" else np.float16)
    return array.reshape(shape).astype(np.float32)
