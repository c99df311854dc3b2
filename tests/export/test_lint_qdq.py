"""Q/DQ lint rules: silent on a float file and on the INT8 export, one precise finding per broken placement."""

import copy

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.data.points import iter_frames
from trt_centerpoint.export.head.export import export_rpn_head
from trt_centerpoint.export.head.int8 import export_rpn_head_int8
from trt_centerpoint.export.head.lint import QDQ_RULES
from trt_centerpoint.export.lint import RULES, lint_model
from trt_centerpoint.quant.calibrate import calibrate
from trt_centerpoint.quant.ptq import prepare_model

X = [1, 4, 6, 6]


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _qdq(prefix, src, scale, out, zp="zp", **kw):
    return [helper.make_node("QuantizeLinear", [src, scale, zp], [f"{prefix}_q"], name=f"{prefix}/Q", **kw),
            helper.make_node("DequantizeLinear", [f"{prefix}_q", scale, zp], [out], name=f"{prefix}/DQ", **kw)]


def _model(nodes, inits, outputs=("out",), inputs=(("x", X),), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [*inits, _c("zp", np.int8(0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _good_conv(op="Conv", w_shape=(8, 4, 3, 3), axis=0, scales=8, x_scale=0.02, tail=None):
    """x -> Q/DQ -> op(W int8 -> DQ per channel; `scales=None`: one scalar scale) -> Relu -> out."""
    per_tensor = scales is None
    nodes = [*_qdq("x", "x", "sx", "xd"),
             helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["wd"], name="w/DQ",
                              **({} if per_tensor else {"axis": axis})),
             helper.make_node(op, ["xd", "wd"], ["y"], name="conv"),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    sw = np.float32(0.01) if per_tensor else np.full(scales, 0.01, np.float32)
    zw = np.int8(0) if per_tensor else np.zeros(scales, np.int8)
    inits = [_c("sx", np.float32(x_scale)), _c("Wq", np.ones(w_shape, np.int8)), _c("sw", sw), _c("zw", zw)]
    if tail is not None:
        nodes[-1:] = tail
    return _model(nodes, inits)


def _findings(model):
    return [f for rule in QDQ_RULES for f in rule(model)]


def test_a_correct_hand_built_file_and_a_float_file_have_no_findings():
    assert _findings(_good_conv()) == []
    # ConvTranspose weight [C_in, C_out, kh, kw]: per output channel is axis 1
    assert _findings(_good_conv("ConvTranspose", w_shape=(4, 8, 2, 2), axis=1, scales=8)) == []
    # per tensor, and a scalar scale on a weight with one output channel (per tensor == per channel there)
    assert _findings(_good_conv(scales=None)) == []
    assert _findings(_good_conv("ConvTranspose", w_shape=(4, 8, 2, 2), scales=None)) == []
    assert _findings(_good_conv(w_shape=(1, 4, 3, 3), scales=None)) == []
    assert _findings(_good_conv("ConvTranspose", w_shape=(4, 1, 2, 2), scales=None)) == []
    plain = _model([helper.make_node("Conv", ["x", "W"], ["out"], name="conv")],
                   [_c("W", np.ones((2, 4, 1, 1), np.float32))], opset=11)
    assert _findings(plain) == []  # no Q/DQ at all: nothing to say, whatever the opset
    assert all(rule in RULES["onnx"] for rule in QDQ_RULES)


def test_q_on_a_conv_output():
    tail = [*_qdq("o", "y", "sx", "out")]
    (found, output) = _findings(_good_conv(tail=tail))
    assert found.where == "o/Q" and "quantizes the output of Conv conv" in found.message
    assert output.where == "o/DQ" and "graph output 'out' is a DequantizeLinear output" in output.message


def test_half_quantized_conv():
    model = _model([*_qdq("x", "x", "sx", "xd"), helper.make_node("Conv", ["xd", "W"], ["out"], name="conv")],
                   [_c("sx", np.float32(0.02)), _c("W", np.ones((2, 4, 1, 1), np.float32))])
    (found,) = _findings(model)
    assert found.where == "conv" and "weight 'W' is not a DequantizeLinear output: half-quantized" in found.message
    model = _model([helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["wd"], name="w/DQ", axis=0),
                    helper.make_node("Conv", ["x", "wd"], ["out"], name="conv"),
                    *_qdq("x", "x", "sx", "unused")],
                   [_c("sx", np.float32(0.02)), _c("Wq", np.ones((2, 4, 1, 1), np.int8)),
                    _c("sw", np.full(2, 0.1, np.float32)), _c("zw", np.zeros(2, np.int8))])
    found = [f for f in _findings(model) if f.where == "conv"]
    assert len(found) == 1 and "data input 'x' is not a DequantizeLinear output" in found[0].message


def test_nan_and_zero_scales_and_a_nonzero_zero_point():
    (found,) = _findings(_good_conv(x_scale=float("nan")))[:1]
    assert found.where == "x/Q" and "1 of 1 scale values are not finite and > 0 (e.g. nan)" in found.message
    assert {f.where for f in _findings(_good_conv(x_scale=0.0))} == {"x/Q", "x/DQ"}
    model = _good_conv()
    zp = next(t for t in model.graph.initializer if t.name == "zp")
    zp.CopyFrom(_c("zp", np.int8(3)))
    assert [f.where for f in _findings(model)] == ["x/Q", "x/DQ"]
    assert "symmetric quantization only (int8 0)" in _findings(model)[0].message


def test_per_channel_scale_of_wrong_length_and_axis():
    (found,) = _findings(_good_conv(scales=5))
    assert found.where == "conv" and "has 5 scales for 8 output channels (weight shape [8, 4, 3, 3])" in found.message
    # ConvTranspose axis 0 is the input-channel axis (the reduction axis): refused, whatever the scale count
    (found,) = _findings(_good_conv("ConvTranspose", w_shape=(4, 8, 2, 2), axis=0, scales=4))
    assert found.where == "conv" and found.message.startswith("weight DequantizeLinear w/DQ is per channel on axis 0: "
                                                              "ConvTranspose weights are quantized per tensor or per "
                                                              "output channel (axis 1 of [C_in, C_out, kh, kw]")
    assert "a weight with one output channel may keep a scalar scale" in found.message
    (found,) = _findings(_good_conv("ConvTranspose", w_shape=(4, 8, 2, 2), axis=1, scales=4))
    assert "has 4 scales for 8 output channels (weight shape [4, 8, 2, 2])" in found.message
    (found,) = _findings(_good_conv(axis=1, scales=4))
    assert "per channel on axis 1: Conv weights are quantized per tensor or per output channel (axis 0" in found.message


def _concat_conv(pair_scale=None, weight_quantized=True):
    """x1, x2 -> Q/DQ (one scale) -> Concat [-> Q/DQ (pair_scale)] -> Conv(W) -> out."""
    nodes = [*_qdq("a", "x1", "s", "d1"), *_qdq("b", "x2", "s", "d2"),
             helper.make_node("Concat", ["d1", "d2"], ["cat"], name="concat", axis=1)]
    inits = [_c("s", np.float32(0.05))]
    data = "cat"
    if pair_scale is not None:
        nodes += _qdq("p", "cat", "sp", "cat_dq")
        inits.append(_c("sp", np.float32(pair_scale)))
        data = "cat_dq"
    if weight_quantized:
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["wd"], name="w/DQ", axis=0))
        inits += [_c("Wq", np.ones((2, 8, 1, 1), np.int8)), _c("sw", np.full(2, 0.01, np.float32)),
                  _c("zw", np.zeros(2, np.int8))]
    else:
        inits.append(_c("wd", np.ones((2, 8, 1, 1), np.float32)))
    nodes.append(helper.make_node("Conv", [data, "wd"], ["out"], name="conv"))
    return _model(nodes, inits, inputs=(("x1", X), ("x2", X)))


def test_a_quantized_conv_must_read_a_dequantize_linear_not_a_concat():
    (found,) = _findings(_concat_conv())
    assert found.where == "conv" and found.message.startswith("reads Concat concat ('cat'), not a DequantizeLinear: "
                                                              "put a Q/DQ pair with the Concat's shared scale")
    assert _findings(_concat_conv(pair_scale=0.05)) == []  # ModelOpt's placement: Concat -> Q/DQ -> Conv
    (found,) = _findings(_concat_conv(weight_quantized=False))  # data quantized, weight float: half-quantized
    assert "weight 'wd' is not a DequantizeLinear output: half-quantized" in found.message


def test_concat_with_two_scales_and_old_opset():
    def concat(s2, opset=17):
        nodes = [*_qdq("a", "x1", "s1", "d1"), *_qdq("b", "x2", "s2", "d2"),
                 helper.make_node("Concat", ["d1", "d2"], ["out"], name="concat", axis=1)]
        return _model(nodes, [_c("s1", np.float32(0.05)), _c("s2", np.float32(s2))],
                      inputs=(("x1", X), ("x2", X)), opset=opset)

    assert _findings(concat(0.05)) == []
    (found,) = _findings(concat(0.03))
    assert found.where == "concat" and "inputs dequantized with 2 different scales" in found.message
    assert "unify_concat_scales" in found.message
    (found,) = _findings(concat(0.05, opset=10))
    assert found.where == "header" and "per-channel quantization needs opset >= 13" in found.message


@pytest.fixture(scope="module")
def int8_file(model, cfg, data_dir):
    points = [torch.from_numpy(p) for _, p, _ in iter_frames(data_dir, cfg.voxel.num_point_features)]
    quant, _ = prepare_model(cfg, input_calib="max", model=copy.deepcopy(model))
    calibrate(quant, points[:1], method="max", progress=False)
    return export_rpn_head_int8(quant, cfg).model


def test_exported_files_lint_clean_and_broken_exports_do_not(int8_file, model, cfg):
    assert lint_model(int8_file) == []
    assert lint_model(export_rpn_head(model, cfg).model) == []
    broken = copy.deepcopy(int8_file)
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and "blocks.1.4/_weight" in n.name)
    scale = next(t for t in broken.graph.initializer if t.name == dq.input[1])
    scale.CopyFrom(_c(scale.name, np.full(scale.dims, np.nan, np.float32)))
    conv = next(n for n in broken.graph.node if n.op_type == "Conv" and "shared_conv" in n.name)
    conv.input[1] = "float_weight"
    broken.graph.initializer.append(_c("float_weight", np.ones((16, 32, 3, 3), np.float32)))
    messages = {(f.where, f.message.split(":")[0]) for f in _findings(broken)}
    assert (dq.name, "32 of 32 scale values are not finite and > 0 (e.g. nan)") in messages
    assert any(where == conv.name and "weight 'float_weight' is not" in msg
               for where, msg in ((f.where, f.message) for f in _findings(broken)))
