"""Rules for scn files: what NVIDIA libspconv's open-source ONNX parser accepts, checked without a GPU.

A file with QuantizeLinear / DequantizeLinear nodes is the Q/DQ form (`scn.int8.qdq.onnx`, for a
plugin-based TensorRT path, not for libspconv): it is held to the same rules, except opset >= 13, INT8
weight initializers behind a per-output-channel DequantizeLinear, float32 scales / int8 zero points, and
int8 layers taking their ranges from Q/DQ inputs instead of attributes.

Each rule is a function `ModelProto -> list[Finding]`; `SCN_RULES` is the ordered list `lint.py` runs.
A finding names the node (or initializer / graph) and says what is wrong and, where it helps, the fix.
"""

from __future__ import annotations

import math

import onnx
from onnx import AttributeProto, TensorProto

from trt_centerpoint.export.lint_common import QDQ_OPS, Finding, attributes, text

A = AttributeProto
DIALECT_OPS = ("SparseConvolution", "Add", "QuantAdd", "Relu", "ScatterDense", "Reshape", "Transpose")
ACTIVATIONS = ("ReLU", "None")
PRECISIONS = ("int8", "fp16")

CONV_REQUIRED = {
    "ndim": A.INT, "input_spatial_shape": A.INTS, "output_spatial_shape": A.INTS, "in_channels": A.INT,
    "out_channels": A.INT, "kernel_size": A.INTS, "stride": A.INTS, "padding": A.INTS, "dilation": A.INTS,
    "output_padding": A.INTS, "transposed": A.INT, "inverse": A.INT, "groups": A.INT, "subm": A.INT,
    "rulebook": A.STRING, "activation": A.STRING, "output_bound": A.INT, "input_shape": A.INTS,
    "output_shape": A.INTS,
}
CONV_OPTIONAL = {"input_dynamic_range": A.FLOAT, "weight_dynamic_ranges": A.FLOATS, "precision": A.STRING,
                 "output_precision": A.STRING, "fixed_launch_points": A.INT}
ADD_OPTIONAL = {"input0_dynamic_range": A.FLOAT, "input1_dynamic_range": A.FLOAT, "precision": A.STRING,
                "output_precision": A.STRING, "fixed_launch_points": A.INT}
SCATTER_REQUIRED = {"input_spatial_shape": A.INTS, "format": A.STRING, "output_shape": A.INTS}
SCATTER_OPTIONAL = {"input_dynamic_range": A.FLOAT, "output_layout": A.STRING, "fixed_launch_points": A.INT}
DIMS_REQUIRED = {"dims": A.INTS}
SPEC = {  # op type -> (required, optional)
    "SparseConvolution": (CONV_REQUIRED, CONV_OPTIONAL),
    "Add": ({}, ADD_OPTIONAL),
    "QuantAdd": ({}, ADD_OPTIONAL),
    "Relu": ({}, {}),
    "ScatterDense": (SCATTER_REQUIRED, SCATTER_OPTIONAL),
    "Reshape": (DIMS_REQUIRED, {}),
    "Transpose": (DIMS_REQUIRED, {}),
}
TYPE_NAMES = {A.INT: "int", A.INTS: "ints", A.FLOAT: "float", A.FLOATS: "floats", A.STRING: "string"}

__all__ = ["DIALECT_OPS", "QDQ_OPS", "SCN_RULES", "is_qdq"]


def is_qdq(model: onnx.ModelProto) -> bool:
    """True for the Q/DQ form of a scn file."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def _dq_sources(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor -> the DequantizeLinear node producing it."""
    return {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}


def _node(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type}>"


def rule_header(model: onnx.ModelProto) -> list[Finding]:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if is_qdq(model):
        if not versions.get("ai.onnx", 0) >= 13:
            return [
                Finding(
                    "header",
                    f"opset import ai.onnx {versions.get('ai.onnx', 'missing')}: Q/DQ with per-axis scales needs >= 13",
                )
            ]
        return []
    if versions.get("ai.onnx") != 11:
        found = versions.get("ai.onnx", "missing")
        return [Finding("header", f"opset import ai.onnx {found}, the scn dialect uses 11")]
    return []


