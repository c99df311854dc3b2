"""Where libspconv and our reference runner part: run prefixes of the network, exported as smaller scn files.

libspconv shows its users the final output only. A prefix ends at one tensor of the network (a conv, add or
relu output) and densifies it there with a ScatterDense (+ Reshape to [1, C*D, H, W]), so both executors can
run it and return a comparable array. `first_difference` binary-searches the cut points in file order for the
first one whose outputs differ beyond the tolerance (assuming, as a chain of layers makes likely, that a layer
that differs makes every later one differ); it needs log2(layers) + 1 runs of each executor.
Dense prefixes of early layers hold the whole grid: about C x D x H x W x 2 bytes (nuScenes: 2.7 GB at 16
channels), so this is for a GPU with room or a smaller grid.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from trt_centerpoint.export.lint_common import attributes

__all__ = ["CutPoint", "Difference", "cut_points", "first_difference", "prefix_model", "relative_error"]

SPARSE_OPS = ("SparseConvolution", "Add", "QuantAdd", "Relu")


@dataclass(frozen=True)
class CutPoint:
    index: int  # the node whose output is cut
    node: str
    tensor: str
    spatial: tuple[int, int, int]
    channels: int


@dataclass(frozen=True)
class Difference:
    cut: CutPoint | None  # None: no prefix differs
    error: float  # the metric at that cut (or the largest seen when none differs)
    runs: int  # prefixes run (each by both executors)


def cut_points(model: onnx.ModelProto) -> list[CutPoint]:
    """Every sparse tensor a prefix can end at, in file order, with its spatial shape and channels."""
    shapes: dict[str, tuple[tuple[int, int, int], int]] = {}
    out = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in SPARSE_OPS:
            continue
        a = attributes(node)
        if node.op_type == "SparseConvolution":
            shape = (tuple(int(v) for v in a["output_spatial_shape"]), int(a["out_channels"]))
        elif node.input and node.input[0] in shapes:
            shape = shapes[node.input[0]]
        else:
            continue
        shapes[node.output[0]] = shape
        out.append(CutPoint(index, node.name, node.output[0], *shape))
    return out


def prefix_model(model: onnx.ModelProto, cut: CutPoint) -> onnx.ModelProto:
    """The network up to `cut`, its tensor densified ([1, C*D, H, W] float16): an scn file both executors run."""
    prefix = copy.deepcopy(model)
    keep = list(prefix.graph.node)[:cut.index + 1]
    needed = {i for n in keep for i in n.input}
    del prefix.graph.node[:]
    prefix.graph.node.extend(keep)
    kept_inits = [t for t in prefix.graph.initializer if t.name in needed]
    del prefix.graph.initializer[:]
    prefix.graph.initializer.extend(kept_inits)
    d, h, w = cut.spatial
    dense = [1, cut.channels, d, h, w]
    flat = [1, cut.channels * d, h, w]
    prefix.graph.node.extend([
        helper.make_node("ScatterDense", [cut.tensor], ["prefix_dense"], "prefix_scatter",
                         input_spatial_shape=[d, h, w], format="zyx", output_shape=dense),
        helper.make_node("Reshape", ["prefix_dense"], ["prefix_out"], "prefix_reshape", dims=flat),
    ])
    del prefix.graph.output[:]
    prefix.graph.output.append(helper.make_tensor_value_info("prefix_out", TensorProto.FLOAT16, flat))
    return prefix


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |reference - candidate| / max |reference|: layers' magnitudes differ by orders, the cut's does not."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(reference), initial=0.0)), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(reference - candidate), initial=0.0)) / scale


def first_difference(model: onnx.ModelProto, run_reference: Callable[[onnx.ModelProto], np.ndarray],
                     run_candidate: Callable[[onnx.ModelProto], np.ndarray], tolerance: float,
                     metric: Callable[[np.ndarray, np.ndarray], float] = relative_error) -> Difference:
    """The first cut point whose prefix outputs differ by more than `tolerance` (binary search)."""
    cuts = cut_points(model)
    errors: dict[int, float] = {}

    def differs(i: int) -> bool:
        if i not in errors:
            prefix = prefix_model(model, cuts[i])
            errors[i] = metric(run_reference(prefix), run_candidate(prefix))
        return errors[i] > tolerance

    low, high = 0, len(cuts) - 1
    if not cuts or not differs(high):
        return Difference(None, max(errors.values(), default=0.0), len(errors))
    while low < high:
        mid = (low + high) // 2
        if differs(mid):
            high = mid
        else:
            low = mid + 1
    return Difference(cuts[low], errors[low], len(errors))
