"""The INT8 graphsurgeon passes on small hand-built Q/DQ graphs: what they change, what they leave, and that
ONNX Runtime computes the same before and after."""

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.export.head.lint import QDQ_RULES
from trt_centerpoint.export.head.passes import run_passes
from trt_centerpoint.export.head.passes_qdq import (
    dedupe_qdq,
    int8_weights,
    quantize_like_onnx,
    unify_concat_scales,
)

SHAPE = [1, 4, 6, 6]


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _qdq(prefix, source, scale_name, out, axis=None, zp="zp"):
    kw = {} if axis is None else {"axis": axis}
    return [helper.make_node("QuantizeLinear", [source, scale_name, zp], [f"{prefix}_q"], name=f"{prefix}/Q", **kw),
            helper.make_node("DequantizeLinear", [f"{prefix}_q", scale_name, zp], [out], name=f"{prefix}/DQ", **kw)]


def _model(nodes, inits, outputs, inputs=(("x", SHAPE),), opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [*inits, _const("zp", np.int8(0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model, feeds=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if feeds is None:
        rng = np.random.default_rng(0)
        feeds = {i.name: (rng.normal(size=i.shape) * 2).astype(np.float32) for i in sess.get_inputs()}
    return sess.run(None, feeds)


def _conv_model(weight_scale_axis0=True):
    """x -> Q/DQ -> Conv(W -> Q/DQ per channel) -> Relu -> out."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    # exact ties: x / scale == k + 0.5 must round to even, as ONNX does
    w[0, 0, 0, :] = w_scale[0] * np.array([0.5, 1.5, -2.5], np.float32)
    nodes = [*_qdq("x", "x", "x_scale", "x_dq"), *_qdq("w", "W", "w_scale", "w_dq", axis=0, zp="w_zp"),
             helper.make_node("Conv", ["x_dq", "w_dq", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["out"], name="relu")]
    inits = [_const("W", w), _const("w_scale", w_scale), _const("w_zp", np.zeros(8, np.int8)),
             _const("x_scale", np.float32(0.02)),
             _const("B", rng.normal(size=8).astype(np.float32))]
    return _model(nodes, inits, ["out"])


def test_quantize_like_onnx_matches_onnxruntime():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=500) * 3, np.arange(-300, 300) * 0.5 * 0.25]).astype(np.float32)  # ties
    scale = np.float32(0.25)
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [x.size])],
                              [_const("s", scale), _const("zp", np.int8(0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (want,) = _run(model, {"x": x})
    got = quantize_like_onnx(x, scale, np.int8(0))
    assert np.array_equal(got, want)
    assert {-128, 127} <= set(got.tolist())  # saturation reached, both ends
    assert quantize_like_onnx(np.float32([0.5, 1.5, 2.5]), np.float32(1), np.int8(0)).tolist() == [0, 2, 2]


def test_int8_weights_stores_int8_and_keeps_onnxruntime_bit_identical():
    model = _conv_model()
    out, (report,) = run_passes(model, [int8_weights])
    assert report.nodes_before - report.nodes_after == 1 and "1 weights stored as int8" in report.detail
    inits = {t.name: t for t in out.graph.initializer}
    assert "W" not in inits and inits["W_int8"].data_type == TensorProto.INT8
    dq = next(n for n in out.graph.node if n.name == "w/DQ")
    assert dq.input[0] == "W_int8" and helper.get_attribute_value(dq.attribute[0]) == 0
    assert out.ByteSize() < model.ByteSize() - 3 * 8 * 4 * 9 * 0.9
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)


def test_int8_weights_leaves_activations_and_int8_weights_alone():
    model = _conv_model()
    once, _ = run_passes(model, [int8_weights])
    twice, (report,) = run_passes(once, [int8_weights])
    assert report.nodes_before == report.nodes_after and report.detail.startswith("0 weights")
    assert any(n.name == "x/Q" for n in twice.graph.node)  # x is an input, quantized at run time


def _double_qdq_model(second_scale):
    """x -> Q/DQ (0.02) -> Q/DQ (second_scale) -> Conv (float weight) -> out."""
    nodes = [*_qdq("a", "x", "s1", "a_dq"), *_qdq("b", "a_dq", "s2", "b_dq"),
             helper.make_node("Conv", ["b_dq", "W"], ["out"], name="conv")]
    inits = [_const("s1", np.float32(0.02)), _const("s2", np.float32(second_scale)),
             _const("W", np.random.default_rng(3).normal(size=(2, 4, 1, 1)).astype(np.float32))]
    return _model(nodes, inits, ["out"])


def test_dedupe_removes_an_idempotent_qdq_pair():
    model = _double_qdq_model(0.02)
    out, (report,) = run_passes(model, [dedupe_qdq])
    assert report.nodes_before - report.nodes_after == 2 and report.detail.startswith("1 idempotent")
    assert [n.op_type for n in out.graph.node].count("QuantizeLinear") == 1
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)


def test_dedupe_keeps_a_qdq_pair_with_another_scale():
    _, (report,) = run_passes(_double_qdq_model(0.03), [dedupe_qdq])
    assert report.nodes_before == report.nodes_after
    assert report.detail == "0 idempotent Q/DQ pairs removed; merged 0 duplicate Q, 0 duplicate DQ"


def _twin_model(scale_b):
    """Two Q/DQ on the same input x, each feeding its own Conv."""
    rng = np.random.default_rng(4)
    nodes = [*_qdq("a", "x", "sa", "a_dq"), *_qdq("b", "x", "sb", "b_dq"),
             helper.make_node("Conv", ["a_dq", "W1"], ["o1"], name="c1"),
             helper.make_node("Conv", ["b_dq", "W2"], ["o2"], name="c2")]
    inits = [_const("sa", np.float32(0.02)), _const("sb", np.float32(scale_b)),
             _const("W1", rng.normal(size=(2, 4, 1, 1)).astype(np.float32)),
             _const("W2", rng.normal(size=(3, 4, 1, 1)).astype(np.float32))]
    return _model(nodes, inits, ["o1", "o2"])


def test_dedupe_merges_identical_qdq_on_one_tensor():
    model = _twin_model(0.02)
    out, (report,) = run_passes(model, [dedupe_qdq])
    assert "merged 1 duplicate Q, 1 duplicate DQ" in report.detail and report.nodes_after == report.nodes_before - 2
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)
    _, (report,) = run_passes(_twin_model(0.025), [dedupe_qdq])
    assert report.nodes_after == report.nodes_before and "merged 0 duplicate Q" in report.detail


def _concat_model(scale1, scale2, requant=None):
    """x1, x2 -> Q/DQ each -> Concat [-> Q/DQ (requant)] -> out."""
    nodes = [*_qdq("i1", "x1", "s1", "d1"), *_qdq("i2", "x2", "s2", "d2"),
             helper.make_node("Concat", ["d1", "d2"], ["cat"], name="concat", axis=1)]
    inits = [_const("s1", np.float32(scale1)), _const("s2", np.float32(scale2))]
    if requant is not None:
        nodes += _qdq("r", "cat", "sr", "rq")
        nodes.append(helper.make_node("Relu", ["rq"], ["out"], name="relu"))
        inits.append(_const("sr", np.float32(requant)))
    else:
        nodes.append(helper.make_node("Relu", ["cat"], ["out"], name="relu"))
    return _model(nodes, inits, ["out"], inputs=(("x1", SHAPE), ("x2", SHAPE)))


def test_dedupe_removes_the_requantization_after_a_shared_scale_concat():
    model = _concat_model(0.05, 0.05, requant=0.05)
    out, (report,) = run_passes(model, [dedupe_qdq])
    assert report.detail.startswith("1 idempotent") and report.nodes_after == report.nodes_before - 2
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)
    _, (report,) = run_passes(_concat_model(0.05, 0.04, requant=0.05), [dedupe_qdq])
    assert report.detail.startswith("0 idempotent")  # inputs on different grids: the requantization matters


def test_unify_concat_scales_gives_all_inputs_the_max_scale():
    model = _concat_model(0.03, 0.05)
    assert any("different scales" in f.message for rule in QDQ_RULES for f in rule(model))
    out, (report,) = run_passes(model, [unify_concat_scales])
    assert report.detail.startswith("1 Concat with quantized inputs, 1 input scales changed")
    graph = gs.import_onnx(out)
    concat = next(n for n in graph.nodes if n.op == "Concat")
    for t in concat.inputs:
        dq = t.inputs[0]
        q = dq.inputs[0].inputs[0]
        assert float(dq.inputs[1].values) == float(q.inputs[1].values) == pytest.approx(0.05)
    assert not [f for rule in QDQ_RULES for f in rule(out)]
    x = {"x1": np.linspace(-3, 3, 144, dtype=np.float32).reshape(SHAPE), "x2": np.ones(SHAPE, np.float32)}
    (got,) = _run(out, x)
    want = np.maximum(np.clip(np.rint(x["x1"] / np.float32(0.05)), -128, 127) * np.float32(0.05), 0)
    assert np.allclose(got[:, :4], want, atol=1e-7) and np.allclose(got[:, 4:], 1.0, atol=1e-7)


def test_unify_concat_scales_changes_nothing_when_scales_agree():
    model = _concat_model(0.05, 0.05)
    out, (report,) = run_passes(model, [unify_concat_scales])
    assert "0 input scales changed" in report.detail
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)
    plain = _model([helper.make_node("Concat", ["x1", "x2"], ["out"], name="concat", axis=1)], [], ["out"],
                   inputs=(("x1", SHAPE), ("x2", SHAPE)))
    _, (report,) = run_passes(plain, [unify_concat_scales])
    assert report.detail.startswith("0 Concat with quantized inputs")


def _concat_conv_model():
    """x1, x2 -> Q/DQ (one scale) -> Concat -> Q/DQ (same scale) -> Conv (int8 weight -> DQ) -> out."""
    rng = np.random.default_rng(5)
    nodes = [*_qdq("i1", "x1", "s", "d1"), *_qdq("i2", "x2", "s", "d2"),
             helper.make_node("Concat", ["d1", "d2"], ["cat"], name="concat", axis=1),
             *_qdq("r", "cat", "s", "rq"),
             helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["wd"], name="w/DQ", axis=0),
             helper.make_node("Conv", ["rq", "wd"], ["out"], name="conv")]
    inits = [_const("s", np.float32(0.05)), _const("Wq", rng.integers(-127, 128, (3, 8, 1, 1)).astype(np.int8)),
             _const("sw", np.full(3, 0.01, np.float32)), _const("zw", np.zeros(3, np.int8))]
    return _model(nodes, inits, ["out"], inputs=(("x1", SHAPE), ("x2", SHAPE)))


def test_dedupe_keeps_the_qdq_pair_between_a_concat_and_a_conv():
    """ModelOpt's placement: the conv reads its own DequantizeLinear (the Concat's scale), not the Concat."""
    model = _concat_conv_model()
    assert not [f for rule in QDQ_RULES for f in rule(model)]
    out, (report,) = run_passes(model, [dedupe_qdq])
    assert report.nodes_after == report.nodes_before
    assert report.detail == ("0 idempotent Q/DQ pairs removed (1 kept: a conv reads it after a Concat); "
                             "merged 0 duplicate Q, 0 duplicate DQ")
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    producer = {o: n for n in out.graph.node for o in n.output}
    assert producer[conv.input[0]].op_type == "DequantizeLinear"
    assert producer[producer[producer[conv.input[0]].input[0]].input[0]].op_type == "Concat"
    assert not [f for rule in QDQ_RULES for f in rule(out)]
    for a, b in zip(_run(model), _run(out)):
        assert np.array_equal(a, b)
