"""Fused sparse backbone -> `scn.fp16.onnx` in the dialect NVIDIA libspconv's ONNX parser reads.

Why by hand: the dialect's ops (SparseConvolution, ScatterDense, ...) are not ONNX ops, so the graph is
written node by node from the backbone walk (`walk.py`), with `onnx.helper`.

File layout (what libspconv's parser reads, plus what our linter and runner check):
- header: opset ("ai.onnx", 11), IR version 6, producer "trt-centerpoint";
- graph input `voxels` [num_voxels, C_in] FLOAT16 (indices go to the engine separately), output `bev`
  [1, C * D, H, W] FLOAT16;
- initializers `spconv{i}.weight` [out, kz, ky, kx, in] and `spconv{i}.bias` [out], FLOAT16 raw data;
  every conv has a bias (BN folded);
- nodes `conv{i}` (SparseConvolution), `add{i}`, `relu{i}`, `scatter0` (ScatterDense, format "zyx"),
  `reshape0`; counters per op type, in forward order. Tensors are named after the module path that
  produces them ("conv2.3.conv1"), so per-layer comparisons line up with the PyTorch model; each node's
  doc_string holds that path too.
- `input_shape` / `output_shape` (informational in libspconv) are [-1, C]: the voxel count is dynamic.
INT8 attributes are added only when `quant` is given (see `int8_spec.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from trt_centerpoint import __version__
from trt_centerpoint.errors import UserError
from trt_centerpoint.export.scn.output_bound import LayerBound, plan_output_bounds
from trt_centerpoint.export.scn.spec import AddQuant, ConvQuant, Int8SpecError, check_amax
from trt_centerpoint.export.scn.walk import SparseOp, walk_backbone

SCN_INPUT = "voxels"
SCN_OUTPUT = "bev"
SCN_OPSET = ("ai.onnx", 11)
SCN_IR_VERSION = 6
FP16_MAX = 65504.0
DEFAULT_MAX_VOXELS = 160000  # det3d's test-time max_voxels, used for fallback bounds when none is given

__all__ = ["SCN_INPUT", "SCN_OUTPUT", "ScnExport", "ScnExportError", "export_scn"]


class ScnExportError(UserError):
    """The backbone cannot be written in the dialect (a weight overflows FP16, a range is missing)."""


@dataclass
class ScnExport:
    model: onnx.ModelProto
    node_paths: dict[str, str]  # node name -> module path ("conv3" -> "conv2.3.conv1")
    bounds: dict[str, LayerBound] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def _fp16_initializer(tensor, name: str) -> TensorProto:
    array = tensor.detach().cpu().double().numpy()
    worst = float(np.abs(array).max()) if array.size else 0.0
    if not worst <= FP16_MAX:  # also catches NaN
        raise ScnExportError(f"{name}: values up to {worst:.4g} do not fit FP16 (max {FP16_MAX:g})")
    return numpy_helper.from_array(array.astype(np.float16), name)  # raw_data, as libspconv's parser requires


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _conv_attributes(op: SparseOp, bound: int) -> dict:
    conv = op.module
    return {
        "ndim": int(conv.ndim),
        "input_spatial_shape": _ints(op.in_spatial),
        "output_spatial_shape": _ints(op.out_spatial),
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "kernel_size": _ints(conv.kernel_size),
        "stride": _ints(conv.stride),
        "padding": _ints(conv.padding),
        "dilation": _ints(conv.dilation),
        "output_padding": _ints(conv.output_padding),
        "transposed": int(bool(conv.transposed)),
        "inverse": int(bool(conv.inverse)),
        "groups": int(conv.groups),
        "subm": int(bool(conv.subm)),
        "rulebook": conv.indice_key or "",
        "activation": "ReLU" if op.relu else "None",
        "output_bound": int(bound),
        "input_shape": [-1, int(conv.in_channels)],
        "output_shape": [-1, int(conv.out_channels)],
    }


def _quant_attributes(op: SparseOp, quant: Mapping | None, missing: list[str]) -> dict:
    if quant is None:
        return {}
    spec = quant.get(op.path)
    if spec is None:
        missing.append(op.path)
        return {}
    if op.kind == "conv":
        if not isinstance(spec, ConvQuant):
            raise Int8SpecError(f"{op.path}: expected a ConvQuant, got {type(spec).__name__}")
        return spec.attributes(op.path, op.out_channels)
    if not isinstance(spec, AddQuant):
        raise Int8SpecError(f"{op.path}: expected an AddQuant, got {type(spec).__name__}")
    return spec.attributes(op.path)


def export_scn(fused: nn.Module, *, sparse_shape=None, output_bounds: Mapping[str, int] | None = None,
               max_voxels: int = DEFAULT_MAX_VOXELS, quant: Mapping[str, ConvQuant | AddQuant] | None = None,
               scatter_input_amax: float | None = None) -> ScnExport:
    """Write a fused backbone (`fuse_relu.fuse_backbone`) as a libspconv scn model.

    output_bounds: max output voxels per conv path (from `output_bound.plan_output_bounds`); a conv
    without one gets the safe bound for `max_voxels` input voxels. quant: INT8 specs per conv / add path
    (None: the FP16 file); an INT8 export missing a layer's spec is an error naming the layers.
    """
    ops = walk_backbone(fused, sparse_shape)
    plan = plan_output_bounds(ops, max_voxels)
    for path, bound in (output_bounds or {}).items():
        if path not in plan:
            raise ScnExportError(f"output bound for {path!r}, which is not a sparse conv of this backbone")
        plan[path] = LayerBound(path, int(bound), None, plan[path].safe, "given")

    names = {0: SCN_INPUT}
    nodes, initializers, node_paths, missing = [], [], {}, []
    counters: dict[str, int] = {}

    def node_name(kind: str) -> str:
        index = counters.get(kind, 0)
        counters[kind] = index + 1
        return f"{kind}{index}"

    for op in ops:
        inputs = [names[t] for t in op.inputs]
        if op.kind == "conv":
            name = node_name("conv")
            index = name[len("conv"):]
            initializers.append(_fp16_initializer(op.module.weight, f"spconv{index}.weight"))
            initializers.append(_fp16_initializer(op.module.bias, f"spconv{index}.bias"))
            inputs += [f"spconv{index}.weight", f"spconv{index}.bias"]
            attrs = {**_conv_attributes(op, plan[op.path].bound), **_quant_attributes(op, quant, missing)}
            op_type, out_name = "SparseConvolution", op.path
        elif op.kind == "add":
            name, op_type, out_name = node_name("add"), "Add", op.path
            attrs = _quant_attributes(op, quant, missing)
        elif op.kind == "relu":
            name, op_type, out_name, attrs = node_name("relu"), "Relu", op.path, {}
        elif op.kind == "scatter":
            name, op_type, out_name = node_name("scatter"), "ScatterDense", "dense"
            attrs = {"input_spatial_shape": _ints(op.in_spatial), "format": "zyx",
                     "output_shape": _ints(op.dense_shape)}
            if scatter_input_amax is not None:
                attrs["input_dynamic_range"] = check_amax(scatter_input_amax, "scatter.input_amax")
        else:  # reshape
            name, op_type, out_name = node_name("reshape"), "Reshape", SCN_OUTPUT
            attrs = {"dims": _ints(op.dense_shape)}
        names[op.output] = out_name
        node_paths[name] = op.path or op.kind
        nodes.append(helper.make_node(op_type, inputs, [out_name], name, doc_string=op.path or None, **attrs))

    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise Int8SpecError(f"INT8 export: no calibrated ranges for {len(missing)} layer(s): {shown}")

    first_conv = next(op for op in ops if op.kind == "conv")
    graph = helper.make_graph(
        nodes, "scn",
        inputs=[helper.make_tensor_value_info(SCN_INPUT, TensorProto.FLOAT16, ["num_voxels", first_conv.in_channels])],
        outputs=[helper.make_tensor_value_info(SCN_OUTPUT, TensorProto.FLOAT16, _ints(ops[-1].dense_shape))],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid(*SCN_OPSET)],
                              producer_name="trt-centerpoint", producer_version=__version__)
    model.ir_version = SCN_IR_VERSION
    helper.set_model_props(model, {"trt_centerpoint.format": "libspconv-scn",
                                   "trt_centerpoint.precision": "int8" if quant is not None else "fp16"})
    return ScnExport(model, node_paths, plan)
