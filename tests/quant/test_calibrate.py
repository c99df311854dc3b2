"""Calibration: amax for every quantizer, amax checks, frame selection, and CPU state-dict loading."""

import copy

import numpy as np
import pytest
import torch
from calib_helpers import frame_points, make_tiny_model, run_model
from pytorch_quantization.nn import QuantConv2d

from trt_centerpoint._compat import pytorch_quantization as compat
from trt_centerpoint._compat.pytorch_quantization import iter_quantizers, register_amax_buffers
from trt_centerpoint.data.points import write_points_bin
from trt_centerpoint.errors import UserError
from trt_centerpoint.quant.calibrate import (
    CalibrationError,
    ZeroWeightChannelWarning,
    calibrate,
    calibration_mode,
    check_amax,
    compute_amax,
    select_calibration_files,
)
from trt_centerpoint.quant.modules import input_descriptor, weight_descriptor
from trt_centerpoint.quant.ptq import prepare_model


@pytest.fixture(scope="module")
def calibrated(tiny_cfg, tiny_data):
    model, _ = prepare_model(tiny_cfg, model=make_tiny_model(tiny_cfg, seed=6))
    result = calibrate(model, frame_points(tiny_data), method="mse", progress=False)
    return model, result


def test_every_quantizer_gets_a_finite_positive_amax(calibrated):
    model, result = calibrated
    quantizers = dict(iter_quantizers(model))
    assert result.frames_used == 3 and result.frames_empty == 0
    assert set(result.amax) == set(quantizers)
    for name, q in quantizers.items():
        assert q.amax is not None and torch.isfinite(q.amax).all() and (q.amax > 0).all(), name
        assert q._if_quant and not q._if_calib  # back in quant mode
        if name.endswith("_input_quantizer"):
            assert q.amax.numel() == 1
            assert float(q.amax) <= float(q._calibrator._calib_bin_edges[-1])  # mse clips, never extends


def test_concat_and_its_consumer_get_one_scale(calibrated):
    """The concat's inputs are calibrated as one tensor: the same values the head's first conv sees, so
    both quantizers agree and the second fake quant is a no-op (one INT8 scale, as TensorRT wants)."""
    model, _ = calibrated
    concat_q, conv_q = model.neck.concat.input_quantizer, model.bbox_head.shared_conv[0].input_quantizer
    assert torch.equal(concat_q.amax, conv_q.amax)
    x = torch.rand(1, 4, 8, 8) * float(concat_q.amax) * 1.2
    once = concat_q(x)
    assert torch.equal(conv_q(once), once)


def test_identical_histograms_are_searched_once(calibrated, monkeypatch):
    from trt_centerpoint.quant import calibrate as calibrate_module

    model, _ = calibrated
    calls = []
    real = calibrate_module._histogram_amax
    monkeypatch.setattr(calibrate_module, "_histogram_amax", lambda *a: calls.append(1) or real(*a))
    amax = compute_amax(model, method="mse")
    inputs = [n for n in amax if n.endswith("_input_quantizer")]
    heads = [n for n in inputs if n.startswith("bbox_head.tasks.") and n.endswith(".0._input_quantizer")]
    assert len(heads) == 12 and len({amax[n][0] for n in heads}) == 1  # all read the shared conv's output
    assert len(calls) <= len(inputs) - len(heads) + 1


def test_weight_amax_is_the_per_channel_max(calibrated):
    model, _ = calibrated
    sparse = model.backbone.conv3[3].conv2
    assert torch.equal(sparse.weight_quantizer.amax, sparse.weight.detach().abs().amax(dim=(1, 2, 3, 4), keepdim=True))
    conv = model.neck.blocks[1][4]
    assert torch.equal(conv.weight_quantizer.amax, conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True))
    deconv = model.neck.deblocks[1][0]  # [C_in, C_out, kh, kw]: per output channel is axis 1
    assert torch.equal(deconv.weight_quantizer.amax, deconv.weight.detach().abs().amax(dim=(0, 2, 3), keepdim=True))


def test_state_dict_only_adds_amax(calibrated, tiny_cfg):
    model, _ = calibrated
    float_keys = set(prepare_model(tiny_cfg)[0].state_dict())  # fused, quantized, uncalibrated
    keys = set(model.state_dict())
    assert float_keys <= keys
    assert keys - float_keys == {f"{n}._amax" for n, _ in iter_quantizers(model)}


