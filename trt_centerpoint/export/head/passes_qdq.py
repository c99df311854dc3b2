"""onnx-graphsurgeon passes over an explicit-quantization (Q/DQ) graph: INT8 weight storage, redundant Q/DQ
removal and Concat scale unification, in the style of `passes.py` (`pass(graph) -> PassReport`, in place).

Why: pytorch-quantization's export writes every quantizer as QuantizeLinear -> DequantizeLinear, weights
included (a float weight quantized at run time), and one Q/DQ pair per quantizer, even where two pairs
quantize the same tensor to the same grid. TensorRT folds most of this itself, but a smaller, plainer file
is easier to lint, to read and to ship; and TensorRT keeps a Concat in INT8 only when all its inputs share
one scale, which `unify_concat_scales` guarantees whatever the calibration gave. A conv that reads a Concat
keeps its own Q/DQ pair (the same shared scale) in front of it, as NVIDIA's ModelOpt places it: TensorRT
moves that Q back through the Concat, and every quantized conv then reads a DequantizeLinear directly.

Every pass keeps ONNX Runtime's output bit for bit (tests check it), except `unify_concat_scales` when
it actually changes a scale (a coarser grid for the inputs that had a smaller one).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trt_centerpoint.export.head.passes import PassReport

__all__ = ["dedupe_qdq", "int8_weights", "qdq_params", "quantize_like_onnx", "unify_concat_scales"]

INT8_MIN, INT8_MAX = -128, 127
CONV_OPS = ("Conv", "ConvTranspose")  # layers TensorRT fuses with the DequantizeLinear they read


def quantize_like_onnx(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear to int8: saturate(round_half_to_even(x / scale) + zero_point), in float32.

    `scale` / `zero_point` are scalars (per tensor) or 1-D along `axis` (per channel), as in the op.
    """
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.size
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape) if zero_point.size == scale.size else zero_point.reshape(())
    q = np.rint(x / scale) + zero_point.astype(np.float32)
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def qdq_params(node: gs.Node) -> tuple | None:
    """A hashable (scale bytes, scale shape, zero point bytes, zero point dtype, axis) of a Q or DQ node
    whose scale and zero point are constants; None when either is computed at run time."""
    scale = node.inputs[1] if len(node.inputs) > 1 else None
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    if not isinstance(scale, gs.Constant) or (zero is not None and not isinstance(zero, gs.Constant)):
        return None
    s = np.asarray(scale.values)
    z = np.asarray(zero.values) if zero is not None else np.zeros((), np.uint8)
    axis = node.attrs.get("axis", 1) if s.size > 1 else None
    return (s.astype(np.float32).tobytes(), s.shape, z.tobytes(), z.dtype.str, axis)


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Make every consumer of `old` read `new` instead; returns how many inputs changed."""
    count = 0
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
                count += 1
    return count


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def _consumers_all(tensor: gs.Tensor, op: str) -> bool:
    return bool(tensor.outputs) and all(n.op == op for n in tensor.outputs)


def _drop(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def int8_weights(graph: gs.Graph) -> PassReport:
    """constant float W -> QuantizeLinear -> DequantizeLinear becomes constant int8 W_q -> DequantizeLinear.

    W_q is what QuantizeLinear would compute at run time (`quantize_like_onnx`), so every consumer sees
    the same values; the weights are stored in one byte instead of four.
    """
    before = len(graph.nodes)
    converted, saved = 0, 0
    outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "QuantizeLinear" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        weight, out = node.inputs[0], node.outputs[0]
        if qdq_params(node) is None or id(out) in outputs or not _consumers_all(out, "DequantizeLinear"):
            continue
        values = np.asarray(weight.values)
        if values.dtype.kind != "f":
            continue
        zero = node.inputs[2].values if len(node.inputs) > 2 else np.zeros((), np.int8)
        if np.asarray(zero).dtype != np.int8:
            continue  # uint8 / other types: leave them to run time
        q = quantize_like_onnx(values, node.inputs[1].values, zero, node.attrs.get("axis", 1))
        stored = gs.Constant(f"{weight.name}_int8", q)
        _replace_uses(out, stored)
        _drop(node)
        converted += 1
        saved += values.nbytes - q.nbytes
    graph.cleanup(remove_unused_graph_inputs=False)
    return PassReport("int8_weights", before, len(graph.nodes),
                      f"{converted} weights stored as int8 ({saved / 1024:.1f} KiB smaller)")


def _on_dq_grid(tensor: gs.Tensor) -> tuple | None:
    """The Q/DQ params of the grid `tensor`'s values lie on exactly: a DequantizeLinear output, or a Concat
    whose inputs all are, with one shared grid (concatenation keeps values). None otherwise."""
    node = _producer(tensor)
    if node is None:
        return None
    if node.op == "DequantizeLinear":
        return qdq_params(node)
    if node.op == "Concat":
        grids = {_on_dq_grid(t) for t in node.inputs}
        if len(grids) == 1:
            (grid,) = grids
            if grid is not None and grid[1] in ((), (1,)):  # per tensor only: channels move in a Concat
                return grid
    return None


def dedupe_qdq(graph: gs.Graph) -> PassReport:
    """Remove Q/DQ that change nothing.

    (a) Q -> DQ on a tensor already on the same int8 grid (a DequantizeLinear output, or a Concat of such
        outputs with one shared scale, as QuantConcat exports) is the identity: its consumers read the
        tensor directly. round(q * s / s) == q for |q| <= 128, so ONNX Runtime's output is unchanged.
        Kept: such a pair after a Concat when a Conv / ConvTranspose reads it. TensorRT fuses a conv
        with the DequantizeLinear it reads; a conv reading the Concat itself runs on whatever TensorRT
        makes of the Concat (ModelOpt keeps this pair; TensorRT moves its Q back through the Concat).
    (b) Several Q with the same parameters on the same tensor are merged into one, then several DQ with
        the same parameters on the same Q output.
    Graph outputs are never rewired (their names are the file's interface).
    """
    before = len(graph.nodes)
    outputs = {id(t) for t in graph.outputs}
    idempotent = kept = 0
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        params = qdq_params(q)
        if params is None or not q.inputs or _on_dq_grid(q.inputs[0]) != params:
            continue
        dqs = list(q.outputs[0].outputs)
        if not dqs or any(n.op != "DequantizeLinear" or qdq_params(n) != params for n in dqs):
            continue
        if any(id(n.outputs[0]) in outputs for n in dqs) or id(q.outputs[0]) in outputs:
            continue
        source = _producer(q.inputs[0])
        if source is not None and source.op == "Concat" and any(
                c.op in CONV_OPS for dq in dqs for c in dq.outputs[0].outputs):
            kept += 1
            continue
        for dq in dqs:
            _replace_uses(dq.outputs[0], q.inputs[0])
            _drop(dq)
        _drop(q)
        idempotent += 1
    merged = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for op in ("QuantizeLinear", "DequantizeLinear"):
        groups: dict[tuple, gs.Node] = {}
        for node in [n for n in graph.nodes if n.op == op]:
            params = qdq_params(node)
            if params is None or not node.inputs or not node.outputs or id(node.outputs[0]) in outputs:
                continue
            key = (id(node.inputs[0]), params)
            keep = groups.setdefault(key, node)
            if keep is node:
                continue
            _replace_uses(node.outputs[0], keep.outputs[0])
            _drop(node)
            merged[op] += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    detail = f"{idempotent} idempotent Q/DQ pairs removed"
    if kept:
        detail += f" ({kept} kept: a conv reads it after a Concat)"
    detail += f"; merged {merged['QuantizeLinear']} duplicate Q, {merged['DequantizeLinear']} duplicate DQ"
    return PassReport("dedupe_qdq", before, len(graph.nodes), detail)


def unify_concat_scales(graph: gs.Graph) -> PassReport:
    """Give every Concat whose inputs are all Q -> DQ outputs one shared scale: the largest (max amax).

    Each input's QuantizeLinear and all DequantizeLinear nodes reading it get the new scale (a fresh
    constant, as scale constants may be shared by unrelated nodes). Inputs quantized per channel, from a
    constant, or with zero points that differ are left alone and named in the report.
    """
    count = len(graph.nodes)
    concats = changed = 0
    skipped: list[str] = []
    for concat in [n for n in graph.nodes if n.op == "Concat"]:
        dqs = [_producer(t) for t in concat.inputs]
        if not dqs or any(d is None or d.op != "DequantizeLinear" for d in dqs):
            continue
        qs = [_producer(d.inputs[0]) for d in dqs]
        usable = all(q is not None and q.op == "QuantizeLinear" and qdq_params(q) is not None
                     and np.asarray(q.inputs[1].values).size == 1 for q in qs)
        usable = usable and all(qdq_params(d) is not None for d in dqs)
        zeros = {qdq_params(q)[2:4] for q in qs} if usable else set()
        if not usable or len(zeros) != 1:
            skipped.append(concat.name)
            continue
        concats += 1
        scales = [float(np.asarray(q.inputs[1].values).reshape(-1)[0]) for q in qs]
        target = max(scales)
        value = np.asarray(target, dtype=np.float32)
        for i, (q, s) in enumerate(zip(qs, scales)):
            if s == target:
                continue
            shared = gs.Constant(f"{concat.name}_unified_scale_{i}", value.copy())
            q.inputs[1] = shared
            for dq in q.outputs[0].outputs:
                if dq.op == "DequantizeLinear":
                    dq.inputs[1] = shared
            changed += 1
    detail = f"{concats} Concat with quantized inputs, {changed} input scales changed to the shared max"
    if skipped:
        detail += f"; left alone (not per-tensor Q -> DQ inputs): {', '.join(skipped)}"
    return PassReport("unify_concat_scales", count, count, detail)
