"""FP16 float parts for a Q/DQ graph, the form a strongly typed TensorRT build (10.12+ / 11) takes literally.

Why: a strongly typed network takes every tensor's type from the ONNX file instead of choosing precisions
itself: a DequantizeLinear's output has its scale's type, a Conv runs in the type of its inputs. To run
the float parts of an INT8 file (the float reg.3 convs, the Relu / Pad / Concat between quantizers, the
Conv bias adds) in FP16, the file itself must say float16 everywhere: Q/DQ scales (float16 scales need
opset >= 19), float weights and biases, every float tensor. `to_fp16` does that in place, in the style of
`passes.py` (`pass(graph) -> PassReport`); `set_opset` then raises the model's opset for the scales.

What stays: INT8 weights and int8 zero points (not float), the file's input and output names and order.
With `keep_io_fp32` the graph input stays float32 and is cast to float16 right after it, and every graph
output stays float32 behind a Cast from float16 (the consumer's buffers do not change).
Refused (PassError, naming the tensor): a float value beyond FP16's range (|v| > 65504 rounds to inf),
a nonzero Q/DQ scale that rounds to 0 in FP16, a graph with subgraphs (If / Loop bodies are not walked),
and in `set_opset` an operator whose definition changed incompatibly between the two opsets.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.defs
import onnx_graphsurgeon as gs

from trt_centerpoint.export.head.passes import PassError, PassReport

__all__ = ["FP16_MAX", "FP16_OPSET", "set_opset", "to_fp16"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = float(np.finfo(np.float16).tiny)  # 6.1e-5: smallest normal; below it FP16 loses relative precision
FP16_OPSET = 19  # QuantizeLinear / DequantizeLinear take float16 scales from opset 19 on
FP16_IR_VERSION = 9  # the IR version that goes with opset 19

# Operators whose schema changed between opset 17 and 19 only by new types, or by new attributes / optional
# inputs whose defaults keep the old meaning: a file using them is read the same at either opset.
# (Not here, so refused: Reduce* other than ReduceSum, whose `axes` moved from attribute to input in 18.)
_SAME_MEANING_17_TO_19 = frozenset({
    "AveragePool",  # 19: dilations (default 1)
    "Cast", "CastLike", "QuantizeLinear", "DequantizeLinear",  # 19: float8 types, saturate (float8 only)
    "Constant", "Equal", "Identity", "If", "Loop", "Reshape", "Scan", "Shape", "Size",  # 19: types only
    "Pad",  # 18: optional `axes` input; 19: "wrap" mode
    "Resize",  # 18: antialias / axes / keep_aspect_ratio_policy (defaults: old behaviour); 19: a new mode
    "Split",  # 18: optional `num_outputs`
    "ScatterElements", "ScatterND",  # 18: max / min reductions
})

_FLOAT = onnx.TensorProto.FLOAT
_FLOAT16 = onnx.TensorProto.FLOAT16


def _is_float32(dtype) -> bool:
    """graphsurgeon keeps a dtype as a NumPy dtype or an ONNX enum (or None when unknown)."""
    if dtype is None:
        return False
    if isinstance(dtype, int):
        return dtype == _FLOAT
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:
        return False


def _fp16_values(name: str, values: np.ndarray, is_scale: bool) -> tuple[np.ndarray, int]:
    """(values as float16, how many nonzero values became subnormal or 0); PassError on overflow."""
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    overflow = np.isfinite(values) & ~np.isfinite(half)
    if overflow.any():
        worst = float(np.abs(values[overflow]).max())
        raise PassError(f"to_fp16: {name} has {int(overflow.sum())} value(s) beyond the FP16 range "
                        f"(|v| up to {worst:.6g} > {FP16_MAX:g}): cannot store it as float16")
    nonzero = values != 0
    if is_scale and np.any(nonzero & (half == 0)):
        worst = float(np.abs(values[nonzero & (half == 0)]).min())
        raise PassError(f"to_fp16: Q/DQ scale {name} has value(s) that round to 0 in FP16 (e.g. {worst:.3g}): "
                        "a zero scale is invalid")
    tiny = int(np.sum(nonzero & (np.abs(half.astype(np.float32)) < FP16_TINY)))
    return half, tiny


def _scale_names(graph: gs.Graph) -> set[str]:
    return {n.inputs[1].name for n in graph.nodes
            if n.op in ("QuantizeLinear", "DequantizeLinear") and len(n.inputs) > 1}


def _convert_constant(const: gs.Constant, scales: set[str], counts: dict) -> bool:
    """Make a float32 gs.Constant float16 in place; True when it changed."""
    if not _is_float32(const.dtype):
        return False
    is_scale = const.name in scales
    half, tiny = _fp16_values(const.name, np.asarray(const.values), is_scale)
    const.values = half
    const.export_dtype = None
    counts["scales" if is_scale else "constants"] += 1
    counts["bytes"] += half.nbytes
    if tiny:
        counts["subnormal"].append(f"{const.name} ({tiny})")
    return True


def _cast(name: str, src: gs.Tensor, dst: gs.Tensor, to: int) -> gs.Node:
    return gs.Node("Cast", name=name, attrs={"to": to}, inputs=[src], outputs=[dst])


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _keep_io_fp32(graph: gs.Graph) -> tuple[list[int], int, int]:
    """Cast float32 graph inputs to float16 right after them and graph outputs back to float32 right before
    them (same names, same order). Returns (ids of the float32 I/O tensors, inputs cast, outputs cast)."""
    taken = set(graph.tensors())
    taken |= {n.name for n in graph.nodes if n.name}
    kept, n_in, n_out = [], 0, 0
    for inp in graph.inputs:
        if not _is_float32(inp.dtype):
            continue
        half = gs.Variable(_unique(f"{inp.name}_fp16", taken), dtype=np.float16, shape=inp.shape)
        for node in list(inp.outputs):
            for k, tensor in enumerate(node.inputs):
                if tensor is inp:
                    node.inputs[k] = half
        graph.nodes.append(_cast(_unique(f"{inp.name}/Cast_to_fp16", taken), inp, half, _FLOAT16))
        kept.append(id(inp))
        n_in += 1
    inputs = {id(t) for t in graph.inputs}
    for i, out in enumerate(list(graph.outputs)):
        if not _is_float32(out.dtype) or id(out) in inputs or isinstance(out, gs.Constant):
            continue  # an input passed through, or a constant output: nothing is computed in FP16 there
        name = out.name
        out.name = _unique(f"{name}_fp16", taken)
        out.dtype = np.float16
        final = gs.Variable(name, dtype=np.float32, shape=out.shape)
        graph.nodes.append(_cast(_unique(f"{name}/Cast_to_fp32", taken), out, final, _FLOAT))
        graph.outputs[i] = final
        kept.append(id(final))
        n_out += 1
    return kept, n_in, n_out


def to_fp16(graph: gs.Graph, keep_io_fp32: bool) -> PassReport:
    """Every float32 constant (initializers, Constant / ConstantOfShape values, Q/DQ scales) and every float32
    tensor becomes float16; Cast nodes (and `dtype` attributes) targeting float32 target float16. INT8
    weights and zero points are left as they are. With `keep_io_fp32`, float32 graph inputs and outputs
    stay float32 with a Cast next to them (module doc). The opset is the caller's: `set_opset`.
    """
    before = len(graph.nodes)
    for node in graph.nodes:
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and any(isinstance(x, gs.Graph) for x in v))
               for v in node.attrs.values()):
            raise PassError(f"to_fp16: {node.op} {node.name} has a subgraph: not supported")
    scales = _scale_names(graph)
    counts = {"scales": 0, "constants": 0, "bytes": 0, "subnormal": []}
    retargeted = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            _convert_constant(tensor, scales, counts)
    for node in graph.nodes:
        if node.op == "Constant":
            for key in ("value_float", "value_floats"):
                if key in node.attrs:  # a float32 scalar / list attribute: make it a float16 `value` tensor
                    values = np.asarray(node.attrs.pop(key), dtype=np.float32)
                    node.attrs["value"] = gs.Constant(f"{node.name}_value", values)
        for key, value in node.attrs.items():
            if isinstance(value, gs.Constant):
                _convert_constant(value, scales, counts)
            elif key == "to" and node.op == "Cast" and value == _FLOAT:
                node.attrs[key] = _FLOAT16
                retargeted += 1
            elif key == "dtype" and value == _FLOAT:  # RandomNormal, EyeLike, ...
                node.attrs[key] = _FLOAT16
                retargeted += 1
    kept, n_in, n_out = _keep_io_fp32(graph) if keep_io_fp32 else ([], 0, 0)
    kept_ids = set(kept)
    tensors = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in kept_ids and _is_float32(tensor.dtype):
            tensor.dtype = np.float16
            tensors += 1
    graph.toposort()
    detail = (f"{counts['scales']} Q/DQ scales and {counts['constants']} other float constants to float16 "
              f"({counts['bytes'] / 1024:.1f} KiB), {tensors} typed float tensors to float16, {retargeted} Cast / "
              "dtype targets retargeted; ")
    detail += (f"I/O kept float32: {n_in} input Cast(s) to float16, {n_out} output Cast(s) to float32"
               if keep_io_fp32 else "I/O float16")
    if counts["subnormal"]:
        shown = counts["subnormal"][:4]
        more = len(counts["subnormal"]) - len(shown)
        detail += (f"; subnormal in FP16 (fewer significant bits): {', '.join(shown)}"
                   + (f" and {more} more" if more else ""))
    return PassReport("to_fp16", before, len(graph.nodes), detail)


def set_opset(model: onnx.ModelProto, version: int = FP16_OPSET) -> list[str]:
    """Raise the default-domain opset of `model` in place (and its IR version to one that allows it).

    Only a relabelling: no node is rewritten, so every operator whose definition changed between the two
    opsets must be one whose old use means the same (`_SAME_MEANING_17_TO_19`); anything else is a
    PassError naming it. Returns the changed operators found, for the record.
    """
    opsets = {o.domain or "ai.onnx": o for o in model.opset_import}
    current = opsets.get("ai.onnx")
    old = current.version if current is not None else 0
    if old > version:
        raise PassError(f"set_opset: the model has opset {old}, newer than {version}")
    if old < 17 and old != version:
        raise PassError(f"set_opset: only opset 17 -> {version} is checked here (the model has {old})")

    def since(op: str, v: int) -> int | None:
        try:
            return onnx.defs.get_schema(op, v).since_version
        except onnx.defs.SchemaError:
            return None

    changed = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")
                      and since(n.op_type, old) != since(n.op_type, version)})
    refused = [op for op in changed if op not in _SAME_MEANING_17_TO_19]
    if refused:
        raise PassError(f"set_opset: {', '.join(refused)} changed meaning between opset {old} and {version}: "
                        "re-export instead of relabelling")
    if current is None:
        model.opset_import.append(onnx.helper.make_opsetid("", version))
    else:
        current.version = version
    model.ir_version = max(model.ir_version, FP16_IR_VERSION)
    return changed
