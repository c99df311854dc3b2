"""INT8 scn export: specs from calibration, the reference runner's INT8 semantics, the Q/DQ form."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.export.lint import lint_model
from trt_centerpoint.export.scn.fake_quant import fake_quant, qdq_scale, quantize_int8
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.qdq import scn_to_qdq
from trt_centerpoint.export.scn.quant import ScnQuantError, scn_quant_specs
from trt_centerpoint.export.scn.walk import walk_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.export.validate import compare_tensors
from trt_centerpoint.quant.ptq import prepare_model
from trt_centerpoint.quant.quantize import DEFAULT_SKIP
from trt_centerpoint.runtime.scn_runner import ScnRunner


@pytest.fixture(scope="module")
def fused_q(qmodel):
    return fuse_backbone(qmodel.backbone)


@pytest.fixture(scope="module")
def specs(fused_q):
    return scn_quant_specs(walk_backbone(fused_q))


@pytest.fixture(scope="module")
def int8_model(fused_q, specs):
    return export_scn(fused_q, quant=specs).model


@pytest.fixture(scope="module")
def qdq_model(int8_model):
    return scn_to_qdq(int8_model)


# --- fake quant ----------------------------------------------------------------------------------------


def test_fake_quant_is_onnx_qdq_exactly():
    """Our arithmetic == ONNX Runtime's QuantizeLinear -> DequantizeLinear, bit for bit, per tensor and axis 0."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 3, 3, 8, generator=gen) * 3
    amax = (torch.rand(16, generator=gen) * 4 + 0.1).numpy()
    for scale_values, axis in ((qdq_scale(np.float32(2.5)), None), (qdq_scale(amax), 0)):
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **({"axis": axis} if axis is not None else {})),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"],
                              **({"axis": axis} if axis is not None else {}))],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape)),
             helper.make_tensor_value_info("q", TensorProto.INT8, list(x.shape))],
            [numpy_helper.from_array(scale_values, "s"),
             numpy_helper.from_array(np.zeros(scale_values.shape, np.int8), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        y, q = session.run(["y", "q"], {"x": x.numpy()})
        amax_arg = 2.5 if axis is None else amax
        assert np.array_equal(quantize_int8(x, amax_arg, axis).numpy(), q)
        assert np.array_equal(fake_quant(x, amax_arg, axis).numpy(), y)


def test_fake_quant_matches_pytorch_quantization_up_to_rare_rounding_ties():
    """Same codes as the library except within an ulp of a rounding boundary; values equal to float rounding."""
    from pytorch_quantization.tensor_quant import fake_tensor_quant, tensor_quant

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=gen) * 2
    amax = torch.tensor(3.7)
    lib_codes, _ = tensor_quant(x, amax, 8, False, False)
    code_diff = (quantize_int8(x, float(amax)).float() - lib_codes).abs()
    assert float((code_diff > 0).float().mean()) < 1e-4 and float(code_diff.max()) <= 1
    ours, lib = fake_quant(x, float(amax)), fake_tensor_quant(x, amax, 8, False, False)
    same = code_diff == 0
    assert torch.allclose(ours[same], lib[same], rtol=1e-6, atol=0)
    assert quantize_int8(torch.tensor([5.0, -9.0]), 1.0).tolist() == [127, -128]  # clamps, full int8 range
    assert torch.equal(fake_quant(torch.tensor([0.3, -2.0]), 0.0), torch.zeros(2))  # amax 0: all zero, like the library


# --- specs -----------------------------------------------------------------------------------------------


def test_specs_follow_calibration_and_the_precision_rules(fused_q, specs):
    ops = walk_backbone(fused_q)
    modules = {op.path: op.module for op in ops}
    for path, spec in specs.items():
        skipped = path.startswith(("conv_input", "conv1.0."))
        assert spec.precision == ("fp16" if skipped else "int8"), path
        if skipped:
            assert spec.input0_amax is None if hasattr(spec, "input0_amax") else spec.input_amax is None
            continue
        module = modules[path]
        amax = float(module._input_quantizer.amax)
        if hasattr(spec, "input0_amax"):
            assert spec.input0_amax == spec.input1_amax == amax  # one shared quantizer
        else:
            assert spec.input_amax == amax
            weight = module._weight_quantizer.amax.flatten().tolist()
            assert list(spec.weight_amax) == weight and len(weight) == module.out_channels
    # output precision: int8 only when every reader (through Relu) is int8 with one and the same range
    readers = {}
    for op in ops:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)

    def leaves(t):
        out = []
        for r in readers.get(t, []):
            out += leaves(r.output) if r.kind == "relu" else [r]
        return out

    ranges = {p: (s.input_amax if hasattr(s, "input_amax") else s.input0_amax) for p, s in specs.items()}
    for op in ops:
        if op.path in specs:
            got = {ranges.get(r.path) for r in leaves(op.output)}
            expect = "int8" if None not in got and len(got) == 1 else "fp16"
            assert specs[op.path].output_precision == expect, op.path
    last_conv = [op for op in ops if op.kind == "conv"][-1]
    assert last_conv.path.startswith("extra_conv") and specs[last_conv.path].output_precision == "fp16"
    assert any(s.output_precision == "int8" for s in specs.values())


