"""rpn_head.int8.onnx: explicit Q/DQ where the quantizers are, the FP32 file's names, ONNX Runtime == PyTorch
fake quant (median per output), INT8 weight storage, and Polygraphy's comparison of both files."""

import copy

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from pytorch_quantization.nn import TensorQuantizer

from trt_centerpoint.data.points import iter_frames
from trt_centerpoint.eval.compare import polygraphy_compare
from trt_centerpoint.export.head.export import (
    RPN_HEAD_INPUT,
    RpnHeadModule,
    export_rpn_head,
    rpn_head_output_names,
)
from trt_centerpoint.export.head.int8 import (
    check_exported_scales,
    export_rpn_head_int8,
    trace_rpn_head_int8,
    validate_rpn_head_int8,
)
from trt_centerpoint.export.head.passes import fold_constants, run_passes
from trt_centerpoint.export.head.passes_qdq import int8_weights
from trt_centerpoint.export.lint import lint_model
from trt_centerpoint.export.validate import ValidationError
from trt_centerpoint.quant.calibrate import calibrate
from trt_centerpoint.quant.ptq import prepare_model
from trt_centerpoint.quant.quantize import DEFAULT_SKIP


@pytest.fixture(scope="module")
def qmodel(model, cfg, data_dir):
    points = [torch.from_numpy(p) for _, p, _ in iter_frames(data_dir, cfg.voxel.num_point_features)]
    quant, _ = prepare_model(cfg, DEFAULT_SKIP, "max", bn_fused=True, model=copy.deepcopy(model))
    calibrate(quant, points, method="max", progress=False)
    return quant


@pytest.fixture(scope="module")
def exported(qmodel, cfg):
    return export_rpn_head_int8(qmodel, cfg)


@pytest.fixture(scope="module")
def bevs(qmodel, frames):
    with torch.no_grad():
        real = [qmodel.backbone(f, c, 1) for f, c in frames]
    # a dense random BEV too (real ones are ~60 % zeros); non-negative like the backbone's ReLU output: a
    # value below -amax is clamped to -127 steps by pytorch-quantization but to -128 by ONNX
    return [*real, torch.rand_like(real[0]) * float(real[0].max())]


def test_names_opset_metadata_and_passes(exported, qmodel, model, cfg):
    fp32 = export_rpn_head(model, cfg)
    names = [f"{k}_{i}" for i in range(2) for k in ("reg", "height", "dim", "rot", "vel", "hm")]
    assert exported.output_names == names == fp32.output_names == rpn_head_output_names(qmodel)
    m = exported.model
    assert [o.name for o in m.graph.output] == [o.name for o in fp32.model.graph.output] == names
    assert [i.name for i in m.graph.input] == [RPN_HEAD_INPUT]
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output] == \
        [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in fp32.model.graph.output]
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}["ai.onnx"] == 17
    assert {p.key: p.value for p in m.metadata_props}["precision"] == "int8"
    assert [r.name for r in exported.passes] == ["fold_constants", "int8_weights", "dedupe_qdq", "unify_concat_scales",
                                              "name_and_order_outputs", "cleanup_toposort", "infer_shapes"]
    assert TensorQuantizer.use_fb_fake_quant is False  # restored after the export
    for r in exported.passes:
        print(r.line())


def test_qdq_placement(exported):
    graph = gs.import_onnx(exported.model)
    convs = [n for n in graph.nodes if n.op in ("Conv", "ConvTranspose")]
    float_convs = []
    for conv in convs:
        data, weight = conv.inputs[0].inputs, conv.inputs[1].inputs
        data_q = bool(data) and (data[0].op == "DequantizeLinear"
                                 or (data[0].op == "Concat" and all(t.inputs[0].op == "DequantizeLinear"
                                                                    for t in data[0].inputs)))
        weight_q = bool(weight) and weight[0].op == "DequantizeLinear"
        assert data_q == weight_q, conv.name
        if not weight_q:
            float_convs.append(conv.name)
            continue
        dq = weight[0]
        w = dq.inputs[0]
        assert isinstance(w, gs.Constant) and w.values.dtype == np.int8  # int8_weights
        if w.values.shape[0] > 1:
            assert dq.attrs.get("axis", 1) == 0 and dq.inputs[1].values.size == w.values.shape[0]
        else:  # one output channel: pytorch-quantization exports a per-tensor Q/DQ (amax.numel() == 1)
            assert dq.inputs[1].values.size == 1 and "axis" not in dq.attrs
        assert dq.inputs[2].values.dtype == np.int8 and not dq.inputs[2].values.any()
    assert sorted(float_convs) == ["/bbox_head/tasks.0/reg/reg.3/Conv", "/bbox_head/tasks.1/reg/reg.3/Conv"]
    assert sum(n.op == "ConvTranspose" for n in convs) == 1
    assert not [n for n in graph.nodes if n.op == "QuantizeLinear" and isinstance(n.inputs[0], gs.Constant)]
    assert lint_model(exported.model) == []