def rule_io(model: onnx.ModelProto) -> list[Finding]:
    g, out = model.graph, []
    for kind, values, rank in (("input", g.input, 2), ("output", g.output, 4)):
        if len(values) != 1:
            out.append(Finding("graph", f"{len(values)} graph {kind}s, libspconv takes exactly one"))
            continue
        t = values[0].type.tensor_type
        if t.elem_type != TensorProto.FLOAT16:
            dtype = TensorProto.DataType.Name(t.elem_type)
            out.append(Finding(f"{kind} {values[0].name}", f"{dtype}, must be FLOAT16"))
        if len(t.shape.dim) != rank:
            out.append(Finding(f"{kind} {values[0].name}", f"rank {len(t.shape.dim)}, expected {rank}"))
    return out


def rule_ops(model: onnx.ModelProto) -> list[Finding]:
    allowed = DIALECT_OPS + (QDQ_OPS if is_qdq(model) else ())
    return [Finding(_node(n), f"unsupported operator {n.op_type!r} (libspconv accepts {', '.join(DIALECT_OPS)})")
            for n in model.graph.node if n.op_type not in allowed]


def rule_names(model: onnx.ModelProto) -> list[Finding]:
    seen, out = set(), []
    for n in model.graph.node:
        if not n.name:
            out.append(Finding(f"<unnamed {n.op_type}>", "node without a name"))
        elif n.name in seen:
            out.append(Finding(n.name, "node name used twice"))
        seen.add(n.name)
    return out


def rule_initializers(model: onnx.ModelProto) -> list[Finding]:
    out = []
    qdq_inputs = {i for n in model.graph.node if n.op_type in QDQ_OPS for i in n.input}
    for t in model.graph.initializer:
        where = f"initializer {t.name}"
        if t.name in qdq_inputs:  # Q/DQ form: INT8 weights, float32 scales, int8 zero points
            if t.data_type not in (TensorProto.INT8, TensorProto.FLOAT):
                out.append(Finding(where, f"{TensorProto.DataType.Name(t.data_type)} in a Q/DQ node, "
                                          "expected INT8 codes / zero points or FLOAT scales"))
            elif t.data_type == TensorProto.FLOAT:
                values = onnx.numpy_helper.to_array(t)
                if not (values > 0).all() or not math.isfinite(float(values.max(initial=0.0))):
                    out.append(Finding(where, "Q/DQ scale not finite and > 0"))
            elif t.name.endswith("zero_point") and onnx.numpy_helper.to_array(t).any():
                out.append(Finding(where, "non-zero zero point (TensorRT INT8 is symmetric)"))
            continue
        if t.data_type != TensorProto.FLOAT16:
            dtype = TensorProto.DataType.Name(t.data_type)
            out.append(Finding(where, f"{dtype}, libspconv's parser takes FLOAT16 only"))
        elif len(t.raw_data) != 2 * math.prod(t.dims):
            out.append(Finding(where, f"raw_data holds {len(t.raw_data)} bytes, {2 * math.prod(t.dims)} expected "
                                      "(libspconv reads FP16 raw_data only)"))
    return out


def rule_attributes(model: onnx.ModelProto) -> list[Finding]:
    """Required attributes present with the right types; no attribute of a known name with a wrong type."""
    out = []
    for n in model.graph.node:
        if n.op_type not in SPEC:
            continue
        required, optional = SPEC[n.op_type]
        have = {a.name: a.type for a in n.attribute}
        for name, kind in required.items():
            if name not in have:
                out.append(Finding(_node(n), f"missing required attribute {name!r} ({TYPE_NAMES[kind]})"))
        for name, kind in {**required, **optional}.items():
            if name in have and have[name] != kind:
                out.append(
                    Finding(
                        _node(n),
                        f"attribute {name!r} is {TYPE_NAMES.get(have[name], have[name])}, must be {TYPE_NAMES[kind]}",
                    )
                )
    return out


