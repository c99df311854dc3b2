"""Rules for standard ONNX files with explicit quantization (QuantizeLinear / DequantizeLinear), as strongly
typed TensorRT 10/11 takes them; `lint.py` appends `QDQ_RULES` to `RULES["onnx"]`.

Why: a misplaced or malformed Q/DQ does not fail an ONNX Runtime run, it makes TensorRT run a layer in
float (silently slower) or refuse the file on the GPU machine. Each rule is `ModelProto -> list[Finding]`,
one finding per problem, naming the node. A file with no Q/DQ node gets no finding from these rules (an
FP32 file is not half of an INT8 one).

Placement checked here, as TensorRT 10 / 11 and NVIDIA's ModelOpt place Q/DQ: symmetric int8 (zero point
0), per-tensor activations, per-channel weights on the output-channel axis (0 for Conv [K, C, kh, kw], 1 for
ConvTranspose [C_in, C_out, kh, kw]), no Q/DQ on conv outputs, Concat inputs on one shared scale, and every
quantized Conv / ConvTranspose reading a DequantizeLinear directly (after a Concat: a Q/DQ pair of the
Concat's scale between them; TensorRT moves that Q back through the Concat).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from trt_centerpoint.export.lint_common import QDQ_OPS, Finding, attributes

CONV_OPS = ("Conv", "ConvTranspose")
OUTPUT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}  # the weight axis of the output channels
WEIGHT_LAYOUT = {"Conv": "[K, C, kh, kw]", "ConvTranspose": "[C_in, C_out, kh, kw]"}
MIN_OPSET = 13  # per-channel `axis` on QuantizeLinear / DequantizeLinear
HALF_SCALE_OPSET = 19  # float16 / bfloat16 scales (strongly typed FP16 files) on QuantizeLinear / DequantizeLinear

__all__ = ["QDQ_RULES"]


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


class _Graph:
    """Producers and constants of a model's main graph, for the rules below."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.producer = {out: n for n in g.node for out in n.output}
        self.constants: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self.constants[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.constants[n.output[0]] = numpy_helper.to_array(a.t)
        self.has_qdq = any(n.op_type in QDQ_OPS for n in g.node)

    def made_by(self, tensor: str, op: str) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op else None

    def scale(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self.constants.get(node.input[1]) if len(node.input) > 1 else None

    def zero_point(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    def grid(self, tensor: str) -> tuple | None:
        """(scale bytes, zero point bytes) of the int8 grid `tensor` is on, None when not quantized."""
        node = self.producer.get(tensor)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            s, z = self.scale(node), self.zero_point(node)
            return (np.asarray(s, np.float32).tobytes() if s is not None else node.input[1],
                    np.asarray(z).tobytes() if z is not None else b"")
        if node.op_type == "Concat":
            grids = {self.grid(t) for t in node.input}
            if len(grids) == 1 and None not in grids:
                return grids.pop()
        return None

    def weight_shape(self, dq: onnx.NodeProto) -> tuple[int, ...] | None:
        """Shape of the weight a DequantizeLinear dequantizes (constant int8, or constant -> Q)."""
        source = dq.input[0]
        if source in self.constants:
            return self.constants[source].shape
        q = self.made_by(source, "QuantizeLinear")
        if q is not None and q.input[0] in self.constants:
            return self.constants[q.input[0]].shape
        return None


def _qdq_rule(func):
    """Run `func(graph)` only on files that hold Q/DQ nodes."""

    def rule(model: onnx.ModelProto) -> list[Finding]:
        graph = _Graph(model)
        return func(graph) if graph.has_qdq else []

    rule.__name__, rule.__doc__ = func.__name__, func.__doc__
    return rule


@_qdq_rule
def rule_qdq_opset(g: _Graph) -> list[Finding]:
    """Per-channel Q/DQ (`axis`) needs opset >= 13."""
    version = {o.domain or "ai.onnx": o.version for o in g.model.opset_import}.get("ai.onnx", 0)
    if version < MIN_OPSET:
        return [Finding("header", f"opset {version} with QuantizeLinear / DequantizeLinear: per-channel "
                                  f"quantization needs opset >= {MIN_OPSET}")]
    return []


def _opset(model: onnx.ModelProto) -> int:
    return {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx", 0)


@_qdq_rule
def rule_qdq_scale_type(g: _Graph) -> list[Finding]:
    """Scales are float32, or float16 / bfloat16 from opset 19 on (before, the op takes float32 only and
    onnx.checker / TensorRT's parser refuse the file; a DequantizeLinear's output has its scale's type)."""
    version = _opset(g.model)
    out = []
    for node in g.model.graph.node:
        scale = g.scale(node) if node.op_type in QDQ_OPS else None
        if scale is None:
            continue
        kind = np.asarray(scale).dtype.name
        if kind == "float32":
            continue
        if kind in ("float16", "bfloat16"):
            if version < HALF_SCALE_OPSET:
                out.append(Finding(_name(node), f"{kind} scale {node.input[1]!r} at opset {version}: {node.op_type} "
                                                f"takes {kind} scales from opset {HALF_SCALE_OPSET} on (float32 "
                                                "before); set the opset to 19 or store the scale as float32"))
            continue
        out.append(Finding(_name(node), f"{kind} scale {node.input[1]!r}: {node.op_type} takes float32 scales "
                                        f"(float16 / bfloat16 from opset {HALF_SCALE_OPSET} on)"))
    return out


@_qdq_rule
def rule_qdq_scales(g: _Graph) -> list[Finding]:
    """Scales constant, finite and > 0; zero points constant int8 0 (TensorRT quantizes symmetrically)."""
    out = []
    for node in g.model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        scale, zero = g.scale(node), g.zero_point(node)
        if scale is None:
            out.append(Finding(_name(node), "scale is not a constant (TensorRT needs constant Q/DQ scales)"))
        else:
            values = np.asarray(scale, np.float64).reshape(-1)
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                out.append(Finding(_name(node), f"{len(bad)} of {values.size} scale values are not finite and > 0 "
                                                f"(e.g. {bad[0]}): an uncalibrated or broken quantizer"))
        if zero is None:
            out.append(Finding(_name(node), "no constant zero point (the default is uint8; TensorRT needs int8 0)"))
        elif zero.dtype != np.int8 or np.any(zero != 0):
            out.append(Finding(_name(node), f"zero point {zero.dtype} {np.asarray(zero).reshape(-1)[:4].tolist()}: "
                                            "TensorRT takes symmetric quantization only (int8 0)"))
    return out


@_qdq_rule
def rule_conv_inputs_quantized(g: _Graph) -> list[Finding]:
    """Conv / ConvTranspose run in INT8 only with both data and weight from DequantizeLinear; a layer with
    neither quantized is a deliberately float layer and fine, one with only one is a placement mistake.

    A quantized layer must read its data input from a DequantizeLinear directly: TensorRT fuses a conv with
    the DQ it reads. A Concat of DQ outputs in between (even on one shared scale) is flagged: keep a Q/DQ
    pair with the Concat's scale in front of the conv, as ModelOpt does (`dedupe_qdq` keeps it)."""
    out = []
    for node in g.model.graph.node:
        if node.op_type not in CONV_OPS or len(node.input) < 2:
            continue
        data, weight = g.grid(node.input[0]) is not None, g.made_by(node.input[1], "DequantizeLinear") is not None
        if data and not weight:
            out.append(Finding(_name(node), f"data input is quantized but weight {node.input[1]!r} is not a "
                               "DequantizeLinear output: half-quantized layer (TensorRT runs it in float)"))
        elif weight and not data:
            out.append(
                Finding(
                    _name(node),
                    f"weight is quantized but data input {node.input[0]!r} is not a "
                    "DequantizeLinear output: half-quantized layer (TensorRT runs it in float)",
                )
            )
        elif weight and g.made_by(node.input[0], "DequantizeLinear") is None:
            source = g.producer[node.input[0]]
            out.append(Finding(_name(node), f"reads {source.op_type} {_name(source)} ({node.input[0]!r}), not a "
                                            "DequantizeLinear: put a Q/DQ pair with the Concat's shared scale "
                                            f"between them (TensorRT fuses a {node.op_type} only with the "
                                            "DequantizeLinear it reads)"))
    return out


@_qdq_rule
def rule_weight_scales(g: _Graph) -> list[Finding]:
    """Weights per tensor, or per output channel with one scale per channel: Conv [K, C, kh, kw] on axis 0,
    ConvTranspose [C_in, C_out, kh, kw] on axis 1. ConvTranspose axis 0 is the input-channel axis, the one
    the deconvolution sums over: its scales cannot be applied after the INT8 GEMM. A weight with one output
    channel may have a scalar scale (per tensor and per channel are then the same; pytorch-quantization
    exports it so)."""
    out = []
    for node in g.model.graph.node:
        if node.op_type not in CONV_OPS or len(node.input) < 2:
            continue
        dq = g.made_by(node.input[1], "DequantizeLinear")
        scale = g.scale(dq) if dq is not None else None
        shape = g.weight_shape(dq) if dq is not None else None
        if scale is None or shape is None or np.asarray(scale).size <= 1:
            continue  # per tensor, or nothing to check (rule_qdq_scales reports computed scales)
        axis = attributes(dq).get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        size = np.asarray(scale).size
        want = OUTPUT_CHANNEL_AXIS[node.op_type]
        if axis != want:
            out.append(
                Finding(
                    _name(node),
                    f"weight DequantizeLinear {_name(dq)} is per channel on axis {axis}: {node.op_type} weights "
                    f"are quantized per tensor or per output channel (axis {want} of {WEIGHT_LAYOUT[node.op_type]}; "
                    "a weight with one output channel may keep a scalar scale)",
                )
            )
        elif size != shape[want]:
            out.append(
                Finding(
                    _name(node),
                    f"weight DequantizeLinear {_name(dq)} has {size} scales for "
                    f"{shape[want]} output channels (weight shape {list(shape)})",
                )
            )
    return out


@_qdq_rule
def rule_concat_shared_scale(g: _Graph) -> list[Finding]:
    """Concat inputs from DequantizeLinear must share one scale, or TensorRT runs the Concat in float."""
    out = []
    for node in g.model.graph.node:
        if node.op_type != "Concat":
            continue
        scales = {}
        for tensor in node.input:
            dq = g.made_by(tensor, "DequantizeLinear")
            if dq is not None and g.scale(dq) is not None:
                scales[tensor] = np.asarray(g.scale(dq), np.float32).reshape(-1)
        distinct = {v.tobytes() for v in scales.values()}
        if len(distinct) > 1:
            listed = ", ".join(f"{t}: {v[:2].tolist()}" for t, v in scales.items())
            out.append(Finding(_name(node), f"inputs dequantized with {len(distinct)} different scales ({listed}): "
                                            "give them one shared scale (unify_concat_scales)"))
    return out


@_qdq_rule
def rule_no_qdq_on_outputs(g: _Graph) -> list[Finding]:
    """Q/DQ go on layer inputs: a QuantizeLinear right after Conv / ConvTranspose / Gemm cannot be fused by
    TensorRT as placed, and a graph output from DequantizeLinear quantizes what nothing consumes."""
    out = []
    for node in g.model.graph.node:
        if node.op_type != "QuantizeLinear" or not node.input:
            continue
        src = g.producer.get(node.input[0])
        if src is not None and src.op_type in ("Conv", "ConvTranspose", "Gemm"):
            out.append(Finding(_name(node), f"quantizes the output of {src.op_type} {_name(src)}: put Q/DQ on the "
                                            "inputs of the next layer instead"))
    for value in g.model.graph.output:
        dq = g.made_by(value.name, "DequantizeLinear")
        if dq is not None:
            out.append(Finding(_name(dq), f"graph output {value.name!r} is a DequantizeLinear output: Q/DQ on a "
                                          "model output (leave outputs float)"))
    return out


QDQ_RULES = [rule_qdq_opset, rule_qdq_scale_type, rule_qdq_scales, rule_conv_inputs_quantized, rule_weight_scales,
             rule_concat_shared_scale, rule_no_qdq_on_outputs]