def test_scales_are_amax_over_127_and_the_check_catches_a_wrong_one(qmodel, cfg):
    raw, checked = trace_rpn_head_int8(qmodel, cfg)
    assert checked == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in raw.graph.node) > 40
    conv = qmodel.neck.blocks[0][1]
    assert conv.weight_quantizer.axis == (0,)
    deconv = qmodel.neck.deblocks[1][0]
    assert type(deconv).__name__ == "QuantConvTranspose2d" and deconv.weight_quantizer.amax.numel() == 32
    broken = copy.deepcopy(raw)
    node = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear" and "_input_quantizer" in n.name)
    const = next(n for n in broken.graph.node if n.op_type == "Constant" and n.output[0] == node.input[1])
    value = onnx.numpy_helper.to_array(const.attribute[0].t) * 1.01
    const.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32)))
    with pytest.raises(ValidationError, match="scale .* != amax / 127"):
        check_exported_scales(broken, RpnHeadModule(qmodel))


def test_int8_weights_makes_the_file_about_4x_smaller(qmodel, cfg, exported):
    raw, _ = trace_rpn_head_int8(qmodel, cfg)
    folded, _ = run_passes(raw, [fold_constants])
    stored, (report,) = run_passes(folded, [int8_weights])
    before, after = folded.ByteSize(), stored.ByteSize()
    weights = sum(np.prod(t.dims) for t in folded.graph.initializer if len(t.dims) == 4)
    print(f"int8_weights: {before} -> {after} bytes ({report.detail}); final file {exported.model.ByteSize()}")
    assert before - after >= 2.9 * weights  # 4 bytes -> 1 per weight, except the two float reg.3 convs
    assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in stored.graph.initializer) == 29


def test_onnxruntime_matches_pytorch_fake_quant(exported, qmodel, bevs):
    figures = validate_rpn_head_int8(exported, qmodel, bevs)
    assert figures["frames"] == 3 and set(figures["per_output"]) == set(exported.output_names)
    for name, f in figures["per_output"].items():
        assert f["median_abs"] <= 1e-4, name
        print(f"{name}: median {f['median_abs']:.3g} max {f['max_abs']:.3g} mean {f['mean_abs']:.3g}")
    # the fake quant is real: the INT8 head differs from the float one far more than ORT from PyTorch
    from pytorch_quantization.nn import TensorQuantizer as TQ

    quantizers = [m for m in qmodel.modules() if isinstance(m, TQ)]
    with torch.no_grad():
        fq = RpnHeadModule(qmodel).eval()(bevs[0])
        for q in quantizers:
            q.disable()
        try:
            fl = RpnHeadModule(qmodel).eval()(bevs[0])
        finally:
            for q in quantizers:
                q.enable()
    quant_error = max(float((a - b).abs().max()) for a, b in zip(fq, fl))
    assert quant_error > 100 * figures["max_median_abs_error"]


def test_validation_catches_a_wrong_scale(exported, qmodel, bevs):
    broken = copy.deepcopy(exported)
    graph = broken.model.graph
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and "shared_conv" in n.name
              and "weight" in n.name)
    init = next(t for t in graph.initializer if t.name == dq.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
    with pytest.raises(ValidationError,
                       match=r"rpn_head int8: ONNX Runtime differs from PyTorch fake quant on .*layer by layer"):
        validate_rpn_head_int8(broken, qmodel, bevs[:1])


def test_polygraphy_compares_both_files(exported, qmodel, model, cfg, bevs):
    fp32 = export_rpn_head(model, cfg)
    fp = polygraphy_compare(fp32.to_bytes(), RpnHeadModule(model), bevs, RPN_HEAD_INPUT, fp32.output_names,
                            atol=1e-4, rtol=1e-4, check_error_stat="max")
    assert fp["passed"] and set(fp["per_output"]) == set(fp32.output_names)
    q = polygraphy_compare(exported.to_bytes(), RpnHeadModule(qmodel), bevs, RPN_HEAD_INPUT, exported.output_names,
                           atol=1e-4, rtol=1e-4)
    assert q["passed"] and q["check_error_stat"] == "median" and q["iterations"] == 3
    assert all(v["median_abs"] <= 1e-4 for v in q["per_output"].values())
    wrong = polygraphy_compare(exported.to_bytes(), RpnHeadModule(model), bevs, RPN_HEAD_INPUT, exported.output_names,
                               atol=1e-6, rtol=1e-6)  # INT8 file vs the float model: must not pass at 1e-6
    assert not wrong["passed"]
