"""rpn_head.int8.onnx with FP16 float parts (strongly typed TensorRT): float16 everywhere but the INT8
weights / zero points (and the I/O unless fp16_io), opset 19, the same names, ONNX Runtime == PyTorch fake
quant within RPN_HEAD_FP16_TOLERANCE, FP16 overflow refused, and the lint's float16-scale rule."""

import copy
import functools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.export.head.export import RPN_HEAD_INPUT
from trt_centerpoint.export.head.int8 import (
    RPN_HEAD_FP16_TOLERANCE,
    export_rpn_head_int8,
    validate_rpn_head_int8,
)
from trt_centerpoint.export.head.lint import QDQ_RULES
from trt_centerpoint.export.head.passes import PassError, run_passes
from trt_centerpoint.export.head.passes_fp16 import set_opset, to_fp16
from trt_centerpoint.export.lint import lint_model
from trt_centerpoint.export.validate import ValidationError

QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def int8(qmodel, cfg):
    return export_rpn_head_int8(qmodel, cfg)


@pytest.fixture(scope="module")
def fp16(qmodel, cfg):
    return export_rpn_head_int8(qmodel, cfg, fp16=True)


@pytest.fixture(scope="module")
def fp16_io(qmodel, cfg):
    return export_rpn_head_int8(qmodel, cfg, fp16=True, fp16_io=True)


@pytest.fixture(scope="module")
def bevs(qmodel, frames):
    with torch.no_grad():
        real = [qmodel.backbone(f, c, 1) for f, c in frames]
    return [*real, torch.rand_like(real[0]) * float(real[0].max())]  # dense, non-negative (as in the INT8 test)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """{tensor name: elem type} of every typed tensor after strict, type-checked shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _opset(model: onnx.ModelProto) -> int:
    return {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"]


def test_fp16_file_is_float16_inside_with_float32_io(fp16, int8):
    m = fp16.model
    onnx.checker.check_model(m, full_check=True)
    assert _opset(m) == 19 and m.ir_version >= 9 and _opset(int8.model) == 17
    assert _props(m) == {**_props(int8.model), "float_precision": "fp16", "io": "fp32"}
    assert _props(int8.model)["float_precision"] == "fp32" and _props(int8.model)["precision"] == "int8"
    names = [o.name for o in m.graph.output]
    assert names == [o.name for o in int8.model.graph.output] == fp16.output_names == int8.output_names
    assert [i.name for i in m.graph.input] == [RPN_HEAD_INPUT]
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output] == \
        [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in int8.model.graph.output]
    types = _types(m)
    io = {RPN_HEAD_INPUT, *names}
    assert {types[n] for n in io} == {TensorProto.FLOAT}
    inside = {n: t for n, t in types.items() if n not in io}
    assert not [n for n, t in inside.items() if t == TensorProto.FLOAT]
    assert TensorProto.FLOAT16 in inside.values()
    # initializers: float16 or the untouched INT8 weights / zero points, as many as in the float32 file
    kinds = {t.data_type for t in m.graph.initializer}
    assert kinds <= {TensorProto.FLOAT16, TensorProto.INT8, TensorProto.INT64}  # int64: Pad's pads
    int8_before = sorted(numpy_helper.to_array(t).tobytes() for t in int8.model.graph.initializer
                         if t.data_type == TensorProto.INT8)
    assert sorted(numpy_helper.to_array(t).tobytes() for t in m.graph.initializer
                  if t.data_type == TensorProto.INT8) == int8_before
    # Casts exactly at the I/O: the input's only consumer casts to float16, each output is a Cast to float32
    producer = {o: n for n in m.graph.node for o in n.output}
    (first,) = [n for n in m.graph.node if RPN_HEAD_INPUT in n.input]
    assert first.op_type == "Cast" and first.attribute[0].i == TensorProto.FLOAT16
    for name in names:
        cast = producer[name]
        assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT and types[cast.input[0]] == \
            TensorProto.FLOAT16
    assert sum(n.op_type == "Cast" for n in m.graph.node) == 1 + len(names)
    # the Q/DQ structure is the float32 file's, scales rounded to float16
    assert sorted(n.op_type for n in m.graph.node if n.op_type != "Cast") == \
        sorted(n.op_type for n in int8.model.graph.node)
    scales32 = {n.name: numpy_helper.to_array(next(t for t in int8.model.graph.initializer if t.name == n.input[1]))
                for n in int8.model.graph.node if n.op_type in QDQ}
    for node in (n for n in m.graph.node if n.op_type in QDQ):
        scale = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == node.input[1]))
        assert scale.dtype == np.float16 and np.array_equal(scale, scales32[node.name].astype(np.float16))
    assert fp16.passes[-1].name == "to_fp16"
    print(fp16.passes[-1].line())


def test_fp16_io_file_has_float16_input_and_outputs(fp16_io, fp16, qmodel, cfg):
    m = fp16_io.model
    onnx.checker.check_model(m, full_check=True)
    assert _props(m)["io"] == "fp16" and _props(m)["float_precision"] == "fp16" and _opset(m) == 19
    assert [o.name for o in m.graph.output] == fp16.output_names and [i.name for i in m.graph.input] == [RPN_HEAD_INPUT]
    types = _types(m)
    assert set(types.values()) == {TensorProto.FLOAT16, TensorProto.INT8}  # int8: QuantizeLinear outputs
    assert not [n for n in m.graph.node if n.op_type == "Cast"]
    assert not [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT]
    with pytest.raises(ValueError, match="fp16_io=True needs fp16=True"):
        export_rpn_head_int8(qmodel, cfg, fp16_io=True)


