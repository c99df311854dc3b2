"""`LibspconvBackbone`: the sparse backbone run by NVIDIA's libspconv on an scn file (a `BackboneRunner`).

The library runs in one child process per runner (our caller in "serve" mode): the engine is built once, each
`run` is one request (voxels in files, the output back in a file), and a crash inside the library is a line,
not a dead pipeline; `close()` ends the child and frees its GPU memory. The output comes back as the graph output's
declared shape ([1, C*D, H, W]; 1.1.x hands the ScatterDense volume back unreshaped). Under the stand-in CUDA
runtime no kernel runs: the output is zeros (or, for some INT8 files, a count no kernel wrote divides: SIGFPE), so
the pipeline asks for a GPU; tests drive the runner host-side on purpose.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint_common import attributes
from trt_centerpoint.runtime.libspconv.engine import caller_args, inference_precision, read_output
from trt_centerpoint.runtime.libspconv.process import CallerServer
from trt_centerpoint.runtime.libspconv.session import SpconvSession

__all__ = ["LibspconvBackbone", "input_grid"]


def input_grid(model: onnx.ModelProto) -> tuple[int, int, int]:
    """The input's spatial shape (z, y, x): the first SparseConvolution's input_spatial_shape."""
    for node in model.graph.node:
        if node.op_type == "SparseConvolution":
            z, y, x = (int(v) for v in attributes(node)["input_spatial_shape"])
            return z, y, x
    raise UserError("the scn file has no SparseConvolution")


class LibspconvBackbone:
    def __init__(self, path: str | Path, spconv: SpconvSession):
        self.path, self.spconv = Path(path), spconv
        self.model = onnx.load(str(self.path))
        self.grid = input_grid(self.model)
        dims = self.model.graph.output[0].type.tensor_type.shape.dim
        self.output_shape = [int(d.dim_value) for d in dims]
        self.name = f"{spconv.label}:{self.path.name}"
        # the reference runner's per-conv active voxel counts and output_bound overflows: libspconv reports none
        self.counts: dict[str, int] = {}
        self.overflows: dict[str, tuple[int, int]] = {}
        self._work: tempfile.TemporaryDirectory | None = None
        self._server: CallerServer | None = None

    @property
    def build_messages(self) -> list[str]:
        return self._server.messages if self._server is not None else []

    def _start(self) -> CallerServer:
        if self._server is None:
            self._work = tempfile.TemporaryDirectory(prefix="trtcp-spconv-")
            args = [*caller_args(self.spconv.library, self.model, self.path, Path(self._work.name)),
                    inference_precision(self.model)]
            self._server = CallerServer(self.spconv.library, self.spconv.native, args, self.spconv.host_side,
                                        str(self.path))
        return self._server

    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        server = self._start()
        work = Path(self._work.name)
        features = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float16)
        np.ascontiguousarray(coords.detach().cpu().numpy(), dtype=np.int32).tofile(work / "indices.bin")
        features.tofile(work / "features.bin")
        line = server.request([str(work / "features.bin"), str(work / "indices.bin"), str(len(features)),
                               str(features.shape[1]), ",".join(str(g) for g in self.grid), str(work / "out.bin")])
        out = read_output(line, work / "out.bin")
        if line.split()[1].lower() == "int8":  # an INT8 ScatterDense output: codes at its input range / 127
            out = out * self._scatter_range() / 127.0
        if out.size != int(np.prod(self.output_shape)):
            raise UserError(f"{self.path}: {self.spconv.label} returned {list(out.shape)}, the file declares "
                            f"{self.output_shape}")
        return torch.from_numpy(out.reshape(self.output_shape).copy())

    def _scatter_range(self) -> float:
        scatter = next(n for n in self.model.graph.node if n.op_type == "ScatterDense")
        value = attributes(scatter).get("input_dynamic_range")
        if not value:
            raise UserError(f"{self.path}: {self.spconv.label} wrote INT8 output, but ScatterDense has no "
                            "input_dynamic_range to read it with")
        return float(value)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._work is not None:
            self._work.cleanup()
            self._work = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit anything may be gone
            pass
