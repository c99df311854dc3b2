"""Reading ONNX models from a path, bytes or a ModelProto, with one-line errors for unreadable input."""

from __future__ import annotations

from pathlib import Path

import onnx

from trt_centerpoint.errors import UserError

__all__ = ["load_onnx"]


def load_onnx(source) -> tuple[onnx.ModelProto, str]:
    """(model, name for messages). A missing or unreadable file is a `UserError` naming it."""
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    if isinstance(source, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(source)), "<bytes>"
        except Exception as exc:  # protobuf raises its own DecodeError
            raise UserError(f"<bytes>: not an ONNX model ({type(exc).__name__})") from None
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
