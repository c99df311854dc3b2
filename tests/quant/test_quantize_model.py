"""quantize_model: what is swapped, what is skipped, and that names (and checkpoints) stay det3d's."""

import pytest
import torch
from calib_helpers import frame_points, make_tiny_model, run_model
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.nn import TensorQuantizer

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers, register_amax_buffers
from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.backbone import ResidualAdd
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trt_centerpoint.model.rpn import Concat
from trt_centerpoint.quant import modules as qm
from trt_centerpoint.quant.calibrate import calibrate, set_amax
from trt_centerpoint.quant.quantize import (
    DEFAULT_SKIP,
    check_weight_amax,
    is_skipped,
    quantizable_layers,
    quantize_model,
)

spconv = import_spconv()


def test_is_skipped_matches_the_module_or_a_parent():
    assert is_skipped("backbone.conv_input.0", DEFAULT_SKIP)
    assert is_skipped("backbone.conv1.0.add", DEFAULT_SKIP)
    assert not is_skipped("backbone.conv2.3.add", DEFAULT_SKIP)
    assert not is_skipped("backbone.conv1", DEFAULT_SKIP)  # the stage itself is not a layer
    assert is_skipped("neck.blocks.0.1", ["neck"])
    assert is_skipped("bbox_head.tasks.1.hm.3", ["bbox_head.tasks.*.hm"])
    assert not is_skipped("bbox_head.tasks.1.reg.3", ["bbox_head.tasks.*.hm"])


def test_default_skip_keeps_input_conv_and_first_block_float(tiny_cfg):
    model = CenterPoint(tiny_cfg)
    float_params = [n for n, _ in model.named_parameters()]
    float_keys = set(model.state_dict())
    swapped = quantize_model(model)
    b = model.backbone
    assert type(b.conv_input[0]) is spconv.SubMConv3d
    assert type(b.conv1[0].conv1) is spconv.SubMConv3d and type(b.conv1[0].conv2) is spconv.SubMConv3d
    assert type(b.conv1[0].add) is ResidualAdd
    assert isinstance(b.conv2[0], qm.QuantSparseConv3d) and isinstance(b.conv2[3].conv1, qm.QuantSubMConv3d)
    assert isinstance(b.conv4[3].add, qm.QuantAdd) and isinstance(b.extra_conv[0], qm.QuantSparseConv3d)
    assert isinstance(model.neck.blocks[0][1], quant_nn.QuantConv2d)
    assert isinstance(model.neck.deblocks[1][0], quant_nn.QuantConvTranspose2d)
    assert isinstance(model.neck.concat, qm.QuantConcat)
    assert isinstance(model.bbox_head.tasks[1].hm[3], quant_nn.QuantConv2d)
    assert isinstance(model.bbox_head.tasks[1].reg[0], quant_nn.QuantConv2d)
    assert type(model.bbox_head.tasks[1].reg[3]) is torch.nn.Conv2d  # the centre-offset output stays float
    everything = quantizable_layers(CenterPoint(tiny_cfg))
    assert sorted(swapped) == sorted(n for n in everything if not is_skipped(n, DEFAULT_SKIP))
    # conv_input.0, conv1.0.conv1 / conv2 / add, one reg.3 per task
    assert len(everything) - len(swapped) == 4 + len(tiny_cfg.head.tasks)
    # det3d names are unchanged; nothing new in the state dict until calibration sets amax
    assert [n for n, _ in model.named_parameters()] == float_params
    assert set(model.state_dict()) == float_keys
    assert quantize_model(model) == []  # already quantized: nothing to do


def test_float_checkpoint_loads_into_quantized_model(tiny_cfg, tmp_path):
    source = make_tiny_model(tiny_cfg, seed=4)
    save_checkpoint(source, tmp_path / "f.pth")
    model = CenterPoint(tiny_cfg)
    quantize_model(model, skip=[])
    load_checkpoint(model, tmp_path / "f.pth")
    ref = source.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_skip_patterns_select_layers(tiny_cfg):
    model = CenterPoint(tiny_cfg)
    quantize_model(model, skip=["neck*", "bbox_head.tasks.*.hm"])
    assert type(model.neck.blocks[0][1]) is torch.nn.Conv2d and type(model.neck.concat) is Concat
    assert type(model.bbox_head.tasks[0].hm[0]) is torch.nn.Conv2d
    assert isinstance(model.bbox_head.tasks[0].reg[0], quant_nn.QuantConv2d)
    assert isinstance(model.backbone.conv_input[0], qm.QuantSubMConv3d)  # not in this skip list


