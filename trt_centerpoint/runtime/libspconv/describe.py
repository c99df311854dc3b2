"""An scn file as the input of our libspconv 1.1.x caller: a tab-separated text (one node a line) + an FP16 blob.

Why: from 1.1 on the library no longer reads ONNX; NVIDIA's reader needs protobuf and protoc at build time.
We already read the file in Python, so we hand the caller the values NVIDIA's reader would take from each node,
with the same defaults for a missing attribute (0, empty text, empty list, precision "fp16"), in file order.
A name no earlier node produced stays a name: the caller passes a null tensor for it, as NVIDIA's reader does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint_common import attributes, text

__all__ = ["NetDescription", "NotDescribable", "describe_scn"]


class NotDescribable(UserError):
    """The file holds what the EngineBuilder has no call for (NVIDIA's reader stops there too: "Unsupport operator")."""


@dataclass
class NetDescription:
    text: str  # the lines for spconv_run11
    weights: bytes  # every FP16 initializer's raw data, back to back
    notes: list[str]  # what NVIDIA's reader would have printed while reading (e.g. a non-FP16 initializer)


def _ints(values) -> str:
    return ",".join(str(int(v)) for v in values)


def _floats(values) -> str:
    return ",".join(repr(float(v)) for v in values)


def _field(value) -> str:
    out = text(value)
    if "\t" in out or "\n" in out:
        raise NotDescribable(f"name or attribute {out!r} holds a tab or newline")
    return out


class _Blob:
    def __init__(self, model: onnx.ModelProto):
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.parts: list[bytes] = []
        self.size = 0  # in FP16 values
        self.notes: list[str] = []

    def add(self, node: str, name: str) -> tuple[str, int]:
        """(shape field, offset) of an FP16 initializer; an empty shape where NVIDIA's reader gives up."""
        t = self.initializers.get(name)
        if t is None:
            self.notes.append(f"{node}: initializer {name!r} not found (NVIDIA's reader passes empty weights)")
            return "", 0
        if t.data_type != TensorProto.FLOAT16 or len(t.raw_data) != 2 * int(np.prod(t.dims)):
            kind = TensorProto.DataType.Name(t.data_type)
            self.notes.append(f"{node}: initializer {name!r} is {kind} or not FP16 raw data "
                              "(NVIDIA's reader passes empty weights)")
            return "", 0
        offset = self.size
        self.parts.append(t.raw_data)
        self.size += len(t.raw_data) // 2
        return _ints(t.dims), offset


def _precision(a: dict, key: str) -> str:
    return "int8" if text(a.get(key, b"")) == "int8" else "fp16"


def _conv(n: onnx.NodeProto, a: dict, blob: _Blob) -> list:
    wshape, woff = blob.add(n.name, n.input[1]) if len(n.input) > 1 else ("", 0)
    bshape, boff = blob.add(n.name, n.input[2]) if len(n.input) > 2 else ("", 0)
    return ["conv", n.name, n.input[0], n.output[0], _field(a.get("activation", b"")), _precision(a, "precision"),
            _precision(a, "output_precision"), int(a.get("subm", 0)), int(a.get("inverse", 0)),
            int(a.get("output_bound", 0)), _field(a.get("rulebook", b"")), repr(float(a.get("input_dynamic_range", 0))),
            _ints(a.get("kernel_size", [])), _ints(a.get("stride", [])), _ints(a.get("padding", [])),
            _ints(a.get("dilation", [])), wshape, woff, bshape, boff, _floats(a.get("weight_dynamic_ranges", []))]


def _line(n: onnx.NodeProto, blob: _Blob) -> list:
    a = attributes(n)
    op = n.op_type
    if op == "SparseConvolution":
        return _conv(n, a, blob)
    if op in ("Add", "QuantAdd"):
        return ["add", n.name, n.input[0], n.input[1], n.output[0], _precision(a, "precision"),
                _precision(a, "output_precision"), repr(float(a.get("input0_dynamic_range", 0))),
                repr(float(a.get("input1_dynamic_range", 0)))]
    if op == "Relu":
        return ["relu", n.name, n.input[0], n.output[0]]
    if op == "ScatterDense":
        return ["dense", n.name, n.input[0], n.output[0], _field(a.get("format", b"")),
                _ints(a.get("input_spatial_shape", [])), _ints(a.get("output_shape", [])),
                _field(a.get("output_layout", b"")), repr(float(a.get("input_dynamic_range", 0)))]
    if op in ("Reshape", "Transpose"):
        return [op.lower(), n.name, n.input[0], n.output[0], _ints(a.get("dims", []))]
    raise NotDescribable(f"{n.name}: unsupported operator {op!r} (the EngineBuilder has no call for it)")


def describe_scn(model: onnx.ModelProto) -> NetDescription:
    """The description of a libspconv-dialect model; `NotDescribable` for what the builder cannot take."""
    blob = _Blob(model)
    lines = [["input", _field(v.name)] for v in model.graph.input]
    for n in model.graph.node:
        lines.append([_field(x) if isinstance(x, (str, bytes)) else x for x in _line(n, blob)])
    lines += [["output", _field(v.name)] for v in model.graph.output]
    body = "".join("\t".join(str(x) for x in line) + "\n" for line in lines)
    return NetDescription(body, b"".join(blob.parts), blob.notes)