def test_onnxruntime_matches_pytorch_fake_quant(fp16, fp16_io, qmodel, bevs):
    for exported in (fp16, fp16_io):
        figures = validate_rpn_head_int8(exported, qmodel, bevs)
        assert figures["tolerance"] == RPN_HEAD_FP16_TOLERANCE and figures["frames"] == 3
        assert figures["max_median_abs_error"] <= RPN_HEAD_FP16_TOLERANCE
        assert figures["checked_segments"] > 10 and set(figures["per_output"]) == set(exported.output_names)
        free = figures["free_running"]
        print(f"{_props(exported.model)['io']} I/O: layer by layer median <= {figures['max_median_abs_error']:.3g}, "
              f"max {figures['max_abs_error']:.3g}; free running median <= {free['max_median_abs_error']:.3g}, "
              f"max {free['max_abs_error']:.3g}")
        for name, f in figures["per_output"].items():
            g = free["per_output"][name]
            print(f"  {name}: median {f['median_abs']:.3g} max {f['max_abs']:.3g} | free median "
                  f"{g['median_abs']:.3g} max {g['max_abs']:.3g}")
    # FP16 is not free: the float32 tolerance would refuse it, and a wrong scale is still caught at 1e-2
    with pytest.raises(ValidationError, match="layer by layer"):
        validate_rpn_head_int8(fp16, qmodel, bevs[:1], tolerance=1e-4)
    broken = copy.deepcopy(fp16)
    graph = broken.model.graph
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and "shared_conv" in n.name
              and "weight" in n.name)
    init = next(t for t in graph.initializer if t.name == dq.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float16(1.5), init.name))
    with pytest.raises(ValidationError, match="differs from PyTorch fake quant on .*layer by layer"):
        validate_rpn_head_int8(broken, qmodel, bevs[:1])


def test_a_weight_beyond_fp16_is_refused_by_name(qmodel, cfg):
    big = copy.deepcopy(qmodel)
    with torch.no_grad():
        big.bbox_head.tasks[0].reg[3].weight[0, 0, 0, 0] = 1e5  # a float (not quantized) conv
    export_rpn_head_int8(big, cfg)  # fine in float32
    with pytest.raises(PassError, match=r"bbox_head\.tasks\.0\.reg\.3\.weight has 1 value\(s\) beyond the FP16 "
                                        r"range \(\|v\| up to 100000 > 65504\)"):
        export_rpn_head_int8(big, cfg, fp16=True)


def _tiny(scale=0.02, extra=()):
    """x -> Q/DQ -> Conv(int8 W) -> Cast(float) -> out, opset 17, float32."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["W", "sw", "z"], ["wd"], name="wdq"),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv"),
             helper.make_node("Cast", ["y"], ["out"], name="cast", to=TensorProto.FLOAT), *extra]
    inits = [numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.ones((2, 3, 1, 1), np.int8), "W"),
             numpy_helper.from_array(np.float32(0.1), "sw"), numpy_helper.from_array(np.ones(2, np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_to_fp16_on_a_hand_built_graph():
    for keep in (True, False):
        out, (report,) = run_passes(_tiny(), [functools.partial(to_fp16, keep_io_fp32=keep)])
        assert set_opset(out) == ["Cast", "DequantizeLinear", "QuantizeLinear"]
        onnx.checker.check_model(out, full_check=True)
        types = _types(out)
        io = TensorProto.FLOAT if keep else TensorProto.FLOAT16
        assert types["x"] == types["out"] == io and [o.name for o in out.graph.output] == ["out"]
        assert types["y"] == TensorProto.FLOAT16
        cast = next(n for n in out.graph.node if n.name == "cast")
        assert cast.attribute[0].i == TensorProto.FLOAT16  # the graph's own Cast to float32, retargeted
        assert {t.name: t.data_type for t in out.graph.initializer} == {
            "s": TensorProto.FLOAT16, "sw": TensorProto.FLOAT16, "b": TensorProto.FLOAT16,
            "z": TensorProto.INT8, "W": TensorProto.INT8}
        assert "1 Cast / dtype targets retargeted" in report.detail
    _, (report,) = run_passes(_tiny(scale=1e-6), [functools.partial(to_fp16, keep_io_fp32=True)])
    assert "subnormal in FP16 (fewer significant bits): s (1)" in report.detail  # kept, but said
    with pytest.raises(PassError, match="Q/DQ scale s has value.* round to 0 in FP16"):
        run_passes(_tiny(scale=1e-9), [functools.partial(to_fp16, keep_io_fp32=True)])
    reduce = helper.make_node("ReduceMean", ["y"], ["unused"], name="mean", axes=[1])
    with pytest.raises(PassError, match="ReduceMean changed meaning between opset 17 and 19"):
        set_opset(_tiny(extra=[reduce]))


def test_lint_accepts_fp16_files_and_flags_fp16_scales_below_opset_19(fp16, fp16_io):
    assert lint_model(fp16.model) == [] and lint_model(fp16_io.model) == []
    old = copy.deepcopy(fp16.model)
    for o in old.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 17
    findings = [f for rule in QDQ_RULES for f in rule(old)]
    qdq = [n.name for n in old.graph.node if n.op_type in QDQ]
    assert sorted(f.where for f in findings) == sorted(qdq)
    assert all("float16 scale" in f.message and "at opset 17" in f.message
               and "takes float16 scales from opset 19 on" in f.message for f in findings)
    print(findings[0].message)
    double = _tiny()
    s = next(t for t in double.graph.initializer if t.name == "s")
    s.CopyFrom(numpy_helper.from_array(np.float64(0.02), "s"))
    assert [(f.where, f.message.split(":")[0]) for rule in QDQ_RULES for f in rule(double)] == \
        [("q", "float64 scale 's'"), ("dq", "float64 scale 's'")]
    assert [f for rule in QDQ_RULES for f in rule(_tiny())] == []