def _check_range(node: str, name: str, value, out: list[Finding], positive: bool = False) -> None:
    if not math.isfinite(value):
        out.append(Finding(node, f"{name} is {value} (must be finite)"))
    elif value < 0 or (positive and value == 0):
        out.append(Finding(node, f"{name} is {value} (must be {'> 0' if positive else '>= 0'})"))


def rule_values(model: onnx.ModelProto) -> list[Finding]:
    """Attribute values libspconv can use: geometry lengths, activation, precision, finite ranges."""
    out = []
    qdq, dq = is_qdq(model), _dq_sources(model)
    for n in model.graph.node:
        a, where = attributes(n), _node(n)
        for key in ("precision", "output_precision"):
            if key in a and text(a[key]) not in PRECISIONS:
                out.append(Finding(where, f"{key} {text(a[key])!r} (must be one of {', '.join(PRECISIONS)})"))
        int8 = text(a.get("precision", "")) == "int8"
        if n.op_type == "SparseConvolution":
            ndim = a.get("ndim", 3)
            for key in ("input_spatial_shape", "output_spatial_shape", "kernel_size", "stride", "padding", "dilation"):
                if key in a and isinstance(a[key], list) and len(a[key]) != ndim:
                    out.append(Finding(where, f"{key} has {len(a[key])} values, ndim is {ndim}"))
            for key, least in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
                if isinstance(a.get(key), list) and any(v < least for v in a[key]):
                    out.append(Finding(where, f"{key} {a[key]} (every value must be >= {least})"))
            if "activation" in a and text(a["activation"]) not in ACTIVATIONS:
                allowed = ", ".join(ACTIVATIONS)
                out.append(Finding(where, f"activation {text(a['activation'])!r} (must be one of {allowed})"))
            if a.get("groups", 1) != 1:
                out.append(Finding(where, f"groups {a['groups']} (libspconv supports 1)"))
            if isinstance(a.get("output_bound"), int) and a["output_bound"] <= 0:
                out.append(Finding(where, f"output_bound {a['output_bound']} (must be > 0)"))
            if "input_dynamic_range" in a:
                _check_range(where, "input_dynamic_range", a["input_dynamic_range"], out, positive=int8)
            if "weight_dynamic_ranges" in a:
                ranges, cout = a["weight_dynamic_ranges"], a.get("out_channels")
                if isinstance(cout, int) and len(ranges) != cout:
                    out.append(Finding(where, f"weight_dynamic_ranges has {len(ranges)} values, out_channels is {cout} "
                                              "(one per output channel)"))
                bad = [i for i, v in enumerate(ranges) if not math.isfinite(v) or v < 0]
                if bad:
                    out.append(Finding(where, f"weight_dynamic_ranges[{bad[0]}] is {ranges[bad[0]]} "
                                              f"({len(bad)} value(s) not finite and >= 0)"))
            if int8 and qdq:
                for index, role in ((0, "input features"), (1, "weight")):
                    if len(n.input) > index and n.input[index] not in dq:
                        out.append(
                            Finding(
                                where,
                                f"precision int8 but its {role} {n.input[index]!r} are not a DequantizeLinear output",
                            )
                        )
            elif int8:
                for key in ("input_dynamic_range", "weight_dynamic_ranges"):
                    if key not in a:
                        out.append(Finding(where, f"precision int8 without {key} (not calibrated)"))
        elif n.op_type in ("Add", "QuantAdd"):
            for index, key in enumerate(("input0_dynamic_range", "input1_dynamic_range")):
                if key in a:
                    _check_range(where, key, a[key], out, positive=int8)
                elif int8 and qdq:
                    if len(n.input) > index and n.input[index] not in dq:
                        out.append(Finding(where, f"precision int8 but input {index} is not a DequantizeLinear output"))
                elif int8:
                    out.append(Finding(where, f"precision int8 without {key} (not calibrated)"))
        elif n.op_type == "ScatterDense":
            if "format" in a and text(a["format"]) not in ("zyx", "xyz"):
                out.append(Finding(where, f"format {text(a['format'])!r} (must be 'zyx' or 'xyz')"))
            if "input_dynamic_range" in a:
                _check_range(where, "input_dynamic_range", a["input_dynamic_range"], out)
    return out


