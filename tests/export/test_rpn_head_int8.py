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
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.compare import polygraphy_compare, polygraphy_verdict
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
from trt_centerpoint.quant.calibrate import calibrate, set_amax
from trt_centerpoint.quant.ptq import prepare_model
from trt_centerpoint.quant.quantize import DEFAULT_SKIP, is_skipped


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
        data_q = bool(data) and data[0].op == "DequantizeLinear"  # directly, also after the neck's Concat
        weight_q = bool(weight) and weight[0].op == "DequantizeLinear"
        assert data_q == weight_q, conv.name
        if not weight_q:
            float_convs.append(conv.name)
            continue
        dq = weight[0]
        w = dq.inputs[0]
        assert isinstance(w, gs.Constant) and w.values.dtype == np.int8  # int8_weights
        out_axis = 1 if conv.op == "ConvTranspose" else 0  # [C_in, C_out, kh, kw] vs [K, C, kh, kw]
        if w.values.shape[out_axis] > 1:
            assert dq.attrs.get("axis", 1) == out_axis and dq.inputs[1].values.size == w.values.shape[out_axis]
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
    deconv = qmodel.neck.deblocks[1][0]  # weight [C_in=32, C_out=16, 2, 2]: one scale per output channel
    assert type(deconv).__name__ == "QuantConvTranspose2d" and deconv.weight_quantizer.amax.shape == (1, 16, 1, 1)
    dq = next(n for n in raw.graph.node if n.op_type == "DequantizeLinear" and "deblocks.1.0/_weight" in n.name)
    assert {a.name: a.i for a in dq.attribute}["axis"] == 1
    moved = copy.deepcopy(raw)  # the right scales on the wrong axis are caught too
    dq = next(n for n in moved.graph.node if n.op_type == "DequantizeLinear" and "deblocks.1.0/_weight" in n.name)
    next(a for a in dq.attribute if a.name == "axis").i = 0
    with pytest.raises(ValidationError, match="is per channel on axis 0, its quantizer .*deblocks.1.0._weight_"
                                              "quantizer on axis 1"):
        check_exported_scales(moved, RpnHeadModule(qmodel))
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


def test_polygraphy_verdict_on_the_validation_runs_is_polygraphy_s_own(exported, qmodel, bevs):
    """The export's Polygraphy check reuses the outputs the validation computed: the same verdict and figures as
    Polygraphy running the file (OnnxrtRunner) and the module itself on the same BEVs."""
    runs = {}
    validate_rpn_head_int8(exported, qmodel, bevs, runs=runs)
    assert list(runs) == ["onnxrt", "pytorch"] and len(runs["onnxrt"]) == len(bevs)
    reused = polygraphy_verdict(runs, exported.output_names, atol=1e-4, rtol=1e-4)
    own = polygraphy_compare(exported.to_bytes(), RpnHeadModule(qmodel), bevs, RPN_HEAD_INPUT, exported.output_names,
                             atol=1e-4, rtol=1e-4)
    assert reused["passed"] == own["passed"] and reused["iterations"] == own["iterations"] == len(bevs)
    for name, figures in own["per_output"].items():  # both ONNX Runtime, graph optimizations off: the same arrays
        assert reused["per_output"][name]["median_abs"] == pytest.approx(figures["median_abs"], rel=1e-6, abs=1e-9)
        assert reused["per_output"][name]["max_abs"] == pytest.approx(figures["max_abs"], rel=1e-6, abs=1e-9)


def test_export_refuses_a_conv_transpose_calibrated_per_input_channel(qmodel, cfg):
    """A ptq.pth from an older version: ConvTranspose weight amax [C_in, 1, 1, 1] (axis 0). Exported as it
    is, the file would be per input channel, which TensorRT cannot apply after the INT8 GEMM: refused."""
    old = copy.deepcopy(qmodel)
    deconv = old.neck.deblocks[1][0]
    set_amax(deconv.weight_quantizer, deconv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True))
    with pytest.raises(UserError, match=r"^rpn_head int8: neck\.deblocks\.1\.0 \(QuantConvTranspose2d\) weight amax "
                                        r"has shape \[32, 1, 1, 1\] .* re-run `trt-centerpoint ptq`"):
        export_rpn_head_int8(old, cfg)


def _module_path(node_name: str) -> str:
    """`/bbox_head/tasks.0/reg/reg.3/Conv` -> `bbox_head.tasks.0.reg.3` (each scope relative to the one before)."""
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def test_qdq_placement_checked_with_plain_onnx(exported, qmodel):
    """The placement TensorRT 10 / 11 and ModelOpt use, checked on the final file by walking it with `onnx`
    alone: every Conv / ConvTranspose reads a DequantizeLinear on data and on weight (except the layers the
    skip list leaves float), weights per output channel (Conv axis 0, ConvTranspose axis 1), activations per
    tensor, zero points int8 0, Concat inputs on one scale, and no Q on a conv output."""
    graph = exported.model.graph
    producer = {out: node for node in graph.node for out in node.output}
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                   for n in graph.node if n.op_type == "Constant"})

    def dq_of(tensor):
        node = producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def axis_of(node):
        return next((a.i for a in node.attribute if a.name == "axis"), 1)

    float_layers = {name for name, m in qmodel.named_modules()
                    if type(m) in (torch.nn.Conv2d, torch.nn.ConvTranspose2d)}
    assert float_layers and all(is_skipped(name, DEFAULT_SKIP) for name in float_layers)
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert sum(n.op_type == "ConvTranspose" for n in convs) == 1
    seen_float = set()
    for conv in convs:
        data_dq, weight_dq = dq_of(conv.input[0]), dq_of(conv.input[1])
        if _module_path(conv.name) in float_layers:
            assert data_dq is None and weight_dq is None, conv.name
            seen_float.add(_module_path(conv.name))
            continue
        assert data_dq is not None, f"{conv.name} reads {producer[conv.input[0]].op_type}, not a DequantizeLinear"
        assert weight_dq is not None, conv.name
        assert values[data_dq.input[1]].size == 1  # activation: per tensor
        weight = values[weight_dq.input[0]]
        assert weight.dtype == np.int8
        out_axis = 1 if conv.op_type == "ConvTranspose" else 0
        scale = values[weight_dq.input[1]]
        if weight.shape[out_axis] > 1:
            assert axis_of(weight_dq) == out_axis and scale.shape == (weight.shape[out_axis],), conv.name
        else:
            assert scale.size == 1, conv.name
        for dq in (data_dq, weight_dq):
            zero = values[dq.input[2]]
            assert zero.dtype == np.int8 and not zero.any()
    assert seen_float == float_layers

    concats = [n for n in graph.node if n.op_type == "Concat"]
    assert concats
    for concat in concats:
        dqs = [dq_of(t) for t in concat.input]
        assert all(dqs), concat.name
        scales = {values[dq.input[1]].astype(np.float32).tobytes() for dq in dqs}
        assert len(scales) == 1, concat.name
        readers = [n for n in graph.node if concat.output[0] in n.input]
        assert readers and all(n.op_type == "QuantizeLinear" for n in readers), concat.name
        assert {values[n.input[1]].astype(np.float32).tobytes() for n in readers} == scales  # the same scale
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        assert q.input[0] not in producer or producer[q.input[0]].op_type not in ("Conv", "ConvTranspose")
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    print(f"Q/DQ nodes: {qdq}; quantized convs: {len(convs) - len(float_layers)}; float: {sorted(float_layers)}")