def test_residual_add_is_really_quantized(tiny_cfg, tiny_data):
    """The block's forward calls the QuantAdd (both inputs through its one quantizer), and its amax
    changes the model's output."""
    model = make_tiny_model(tiny_cfg, seed=5)
    quantize_model(model)
    frames = frame_points(tiny_data)
    calibrate(model, frames, method="max", progress=False)
    add = model.backbone.conv3[3].add
    calls = []
    handle = add.input_quantizer.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    before = run_model(model, frames[0])
    handle.remove()
    assert len(calls) == 2 and calls[0] == calls[1]  # the residual branch and the identity
    amax = add.input_quantizer.amax.clone()
    set_amax(add.input_quantizer, amax * 0.05)  # coarse clipping in that add only
    changed = run_model(model, frames[0])
    assert any(not torch.equal(before[k], changed[k]) for k in before)
    set_amax(add.input_quantizer, amax)
    assert all(torch.equal(before[k], v) for k, v in run_model(model, frames[0]).items())
    # the blocks of the default skip list are untouched
    assert not any(n.startswith("backbone.conv1.0.") for n, _ in iter_quantizers(model))


@pytest.mark.parametrize("calib", ["histogram", "max"])
def test_activation_calibrator_choice(tiny_cfg, calib):
    from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator

    model = CenterPoint(tiny_cfg)
    quantize_model(model, input_calib=calib)
    kinds = {type(q._calibrator) for n, q in iter_quantizers(model) if n.endswith("_input_quantizer")}
    assert kinds == {HistogramCalibrator if calib == "histogram" else MaxCalibrator}
    weights = {type(q._calibrator) for n, q in iter_quantizers(model) if n.endswith("_weight_quantizer")}
    assert weights == {MaxCalibrator}
    with pytest.raises(ValueError, match="activation calibrator"):
        quantize_model(CenterPoint(tiny_cfg), input_calib="entropy")


def _weight_amax(module, axis):
    w = module.weight.detach().abs()
    return w.amax(dim=tuple(i for i in range(w.dim()) if i != axis), keepdim=True)


def test_check_weight_amax_refuses_a_conv_transpose_calibrated_per_input_channel(tiny_cfg):
    """An older ptq.pth holds the ConvTranspose weight amax per input channel ([C_in, 1, 1, 1]); loaded into
    this version's model it would quantize and export on axis 0: refused, with the fix in the message."""
    model = CenterPoint(tiny_cfg)
    quantize_model(model)
    for _, module in model.named_modules():
        quantizer = getattr(module, "_weight_quantizer", None)
        if isinstance(quantizer, TensorQuantizer):
            set_amax(quantizer, _weight_amax(module, quantizer.axis[0]))
    deconv = model.neck.deblocks[1][0]
    assert deconv.weight_quantizer.amax.shape == (1, 16, 1, 1)  # [C_in=32, C_out=16, 2, 2]: axis 1
    check_weight_amax(model, "ptq.pth")  # this version's calibration: fine

    old = {k: v.clone() for k, v in model.state_dict().items()}
    old["neck.deblocks.1.0._weight_quantizer._amax"] = _weight_amax(deconv, 0)  # [32, 1, 1, 1]
    fresh = CenterPoint(tiny_cfg)
    quantize_model(fresh)
    register_amax_buffers(fresh, old, force=True)
    fresh.load_state_dict(old)  # loads without complaint: the shape alone decides the axis
    with pytest.raises(UserError) as err:
        check_weight_amax(fresh, "old/ptq.pth")
    message = str(err.value)
    assert isinstance(err.value, CheckpointError) and "\n" not in message
    assert message.startswith("old/ptq.pth: neck.deblocks.1.0 (QuantConvTranspose2d) weight amax has shape "
                              "[32, 1, 1, 1] (per channel on axis 0)")
    assert "on axis 1 (shape [1, 16, 1, 1])" in message and "re-run `trt-centerpoint ptq`" in message

    set_amax(fresh.neck.deblocks[1][0].weight_quantizer, torch.tensor(0.5))  # one scale: legal
    check_weight_amax(fresh, "x")