def rule_relu_after_conv(model: onnx.ModelProto) -> list[Finding]:
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        src = producer.get(n.input[0]) if n.op_type == "Relu" and n.input else None
        if src is not None and src.op_type == "SparseConvolution":
            out.append(Finding(_node(n), f"Relu right after SparseConvolution {_node(src)}: libspconv takes no Relu "
                                         f"after a conv; fuse it ({_node(src)} activation 'ReLU')"))
    return out


def _check_weight_dq(node: onnx.NodeProto, inits: dict, cout, where: str, out: list[Finding]):
    """The INT8 weight initializer behind a DequantizeLinear (per output channel, axis 0); None if broken."""
    codes = inits.get(node.input[0])
    scale = inits.get(node.input[1]) if len(node.input) > 1 else None
    if codes is None or scale is None or codes.data_type != TensorProto.INT8:
        out.append(Finding(where, f"weight DequantizeLinear {_node(node)} must read an INT8 initializer and a scale"))
        return None
    axis = attributes(node).get("axis", 1)
    if list(scale.dims) != [cout] or axis != 0:
        out.append(Finding(where, f"weight scale of shape {list(scale.dims)} on axis {axis}: one scale per output "
                                  f"channel ([{cout}], axis 0) expected"))
    return codes


def rule_conv_weights(model: onnx.ModelProto) -> list[Finding]:
    inits = {t.name: t for t in model.graph.initializer}
    dq = _dq_sources(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "SparseConvolution":
            continue
        a, where = attributes(n), _node(n)
        if len(n.input) != 3:
            out.append(Finding(where, f"{len(n.input)} inputs, libspconv reads (x, weight, bias)"))
            continue
        cin, cout, k = a.get("in_channels"), a.get("out_channels"), a.get("kernel_size")
        for index, role in ((1, "weight"), (2, "bias")):
            t = inits.get(n.input[index])
            if t is None and role == "weight" and n.input[index] in dq:
                t = _check_weight_dq(dq[n.input[index]], inits, cout, where, out)
                if t is None:
                    continue
            if t is None:
                out.append(Finding(where, f"{role} {n.input[index]!r} is not an initializer"))
                continue
            want = [cout] if role == "bias" else [cout, *(k or []), cin]
            if None not in want and list(t.dims) != want:
                out.append(
                    Finding(
                        where,
                        f"{role} {t.name} has shape {list(t.dims)}, expected {want} ([out, kz, ky, kx, in] / [out])",
                    )
                )
    return out


def _conv_out_spatial(a: dict, spatial: list[int]) -> list[int]:
    if a.get("subm"):
        return list(spatial)
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(spatial, a["kernel_size"], a["stride"], a["padding"], a["dilation"])]


def rule_dataflow(model: onnx.ModelProto) -> list[Finding]:
    """Inputs defined before use; spatial shapes and channels chain from the input to ScatterDense."""
    g, out = model.graph, []
    known: dict[str, tuple] = {}  # tensor -> ("sparse", spatial, channels) | ("dense", shape)
    for value in g.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        known[value.name] = ("sparse", None, dims[-1] if dims else None)
    rulebooks: dict[str, tuple] = {}
    constants = {t.name for t in g.initializer}
    for n in g.node:
        a, where = attributes(n), _node(n)
        if n.op_type in QDQ_OPS and n.input and n.input[0] in constants:  # a Q/DQ of a weight
            constants.update(n.output)
            continue
        data = n.input[:1] if n.op_type in ("SparseConvolution",) + QDQ_OPS else n.input
        undefined = [name for name in data if name not in known]
        if undefined:
            out.append(Finding(where, f"input {undefined[0]!r} is not produced by an earlier node or the graph input"))
            known.update((name, ("unknown",)) for name in n.output)  # one finding, not one per later node
            continue
        ins = [known[name] for name in data]
        try:
            result = _flow(n, a, where, ins, out, rulebooks)
        except (KeyError, TypeError, ValueError):  # attributes missing / mistyped: reported by other rules
            result = None
        for name in n.output:
            known[name] = result if result is not None else ("unknown",)
    for value in g.output:
        if value.name not in known:
            out.append(Finding(f"output {value.name}", "not produced by any node"))
            continue
        got = known[value.name]
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if got[0] == "dense" and dims and list(got[1]) != dims:
            out.append(Finding(f"output {value.name}", f"declared {dims}, the graph computes {list(got[1])}"))
    return out


