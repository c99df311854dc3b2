"""`check`: exported files pass; files broken on purpose fail with a precise one-line finding."""

import copy

import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_edit import node_named, set_attribute

from trt_centerpoint.export.head.export import export_rpn_head
from trt_centerpoint.export.lint import file_kind, lint_file, lint_model


def _lines(model):
    return [f.line("f.onnx") for f in lint_model(model)]


def test_exported_files_pass(scn, model, cfg, tmp_path):
    assert file_kind(scn) == "scn" and _lines(scn) == []
    rpn = export_rpn_head(model, cfg).model
    assert file_kind(rpn) == "onnx" and _lines(rpn) == []
    path = tmp_path / "scn.onnx"
    onnx.save(scn, str(path))
    assert lint_file(path) == ("scn", [])


def test_stray_relu_after_conv(scn):
    bad = copy.deepcopy(scn)
    conv = node_named(bad, "conv3")
    conv.output[0] = "pre_relu"
    index = [n.name for n in bad.graph.node].index("conv3")
    bad.graph.node.insert(index + 1, helper.make_node("Relu", ["pre_relu"], ["conv2.0"], "relu9"))
    assert _lines(bad) == ["f.onnx: relu9: Relu right after SparseConvolution conv3: libspconv takes no Relu "
                           "after a conv; fuse it (conv3 activation 'ReLU')"]


def test_missing_attribute(scn):
    bad = copy.deepcopy(scn)
    conv = node_named(bad, "conv5")
    for i, a in enumerate(conv.attribute):
        if a.name == "rulebook":
            del conv.attribute[i]
    assert _lines(bad) == ["f.onnx: conv5: missing required attribute 'rulebook' (string)"]


def test_nan_range(scn):
    bad = copy.deepcopy(scn)
    conv = node_named(bad, "conv4")
    set_attribute(conv, "precision", "int8")
    set_attribute(conv, "input_dynamic_range", float("nan"))
    set_attribute(conv, "weight_dynamic_ranges", [0.5] * 8)
    assert _lines(bad) == ["f.onnx: conv4: input_dynamic_range is nan (must be finite)"]


def test_wrong_range_length(scn):
    bad = copy.deepcopy(scn)
    conv = node_named(bad, "conv4")
    set_attribute(conv, "precision", "int8")
    set_attribute(conv, "input_dynamic_range", 2.0)
    set_attribute(conv, "weight_dynamic_ranges", [0.5])
    assert _lines(bad) == ["f.onnx: conv4: weight_dynamic_ranges has 1 values, out_channels is 8 "
                           "(one per output channel)"]


def test_int8_without_ranges_and_add_ranges(scn):
    bad = copy.deepcopy(scn)
    set_attribute(node_named(bad, "conv4"), "precision", "int8")
    add = node_named(bad, "add1")
    set_attribute(add, "precision", "int8")
    set_attribute(add, "input0_dynamic_range", float("inf"))
    assert _lines(bad) == [
        "f.onnx: conv4: precision int8 without input_dynamic_range (not calibrated)",
        "f.onnx: conv4: precision int8 without weight_dynamic_ranges (not calibrated)",
        "f.onnx: add1: input0_dynamic_range is inf (must be finite)",
        "f.onnx: add1: precision int8 without input1_dynamic_range (not calibrated)",
    ]


def test_non_fp16_initializer(scn):
    bad = copy.deepcopy(scn)
    index = next(i for i, t in enumerate(bad.graph.initializer) if t.name == "spconv0.bias")
    fp32 = numpy_helper.from_array(
        numpy_helper.to_array(bad.graph.initializer[index]).astype("float32"), "spconv0.bias"
    )
    bad.graph.initializer[index].CopyFrom(fp32)
    assert _lines(bad) == ["f.onnx: initializer spconv0.bias: FLOAT, libspconv's parser takes FLOAT16 only"]


def test_unsupported_operator_and_wrong_attribute_type(scn):
    bad = copy.deepcopy(scn)
    node_named(bad, "relu0").op_type = "LeakyRelu"
    set_attribute(node_named(bad, "conv1"), "output_bound", 1.5)
    lines = _lines(bad)
    assert lines[0].startswith("f.onnx: relu0: unsupported operator 'LeakyRelu' (libspconv accepts SparseConvolution")
    assert lines[1:] == ["f.onnx: conv1: attribute 'output_bound' is float, must be int"]


def test_spatial_shapes_must_chain(scn):
    bad = copy.deepcopy(scn)
    set_attribute(node_named(bad, "conv6"), "input_spatial_shape", [9, 9, 9])
    lines = _lines(bad)
    assert lines[0].startswith("f.onnx: conv6: input_spatial_shape [9, 9, 9], but its input has spatial shape")
    assert lines[1].startswith("f.onnx: conv6: output_spatial_shape [")  # no longer follows from its input
    assert lines[1].endswith("the conv geometry gives [5, 5, 5]")
    assert len(lines) == 2


def test_bad_scatter_and_output(scn):
    bad = copy.deepcopy(scn)
    set_attribute(node_named(bad, "scatter0"), "output_shape", [1, 3, 1, 16, 16])
    lines = _lines(bad)
    assert lines[0].startswith("f.onnx: scatter0: output_shape [1, 3, 1, 16, 16], expected [B, 16, *[1, 16, 16]]")
    assert lines[1] == "f.onnx: reshape0: dims [1, 16, 16, 16] (4096 values) do not fit [1, 3, 1, 16, 16]"


def test_header_and_io_types(scn):
    bad = copy.deepcopy(scn)
    bad.opset_import[0].version = 13
    bad.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    assert _lines(bad) == [
        "f.onnx: header: opset import ai.onnx 13, the scn dialect uses 11",
        "f.onnx: input voxels: FLOAT, must be FLOAT16",
    ]


def test_broken_standard_onnx_fails_the_checker():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"], "r")], "g", [x], [y]),
        opset_imports=[helper.make_operatorsetid("", 17)],
    )
    (line,) = _lines(model)
    assert line.startswith("f.onnx: graph: onnx.checker: ") and "nowhere" in line