def test_uncalibrated_checkpoint_names_the_layer(cfg, model):
    raw, _ = prepare_model(cfg, DEFAULT_SKIP, "histogram", True, model=copy.deepcopy(model))
    with pytest.raises(ScnQuantError, match=r"quantizer\(s\) enabled but not calibrated \(amax is None\): "
                                            r"conv2\.0\._input_quantizer, "
                       r"conv2\.0\._weight_quantizer"):
        scn_quant_specs(walk_backbone(fuse_backbone(raw.backbone)))


# --- the files, executed -----------------------------------------------------------------------------


def test_int8_file_lints_clean_and_matches_the_fake_quant_backbone(int8_model, qmodel, frames):
    assert lint_model(int8_model) == []
    runner = ScnRunner(int8_model.SerializeToString())
    for features, coords in frames:
        with torch.no_grad():
            ref = qmodel.backbone(features, coords, 1)
        figures = compare_tensors(runner.run(features, coords), ref)
        assert figures["cosine"] >= 0.9999, figures
        # and INT8 is really applied: the float backbone differs more than the file from the fake-quant one
    float_file = export_scn(fuse_backbone(qmodel.backbone)).model
    features, coords = frames[0]
    float_out = ScnRunner(float_file.SerializeToString()).run(features, coords)
    int8_out = runner.run(features, coords)
    assert not torch.equal(float_out, int8_out)


def test_qdq_form_lints_clean_and_executes_identically(int8_model, qdq_model, frames):
    assert lint_model(qdq_model) == []
    assert {o.version for o in qdq_model.opset_import} == {13}
    inits = {t.name: t for t in qdq_model.graph.initializer}
    int8_weights = [t for t in inits.values() if t.data_type == TensorProto.INT8 and len(t.dims) == 5]
    int8_convs = [n for n in int8_model.graph.node if n.op_type == "SparseConvolution"
                  and any(a.name == "precision" and a.s == b"int8" for a in n.attribute)]
    assert len(int8_weights) == len(int8_convs) > 0
    for node in qdq_model.graph.node:
        assert not any(a.name.endswith("dynamic_range") or a.name == "weight_dynamic_ranges" for a in node.attribute)
    a, b = ScnRunner(int8_model.SerializeToString()), ScnRunner(qdq_model.SerializeToString())
    for features, coords in frames:
        assert torch.equal(a.run(features, coords), b.run(features, coords))


def test_qdq_weight_scales_are_the_ranges_over_127(int8_model, qdq_model):
    conv = next(n for n in int8_model.graph.node if n.op_type == "SparseConvolution"
                and any(a.name == "weight_dynamic_ranges" for a in n.attribute))
    ranges = next(a.floats for a in conv.attribute if a.name == "weight_dynamic_ranges")
    inits = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    scale = inits[f"{conv.input[1]}_scale"]
    assert np.allclose(scale, np.asarray(ranges, np.float32) / 127, rtol=1e-7, atol=0)
    assert inits[f"{conv.input[1]}_int8"].dtype == np.int8


def _first_weight_dq(model):
    return next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("_weight_dq"))


def test_lint_catches_broken_qdq_files(qdq_model):
    broken = onnx.ModelProto()
    broken.CopyFrom(qdq_model)
    dq = _first_weight_dq(broken)
    inits = {t.name: t for t in broken.graph.initializer}
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale)[:-1], scale.name))
    zero = next(t for t in broken.graph.initializer if t.name.endswith("input_zero_point"))
    zero.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zero.name))
    lines = [f.line("x") for f in lint_model(broken)]
    assert any("one scale per output channel" in line for line in lines), lines
    assert any("non-zero zero point" in line for line in lines), lines
    # an int8 conv whose input is not dequantized
    conv = next(n for n in broken.graph.node if n.op_type == "SparseConvolution" and n.input[0].endswith("_dq"))
    q = next(n for n in broken.graph.node if n.output and n.output[0] == conv.input[0])
    conv.input[0] = q.input[0]
    lines = [f.line("x") for f in lint_model(broken)]
    assert any(f"{conv.name}: precision int8 but its input features" in line for line in lines), lines