def test_loading_into_a_fresh_model_on_cpu(calibrated, tiny_cfg, tiny_data):
    model, _ = calibrated
    state = model.state_dict()
    fresh, _ = prepare_model(tiny_cfg)
    assert compat.needs_amax_preregistration()  # the pinned 2.1.3
    if not torch.cuda.is_available():  # the library's own path calls .cuda()
        with pytest.raises((AssertionError, RuntimeError)):
            copy.deepcopy(fresh).load_state_dict(state)
    assert register_amax_buffers(fresh, state) == len(list(iter_quantizers(fresh)))
    fresh.load_state_dict(state)
    points = frame_points(tiny_data)[1]
    ref, out = run_model(model, points), run_model(fresh, points)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_version_guard():
    assert compat.needs_amax_preregistration("2.1.3")
    assert compat.needs_amax_preregistration("2.1.2")
    assert not compat.needs_amax_preregistration("2.2.0")
    assert not compat.needs_amax_preregistration("unknown")


@pytest.mark.parametrize("method", ["max", "percentile"])
def test_other_methods(calibrated, method):
    model, _ = calibrated
    mse = {n: float(q.amax) for n, q in iter_quantizers(model) if n.endswith("_input_quantizer")}
    try:
        compute_amax(model, method=method, percentile=99.0)
        other = {n: float(q.amax) for n, q in iter_quantizers(model) if n.endswith("_input_quantizer")}
    finally:
        compute_amax(model, method="mse")
    assert other.keys() == mse.keys() and other != mse
    if method == "max":
        assert all(other[n] >= mse[n] for n in mse)


def test_entropy_on_one_layer():
    conv = QuantConv2d(3, 4, 3, quant_desc_input=input_descriptor(), quant_desc_weight=weight_descriptor(0))
    with calibration_mode(conv), torch.no_grad():
        conv(torch.relu(torch.randn(2, 3, 16, 16)))
    amax = compute_amax(conv, method="entropy")
    assert 0 < amax["_input_quantizer"][0] <= float(conv._input_quantizer._calibrator._calib_bin_edges[-1])


def test_bad_amax_values_name_the_quantizer():
    with pytest.raises(CalibrationError, match="neck.blocks.0.1._input_quantizer: calibrated amax is not finite"):
        check_amax("neck.blocks.0.1._input_quantizer", torch.tensor(float("nan")), is_weight=False)
    with pytest.raises(CalibrationError, match="b._weight_quantizer: calibrated amax is not finite"):
        check_amax("b._weight_quantizer", torch.tensor([1.0, float("inf")]), is_weight=True)
    with pytest.warns(ZeroWeightChannelWarning, match="c._weight_quantizer: 1 of 3 weight channels are all zero"):
        fixed = check_amax("c._weight_quantizer", torch.tensor([0.5, 0.0, 0.25]), is_weight=True)
    assert fixed.tolist() == [0.5, 0.5, 0.25]


def test_a_dead_layer_is_an_error_naming_its_quantizer(tiny_cfg, tiny_data):
    model, _ = prepare_model(tiny_cfg, model=make_tiny_model(tiny_cfg, seed=7))
    with torch.no_grad():  # neck.blocks.0.1 outputs 0 everywhere: its weights are all-zero channels
        model.neck.blocks[0][1].weight.zero_()
        model.neck.blocks[0][1].bias.zero_()
    quantizer = r"neck\.blocks\.0\.4\._input_quantizer"
    with pytest.warns(ZeroWeightChannelWarning), pytest.raises(CalibrationError, match=quantizer):
        calibrate(model, frame_points(tiny_data)[:1], method="mse", progress=False)


def test_frame_selection_and_empty_frames(tmp_path, tiny_cfg, tiny_data):
    files = select_calibration_files(tiny_data)
    assert len(files) == 3
    assert select_calibration_files(tiny_data, 2) == [files[0], files[2]]  # spread over the folder
    with pytest.raises(UserError, match="--num-frames must be >= 1"):
        select_calibration_files(tiny_data, 0)
    with pytest.raises(UserError, match="no .bin or .npy"):
        select_calibration_files(tmp_path)
    far = np.full((10, 5), 500.0, dtype=np.float32)  # every point outside the range
    write_points_bin(tmp_path / "far.bin", far)
    model, _ = prepare_model(tiny_cfg)
    with pytest.raises(CalibrationError, match="no calibration frame had a point inside"):
        calibrate(model, [torch.from_numpy(far)], progress=False)
