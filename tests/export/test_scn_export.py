"""scn.fp16.onnx: exactly the libspconv dialect, INT8 attributes designed in."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import AttributeProto as A
from onnx import TensorProto, numpy_helper

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.spec import AddQuant, ConvQuant, Int8SpecError
from trt_centerpoint.export.scn.writer import SCN_INPUT, SCN_OUTPUT, ScnExportError, export_scn

CONV_ATTRS = {
    "ndim": A.INT, "input_spatial_shape": A.INTS, "output_spatial_shape": A.INTS, "in_channels": A.INT,
    "out_channels": A.INT, "kernel_size": A.INTS, "stride": A.INTS, "padding": A.INTS, "dilation": A.INTS,
    "output_padding": A.INTS, "transposed": A.INT, "inverse": A.INT, "groups": A.INT, "subm": A.INT,
    "rulebook": A.STRING, "activation": A.STRING, "output_bound": A.INT, "input_shape": A.INTS,
    "output_shape": A.INTS,
}


@pytest.fixture(scope="module")
def fused(model):
    return fuse_backbone(model.backbone)


@pytest.fixture(scope="module")
def scn(fused):
    return export_scn(fused, output_bounds={"conv2.0": 4321}, max_voxels=20000)


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_header_and_io(scn, cfg):
    m = onnx.load_from_string(scn.to_bytes())
    assert [(o.domain, o.version) for o in m.opset_import] == [("ai.onnx", 11)]
    assert m.ir_version == 6 and m.producer_name == "trt-centerpoint"
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == SCN_INPUT and inp.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["num_voxels", 5]
    assert out.name == SCN_OUTPUT and out.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, cfg.bev_channels, *cfg.bev_shape]


def test_nodes_names_and_order(scn):
    nodes = scn.model.graph.node
    assert [n.name for n in nodes[:6]] == ["conv0", "conv1", "conv2", "add0", "relu0", "conv3"]
    assert [n.name for n in nodes[-3:]] == ["conv12", "scatter0", "reshape0"]
    assert sorted({n.op_type for n in nodes}) == ["Add", "Relu", "Reshape", "ScatterDense", "SparseConvolution"]
    assert scn.node_paths["conv3"] == "conv2.0" and scn.node_paths["add0"] == "conv1.0.add"
    # no Relu right after a conv: every Relu reads an Add
    producer = {n.output[0]: n for n in nodes}
    assert all(producer[n.input[0]].op_type == "Add" for n in nodes if n.op_type == "Relu")


def test_initializers_are_fp16_in_spconv_layout(scn, fused):
    inits = {t.name: t for t in scn.model.graph.initializer}
    assert len(inits) == 26 and all(t.data_type == TensorProto.FLOAT16 and t.raw_data for t in inits.values())
    conv = fused.conv2[0]
    w = numpy_helper.to_array(inits["spconv3.weight"])
    assert list(w.shape) == [conv.out_channels, 3, 3, 3, conv.in_channels]  # [out, kz, ky, kx, in]
    np.testing.assert_array_equal(w, conv.weight.detach().numpy().astype(np.float16))
    np.testing.assert_array_equal(numpy_helper.to_array(inits["spconv3.bias"]),
                                  conv.bias.detach().numpy().astype(np.float16))
    assert list(numpy_helper.to_array(inits["spconv12.weight"]).shape)[1:4] == [3, 1, 1]  # extra_conv


def test_conv_attributes(scn, cfg):
    convs = [n for n in scn.model.graph.node if n.op_type == "SparseConvolution"]
    for n in convs:
        types = {a.name: a.type for a in n.attribute}
        assert {k: types.get(k) for k in CONV_ATTRS} == CONV_ATTRS, n.name
        assert not ({"input_dynamic_range", "weight_dynamic_ranges", "precision"} & set(types))  # FP16 file
    a = {n.name: _attrs(n) for n in convs}
    assert a["conv0"]["rulebook"] == b"res0" and a["conv0"]["subm"] == 1 and a["conv0"]["activation"] == b"ReLU"
    assert a["conv0"]["input_spatial_shape"] == cfg.voxel.sparse_shape and a["conv0"]["in_channels"] == 5
    assert a["conv2"]["activation"] == b"None"  # the block's second conv: its ReLU comes after the Add
    assert a["conv3"]["rulebook"] == b"" and a["conv3"]["subm"] == 0 and a["conv3"]["stride"] == [2, 2, 2]
    assert a["conv3"]["output_bound"] == 4321  # given
    assert a["conv0"]["output_bound"] == 20000  # fallback: the safe bound for max_voxels
    assert (a["conv4"]["rulebook"], a["conv7"]["rulebook"], a["conv10"]["rulebook"]) == (b"res1", b"res2", b"res3")
    assert a["conv9"]["padding"] == [0, 1, 1] and a["conv12"]["kernel_size"] == [3, 1, 1]
    assert a["conv5"]["input_shape"] == [-1, cfg.backbone.channels[1]]
    for prev, cur in zip(convs, convs[1:]):  # spatial shapes chain
        assert a[cur.name]["input_spatial_shape"] == a[prev.name]["output_spatial_shape"]


def test_scatter_and_reshape(scn, cfg):
    scatter, reshape = scn.model.graph.node[-2:]
    d = cfg.backbone_out_depth
    assert _attrs(scatter) == {"input_spatial_shape": [d, *cfg.bev_shape], "format": b"zyx",
                               "output_shape": [1, cfg.backbone.channels[-1], d, *cfg.bev_shape]}
    assert _attrs(reshape) == {"dims": [1, cfg.bev_channels, *cfg.bev_shape]}


def _full_quant(scn, fused, amax=1.0):
    quant = {}
    for node in scn.model.graph.node:
        path = scn.node_paths[node.name]
        if node.op_type == "SparseConvolution":
            cout = fused.get_submodule(path).out_channels
            quant[path] = ConvQuant(amax, tuple([0.5] * cout))
        elif node.op_type == "Add":
            quant[path] = AddQuant(amax, amax)
    return quant


def test_int8_attributes_when_ranges_are_given(scn, fused):
    quant = _full_quant(scn, fused)
    quant["conv_input.0"] = ConvQuant(None, None, precision="fp16", output_precision="fp16")
    m = export_scn(fused, quant=quant, scatter_input_amax=3.0).model
    a = {n.name: _attrs(n) for n in m.graph.node}
    assert a["conv3"]["precision"] == b"int8" and a["conv3"]["input_dynamic_range"] == 1.0
    assert a["conv3"]["weight_dynamic_ranges"] == [0.5] * fused.conv2[0].out_channels
    assert a["conv0"]["precision"] == b"fp16" and "input_dynamic_range" not in a["conv0"]
    assert a["add1"]["input0_dynamic_range"] == 1.0 and a["add1"]["output_precision"] == b"int8"
    assert a["scatter0"]["input_dynamic_range"] == 3.0
    assert all(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)  # weights stay FP16


def test_int8_export_of_an_uncalibrated_model_names_the_layers(scn, fused):
    quant = _full_quant(scn, fused)
    del quant["conv2.0"], quant["conv3.3.add"]
    with pytest.raises(Int8SpecError, match=r"no calibrated ranges for 2 layer\(s\): conv2\.0, conv3\.3\.add"):
        export_scn(fused, quant=quant)
    quant = _full_quant(scn, fused)
    quant["conv2.0"] = ConvQuant(None, None)
    with pytest.raises(Int8SpecError, match=r"conv2\.0: int8 layer without input / weight ranges"):
        export_scn(fused, quant=quant)


@pytest.mark.parametrize("spec, message", [
    (ConvQuant(float("nan"), (0.5,) * 8), r"conv2\.0\.input_amax: amax must be finite"),
    (ConvQuant(1.0, (0.5,) * 3), r"conv2\.0: 3 weight ranges for 8 output channels"),
    (ConvQuant(1.0, (0.5,) * 7 + (math.inf,)), r"conv2\.0\.weight_amax\[7\]: amax must be finite"),
    (ConvQuant(1.0, (0.5,) * 8, precision="int4"), r"conv2\.0\.precision: precision must be one of int8, fp16"),
])
def test_bad_ranges_are_refused(scn, fused, spec, message):
    quant = _full_quant(scn, fused)
    assert fused.conv2[0].out_channels == 8
    quant["conv2.0"] = spec
    with pytest.raises(Int8SpecError, match=message):
        export_scn(fused, quant=quant)


def test_weights_beyond_fp16_are_a_user_error(fused):
    import copy

    big = copy.deepcopy(fused)
    with torch.no_grad():
        big.conv3[0].weight[0, 0, 0, 0, 0] = 1e6
    with pytest.raises(ScnExportError, match=r"spconv6\.weight: values up to 1e\+06 do not fit FP16") as err:
        export_scn(big)
    assert isinstance(err.value, UserError)


def test_unknown_bound_path_is_refused(fused):
    with pytest.raises(ScnExportError, match="not a sparse conv of this backbone"):
        export_scn(fused, output_bounds={"conv2.1": 10})
