"""`scn.int8.onnx` (ranges as attributes) -> `scn.int8.qdq.onnx` (the same sparse graph in explicit Q/DQ form).

Why: libspconv reads INT8 as dynamic-range attributes, but a plugin-based TensorRT path (custom sparse
conv plugins inside a standard network) reads precision from QuantizeLinear / DequantizeLinear, the
standard ONNX way. The rewrite is mechanical, so both files describe one model:

- every int8 SparseConvolution: its input features go through QuantizeLinear -> DequantizeLinear with
  scale `input_dynamic_range / 127`; its weight becomes an INT8 initializer `spconv{i}.weight_int8`
  [out, kz, ky, kx, in] -> DequantizeLinear (axis 0, scale `weight_dynamic_ranges / 127` per output
  channel), whose output keeps the old name `spconv{i}.weight`; the bias stays FP16;
- every int8 Add: a Q/DQ pair on each input with its range;
- the dynamic-range attributes are dropped (the Q/DQ carry them); `precision` / `output_precision` stay
  as hints; fp16 layers, Relu, ScatterDense and Reshape are unchanged;
- opset 13 (per-axis DequantizeLinear), zero points int8 0; scales computed by `fake_quant.qdq_scale`,
  the values `quantize_int8` uses, which is why the reference runner executes both files identically.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from trt_centerpoint.export.lint_common import attributes, text
from trt_centerpoint.export.scn.fake_quant import EPSILON, qdq_scale, quantize_int8
from trt_centerpoint.export.scn.spec import Int8SpecError

QDQ_OPSET = ("ai.onnx", 13)
_RANGE_ATTRS = ("input_dynamic_range", "weight_dynamic_ranges", "input0_dynamic_range", "input1_dynamic_range")

__all__ = ["QDQ_OPSET", "scn_to_qdq"]


def _scalar_scale(amax: float, where: str) -> np.ndarray:
    if not amax > EPSILON:
        raise Int8SpecError(f"{where}: activation range {amax} is zero: no Q/DQ scale (recalibrate)")
    return qdq_scale(np.float32(amax))


def scn_to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The Q/DQ form of an int8 scn model (a new ModelProto; `model` is not changed)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_inits = [t for t in graph.initializer]
    nodes: list[onnx.NodeProto] = []
    changed = 0

    def add_qdq(tensor: str, owner: str, tag: str, amax: float) -> str:
        scale, zero = f"{owner}.{tag}_scale", f"{owner}.{tag}_zero_point"
        new_inits.append(numpy_helper.from_array(_scalar_scale(amax, f"{owner} {tag}"), scale))
        new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zero))
        quantized, out = f"{owner}.{tag}_int8", f"{owner}.{tag}_dq"
        nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], f"{owner}_{tag}_q"))
        nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [out], f"{owner}_{tag}_dq"))
        return out

    for node in graph.node:
        a = attributes(node)
        int8 = text(a.get("precision", "fp16")) == "int8"
        if not int8 or node.op_type not in ("SparseConvolution", "Add", "QuantAdd"):
            nodes.append(node)
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.attribute[:]
        new.attribute.extend(attr for attr in node.attribute if attr.name not in _RANGE_ATTRS)
        if node.op_type == "SparseConvolution":
            if "input_dynamic_range" not in a or "weight_dynamic_ranges" not in a:
                raise Int8SpecError(f"{node.name}: int8 without dynamic ranges (not calibrated)")
            new.input[0] = add_qdq(node.input[0], node.name, "input", float(a["input_dynamic_range"]))
            weight_name = node.input[1]
            weight = torch.from_numpy(numpy_helper.to_array(inits[weight_name]).astype(np.float32))
            ranges = np.asarray(a["weight_dynamic_ranges"], dtype=np.float32)
            codes = quantize_int8(weight, ranges, axis=0).numpy()
            new_inits[:] = [t for t in new_inits if t.name != weight_name]
            new_inits.append(numpy_helper.from_array(codes, f"{weight_name}_int8"))
            new_inits.append(numpy_helper.from_array(qdq_scale(ranges), f"{weight_name}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(len(ranges), np.int8), f"{weight_name}_zero_point"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{weight_name}_int8", f"{weight_name}_scale",
                                                              f"{weight_name}_zero_point"], [weight_name],
                                          f"{node.name}_weight_dq", axis=0))
        else:
            for index in (0, 1):
                new.input[index] = add_qdq(node.input[index], node.name, f"input{index}",
                                           float(a[f"input{index}_dynamic_range"]))
        nodes.append(new)
        changed += 1

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(new_inits)
    del out.opset_import[:]
    out.opset_import.extend([helper.make_operatorsetid(*QDQ_OPSET)])
    props = {p.key: p.value for p in model.metadata_props}
    props.update({"trt_centerpoint.precision": "int8-qdq", "trt_centerpoint.qdq_layers": str(changed)})
    helper.set_model_props(out, props)
    return out

