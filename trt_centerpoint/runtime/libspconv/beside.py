"""libspconv beside our reference runner on one frame, and where they part: `compare --backend libspconv`.

Both executors read the same scn file and the same voxels. When the final outputs differ by more than the
tolerance (relative: max |difference| / max |reference|), the prefix bisection (`prefixes.py`) names the first
layer whose output differs. Never run on a GPU yet: the tolerance is a starting point (FP16 accumulation in the
library against float32 in the reference), to be set from the first GPU runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch

from trt_centerpoint.eval.tensor_metrics import tensor_metrics
from trt_centerpoint.runtime.libspconv.prefixes import first_difference, relative_error
from trt_centerpoint.runtime.libspconv.runner import LibspconvBackbone
from trt_centerpoint.runtime.libspconv.session import SpconvSession
from trt_centerpoint.runtime.scn_runner import ScnRunner

__all__ = ["DEFAULT_TOLERANCE", "libspconv_beside_reference"]

DEFAULT_TOLERANCE = 0.05


def libspconv_beside_reference(path: str | Path, spconv: SpconvSession, features: torch.Tensor,
                               coords: torch.Tensor, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Metrics of libspconv's output against the reference runner's, and the first differing layer if any."""
    path = Path(path)
    reference = ScnRunner(path, precision="fp32").run(features, coords).float().numpy()
    runner = LibspconvBackbone(path, spconv)
    try:
        candidate = runner.run(features, coords).numpy()
    finally:
        runner.close()
    metrics = tensor_metrics(reference, candidate)
    error = relative_error(reference, candidate)
    record = {"file": path.name, "library": spconv.label, "where": spconv.where, "relative_error": error,
              "tolerance": tolerance, **{k: metrics[k] for k in ("cosine", "max_abs", "median_abs", "snr_db")},
              "first_difference": None}
    if error <= tolerance:
        return record
    with tempfile.TemporaryDirectory(prefix="trtcp-prefix-") as tmp:
        counter = iter(range(1 << 30))

        def run_library(prefix: onnx.ModelProto):
            prefix_path = Path(tmp) / f"prefix{next(counter)}.onnx"
            onnx.save(prefix, str(prefix_path))
            prefix_runner = LibspconvBackbone(prefix_path, spconv)
            try:
                return prefix_runner.run(features, coords).numpy()
            finally:
                prefix_runner.close()

        def run_reference(prefix: onnx.ModelProto):
            return ScnRunner(prefix, precision="fp32").run(features, coords).float().numpy()

        found = first_difference(onnx.load(str(path)), run_reference, run_library, tolerance)
    if found.cut is not None:
        record["first_difference"] = {"node": found.cut.node, "tensor": found.cut.tensor,
                                      "relative_error": found.error, "prefixes_run": found.runs}
    return record
