"""The INT8 scn export gate: rounding noise passes, a wrong layer fails, naming it (`export.validate`)."""

import copy

import numpy as np
import pytest
import torch
from onnx import helper
from pytorch_quantization.tensor_quant import tensor_quant

from trt_centerpoint.export.scn.fake_quant import quantize_int8
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.quant import scn_quant_specs
from trt_centerpoint.export.scn.walk import walk_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.export.validate import (
    SCN_LAYER_TOLERANCE,
    ValidationError,
    fp16_deployed_reference,
    validate_scn,
    validate_scn_int8,
)
from trt_centerpoint.runtime.scn_runner import ScnRunner


def _file(fused):
    return export_scn(fused, quant=scn_quant_specs(walk_backbone(fused))).model


def _runner(model):
    return ScnRunner(model.SerializeToString(), precision="fp32", allow_overflow=True)


@torch.no_grad()
def _loaded(backbone, frames):
    return [backbone(f, c, 1) for f, c in frames]


@pytest.fixture(scope="module")
def fused_q(qmodel):
    return fuse_backbone(qmodel.backbone)


@pytest.fixture(scope="module")
def int8_file(fused_q):
    return _file(fused_q)


def test_valid_file_passes_layer_by_layer_and_against_the_noise_floor(int8_file, fused_q, qmodel, frames):
    figures, outputs = validate_scn_int8(_runner(int8_file), fused_q, frames, _loaded(qmodel.backbone, frames))
    checked = [n for n in int8_file.graph.node if n.op_type in ("SparseConvolution", "Add")]
    assert len(outputs) == len(frames) == figures["frames"]
    # the file is its PyTorch twin's arithmetic (same FP16 weights, ONNX rounding, same spconv kernels): each layer
    # agrees to float32 rounding of one conv (a few ulp of 2^-24 relative), far inside the tolerance
    assert figures["worst_layer"]["relative_error"] < 1e-5 < SCN_LAYER_TOLERANCE
    assert figures["worst_layer"]["node"] in {n.name for n in checked}
    assert figures["vs_fp32_weights"]["min_cosine"] >= figures["threshold"]
    assert 0.0 < figures["noise_floor_min_cosine"] <= 1.0


def _tie_amax(start: float, up: bool) -> float:
    """The first FP16 value A >= start for which A / 2 (an exact rounding tie, 63.5 steps) gets different codes
    from pytorch-quantization (x * (127 / A)) and from ONNX Q/DQ (x / (A / 127)), the library's the larger one
    when `up`: both are valid roundings of a tie."""
    a = np.float16(start)
    while True:
        value = torch.tensor([float(a) / 2])
        lib, _ = tensor_quant(value, torch.tensor(float(a)), 8, False, False)
        onnx_code = float(quantize_int8(value, float(a))[0])
        if float(lib[0]) != onnx_code and (float(lib[0]) > onnx_code) == up:
            return float(a)
        a = np.nextafter(a, np.float16(np.inf))


@pytest.fixture(scope="module")
def tie_model(qmodel):
    """The calibrated model with half the weights of every INT8 conv moved onto a rounding tie: each output
    channel's range A (the channel's largest |weight|, kept as one weight) is chosen so that A / 2 rounds one
    way in pytorch-quantization and the other in ONNX, alternating the direction from channel to channel, and
    a random half of its weights become +-A / 2 (exact in FP16, the file's weight type). A valid model whose
    file, by the file format's own rounding, holds a one-step different weight wherever the model has a tie."""
    model = copy.deepcopy(qmodel)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.backbone.modules():
            quantizer = getattr(module, "_weight_quantizer", None)
            if quantizer is None or quantizer._disabled:
                continue
            weight, ranges = module.weight, []
            for channel in range(weight.shape[0]):
                amax = _tie_amax(float(weight[channel].abs().max()), channel % 2 == 0)
                flat = weight[channel].flatten()
                flat = torch.where(torch.rand(flat.shape, generator=gen) < 0.5, torch.sign(flat) * amax / 2, flat)
                flat[0] = amax
                weight[channel] = flat.reshape(weight[channel].shape)
                ranges.append(amax)
            quantizer._amax.copy_(torch.tensor(ranges).reshape(quantizer._amax.shape))
    return model


def test_rounding_ties_that_sink_a_fixed_bar_pass_the_noise_floor(tie_model, frames):
    """The fixed cosine bar sits inside the rounding noise of an INT8 network: here ties move the file's output
    by ~2e-5 (1 - cosine) on this small network (2.4e-4 on the nuScenes-size one, below the old 0.9999), a
    bar at 0.99999 fails; the gate measures that noise and passes, every layer being exact."""
    fused = fuse_backbone(tie_model.backbone)
    runner = _runner(_file(fused))
    with pytest.raises(ValidationError, match="cosine"):
        validate_scn(runner, fp16_deployed_reference(fused), frames, min_cosine=0.99999)
    figures, _ = validate_scn_int8(runner, fused, frames, _loaded(tie_model.backbone, frames))
    assert figures["vs_fp32_weights"]["min_cosine"] < 0.99999  # the drop is real ...
    assert figures["noise_floor_min_cosine"] < 0.99999  # ... and the model with the file's rounding shows it too
    assert figures["vs_fp32_weights"]["min_cosine"] >= figures["threshold"]
    assert figures["worst_layer"]["relative_error"] < 1e-5


@pytest.mark.parametrize("attribute, node", [("input_dynamic_range", "conv4"), ("weight_dynamic_ranges", "conv7")])
def test_a_wrong_scale_in_one_layer_fails_naming_it(int8_file, fused_q, qmodel, frames, attribute, node):
    """A range x1.5 in one written layer: the layer-by-layer check names exactly that node."""
    broken = copy.deepcopy(int8_file)
    target = next(n for n in broken.graph.node if n.name == node)
    old = next(a for a in target.attribute if a.name == attribute)
    values = [v * 1.5 for v in old.floats] if old.floats else old.f * 1.5
    target.attribute.remove(old)
    target.attribute.append(helper.make_attribute(attribute, values))
    with pytest.raises(ValidationError, match=rf"layer {node} \({target.doc_string}\) differs"):
        validate_scn_int8(_runner(broken), fused_q, frames, _loaded(qmodel.backbone, frames))


def test_a_wiring_error_fails_free_running_naming_the_first_layer_past_the_floor(int8_file, fused_q, qmodel, frames):
    """A Relu node dropped from the file (its readers take the Add's output): every conv / add still matches on
    PyTorch's inputs, so only the free-running comparison sees it (cosine ~0.9975 against a floor of ~0.999997
    here); it names the first layer downstream. (Dropping one of the first two Relus moves the output by less
    than 1e-4: the negative values they remove are few and small, and that error passes, as it would any bar.)"""
    broken = copy.deepcopy(int8_file)
    relu = [n for n in broken.graph.node if n.op_type == "Relu"][2]  # after conv3.3.add
    for node in broken.graph.node:
        node.input[:] = [relu.input[0] if i == relu.output[0] else i for i in node.input]
    broken.graph.node.remove(relu)
    with pytest.raises(ValidationError, match=r"cosine .* < .*noise floor.*first layer past it: conv9 \(conv4\.0,"):
        validate_scn_int8(_runner(broken), fused_q, frames, _loaded(qmodel.backbone, frames))
