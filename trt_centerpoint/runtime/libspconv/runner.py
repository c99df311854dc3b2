"""`LibspconvBackbone`: the sparse backbone run by NVIDIA's libspconv on an scn file (a `BackboneRunner`).

Each `run` is one child process (build + forward): slow per frame, but a crash inside the library is a line,
not a dead pipeline, and the GPU memory is freed with the process. The output comes back as the graph output's
declared shape ([1, C*D, H, W]; 1.1.x hands the ScatterDense volume back unreshaped). Under the stand-in CUDA
runtime no kernel runs: the output is zeros (FP16) or the library divides by a zero count (INT8, SIGFPE), so
the pipeline asks for a GPU; tests drive the runner host-side on purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint_common import attributes
from trt_centerpoint.runtime.libspconv.engine import forward
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
        model = onnx.load(str(self.path))
        self.grid = input_grid(model)
        dims = model.graph.output[0].type.tensor_type.shape.dim
        self.output_shape = [int(d.dim_value) for d in dims]
        self.name = f"{spconv.label}:{self.path.name}"
        self.last_build = None  # the library's messages of the last run

    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        out, self.last_build = forward(self.spconv.library, self.spconv.native, self.path,
                                       features.detach().cpu().numpy(), coords.detach().cpu().numpy(), self.grid,
                                       self.spconv.host_side)
        if out.size != int(np.prod(self.output_shape)):
            raise UserError(f"{self.path}: {self.spconv.label} returned {list(out.shape)}, the file declares "
                            f"{self.output_shape}")
        return torch.from_numpy(out.reshape(self.output_shape).copy())
