"""onnx-graphsurgeon passes over the 2D (RPN + head) graph: small functions, each reporting what it changed.

Why passes: `torch.onnx.export` output is close to what TensorRT and CUDA-CenterPoint want but not
exactly; each fix is a separate, tested step, and `export` prints every pass's report so a changed graph
is never a surprise. The INT8 passes (INT8 weight storage, redundant Q/DQ removal, Concat scale
unification) join this module with the INT8 export.

A pass is `pass(graph: gs.Graph) -> PassReport` and edits the graph in place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

__all__ = ["PassError", "PassReport", "cleanup_toposort", "fold_constants", "infer_shapes", "name_and_order_outputs",
           "run_passes"]


class PassError(ValueError):
    """A pass cannot do its job on this graph (e.g. the outputs to name do not match)."""


@dataclass(frozen=True)
class PassReport:
    name: str
    nodes_before: int
    nodes_after: int
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes; {self.detail}"

    def as_dict(self) -> dict:
        return {"pass": self.name, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "detail": self.detail}


def _op_counts(graph: gs.Graph) -> Counter:
    return Counter(node.op for node in graph.nodes)


def _describe_removed(before: Counter, after: Counter) -> str:
    gone = before - after
    return ", ".join(f"{op} x{n}" for op, n in sorted(gone.items())) or "nothing"


def fold_constants(graph: gs.Graph) -> PassReport:
    """Evaluate every subgraph that depends on constants only (shape arithmetic, Constant chains)."""
    before = _op_counts(graph)
    graph.fold_constants().cleanup()
    after = _op_counts(graph)
    return PassReport("fold_constants", sum(before.values()), sum(after.values()),
                      f"removed {_describe_removed(before, after)}")


def _is_static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def infer_shapes(graph: gs.Graph) -> PassReport:
    """Give the graph outputs the shapes ONNX shape inference derives (strict mode).

    Why: the TorchScript exporter leaves symbolic output dims where ZeroPad2d's pads were computed at run
    time; after folding they are constants, and TensorRT and CUDA-CenterPoint's buffer sizing read the
    static shapes from the file.
    """
    count = len(graph.nodes)
    symbolic = [t.name for t in graph.outputs if not _is_static(t.shape)]
    for tensor in graph.outputs:
        tensor.shape = None  # let inference fill them in (a stale symbolic dim would win the merge)
    try:
        inferred = onnx.shape_inference.infer_shapes(gs.export_onnx(graph), strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise PassError(f"shape inference failed: {str(exc).strip().splitlines()[0]}") from None
    shapes = {v.name: v.type.tensor_type.shape.dim for v in inferred.graph.output}
    for tensor in graph.outputs:
        tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shapes[tensor.name]]
    still = [t.name for t in graph.outputs if not _is_static(t.shape)]
    if still:
        raise PassError(f"outputs without a static shape after inference: {', '.join(still)}")
    return PassReport("infer_shapes", count, count,
                      f"{len(graph.outputs)} outputs static ({len(symbolic)} were symbolic)")


def name_and_order_outputs(graph: gs.Graph, names: list[str]) -> PassReport:
    """Make the graph outputs exactly `names`, in that order.

    Outputs already named as wanted are reordered; if none of the names match but the count does, the
    outputs are renamed by position (the exporter's order is the model's return order).
    """
    count = len(graph.nodes)
    current = {t.name: t for t in graph.outputs}
    if len(graph.outputs) != len(names):
        raise PassError(f"the graph has {len(graph.outputs)} outputs, {len(names)} names were given")
    if set(names) == set(current):
        moved = sum(a.name != b for a, b in zip(graph.outputs, names))
        graph.outputs = [current[n] for n in names]
        return PassReport("name_and_order_outputs", count, count, f"{len(names)} outputs, {moved} moved, 0 renamed")
    if set(names) & set(current):
        raise PassError(f"outputs {sorted(current)} match only some of {names}: refusing to guess")
    for tensor, name in zip(graph.outputs, names):
        tensor.name = name
    return PassReport("name_and_order_outputs", count, count, f"{len(names)} outputs, 0 moved, {len(names)} renamed")


def cleanup_toposort(graph: gs.Graph) -> PassReport:
    """Drop nodes and tensors that no output depends on, then sort nodes topologically."""
    before = _op_counts(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    after = _op_counts(graph)
    return PassReport("cleanup_toposort", sum(before.values()), sum(after.values()),
                      f"removed {_describe_removed(before, after)}; sorted")


Pass = Callable[[gs.Graph], PassReport]


def run_passes(model: onnx.ModelProto, passes: list[Pass]) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Import `model` into graphsurgeon, run `passes` in order, export; returns (model, reports)."""
    graph = gs.import_onnx(model)
    reports = [p(graph) for p in passes]
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out, reports