def _sparse_input(first, a, where, out):
    """(declared input_spatial_shape, channels) of a node fed by a sparse tensor; None if it is not one."""
    if first[0] != "sparse":
        out.append(Finding(where, "input is not a sparse tensor"))
        return None
    _, spatial, channels = first
    declared = list(a["input_spatial_shape"])
    if spatial is not None and declared != list(spatial):
        out.append(Finding(where, f"input_spatial_shape {declared}, but its input has spatial shape {list(spatial)}"))
    return declared, channels


def _flow(n, a, where, ins, out, rulebooks):
    if any(i[0] == "unknown" for i in ins):  # an earlier finding already covers it
        return None
    if n.op_type in QDQ_OPS:  # quantizing features keeps their shape
        return ins[0]
    if n.op_type == "SparseConvolution":
        checked = _sparse_input(ins[0], a, where, out)
        if checked is None:
            return None
        declared, channels = checked
        if channels is not None and a["in_channels"] != channels:
            out.append(Finding(where, f"in_channels {a['in_channels']}, but its input has {channels} channels"))
        if not a.get("subm") and any(v < 1 for key in ("stride", "dilation") for v in a[key]):
            return None  # reported by rule_values; the output geometry is undefined
        expected = _conv_out_spatial(a, declared)
        if list(a["output_spatial_shape"]) != expected:
            out.append(
                Finding(
                    where, f"output_spatial_shape {list(a['output_spatial_shape'])}, the conv geometry gives {expected}"
                )
            )
        book = text(a.get("rulebook", ""))
        if book:
            key = (declared, a.get("subm"), list(a["kernel_size"]))
            if rulebooks.setdefault(book, key) != key:
                out.append(Finding(where, f"rulebook {book!r} is shared with a conv of other shape / kind / kernel"))
        # downstream checks use the declared shape: one wrong node gives findings on that node only
        return ("sparse", list(a["output_spatial_shape"]), a["out_channels"])
    if n.op_type in ("Add", "QuantAdd"):
        if len(ins) != 2 or any(i[0] != "sparse" for i in ins):
            out.append(Finding(where, "Add needs two sparse inputs"))
            return None
        if ins[0][1:] != ins[1][1:] and None not in (ins[0][1], ins[1][1]):
            out.append(Finding(where, f"adds tensors of spatial shape / channels {list(ins[0][1])}/{ins[0][2]} and "
                                      f"{list(ins[1][1])}/{ins[1][2]}"))
        return ins[0]
    if n.op_type == "Relu":
        return ins[0]
    if n.op_type == "ScatterDense":
        checked = _sparse_input(ins[0], a, where, out)
        if checked is None:
            return None
        declared, channels = checked
        shape = list(a["output_shape"])
        if len(shape) != 2 + len(declared) or shape[1] != channels or shape[2:] != declared:
            out.append(Finding(where, f"output_shape {shape}, expected [B, {channels}, *{declared}]"))
        return ("dense", shape)
    dims = list(a["dims"])
    if ins[0][0] != "dense":
        out.append(Finding(where, f"{n.op_type} of a sparse tensor (only after ScatterDense)"))
        return None
    if n.op_type == "Reshape":
        if math.prod(dims) != math.prod(ins[0][1]):
            out.append(Finding(where, f"dims {dims} ({math.prod(dims)} values) do not fit {list(ins[0][1])}"))
        return ("dense", dims)
    if sorted(dims) != list(range(len(ins[0][1]))):
        out.append(Finding(where, f"dims {dims} is not a permutation of {len(ins[0][1])} axes"))
        return None
    return ("dense", [ins[0][1][d] for d in dims])


SCN_RULES = [rule_header, rule_io, rule_ops, rule_names, rule_initializers, rule_attributes, rule_values,
             rule_relu_after_conv, rule_conv_weights, rule_dataflow]
