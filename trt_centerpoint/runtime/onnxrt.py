"""An exported head file (`rpn_head.*.onnx`) on ONNX Runtime's CPU provider, as a Polygraphy runner."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner

from trt_centerpoint.errors import UserError

__all__ = ["OnnxHead", "cpu_session"]


def cpu_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of the file at `path`, loaded now: a bad file is a one-line `UserError`.

    Why not Polygraphy's `SessionFromOnnx`: it loads when the runner is activated (the error would come at the
    first frame, not where the file is named), sets one thread per usable CPU, and leaves ONNX Runtime's
    warning log on. `threads`: None follows torch's thread count (`--threads`), 0 is ONNX Runtime's own choice.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file (run `trt-centerpoint export` first)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types)
        raise UserError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None


class OnnxHead(OnnxrtRunner):
    """A head file on ONNX Runtime (CPU), a Polygraphy `OnnxrtRunner` and so a `HeadRunner`."""

    is_active = False  # until BaseRunner.__init__ runs: its __del__ reads it even when __init__ raised first

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__(cpu_session(path, threads), name=f"onnxruntime:{Path(path).name}")
