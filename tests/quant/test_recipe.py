"""`ptq`'s recipes: the default (full INT8 but the documented float layers, calibrated, then activation ranges
learned label-free with the weights unchanged) and `--recipe calibrate` (calibration only, the earlier skip list)."""

import copy

import numpy as np
import pytest
import torch
from calib_helpers import make_tiny_model

from trt_centerpoint import cli
from trt_centerpoint._compat.pytorch_quantization import iter_quantizers
from trt_centerpoint.data.sampling import evenly_spaced_indices
from trt_centerpoint.data.source import list_frames, read_frame
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.calib_outputs import CalibrationOutputs
from trt_centerpoint.quant.calibrate import select_calibration_files
from trt_centerpoint.quant.ptq import load_quantized_model, ptq_model
from trt_centerpoint.quant.qat import QATOptions, run_qat
from trt_centerpoint.quant.quantize import DEFAULT_SKIP, is_skipped, quantizable_layers
from trt_centerpoint.quant.recipe import FLOAT_LAYERS, default_skip, float_layer_reasons, run_recipe


def _is_weight(key: str) -> bool:
    return key.endswith("_weight_quantizer._amax")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cfg, tiny_data):
    """The FP32 checkpoint, the default ptq, the calibration of the same layers alone, and `--recipe calibrate`."""
    folder = tmp_path_factory.mktemp("recipe")
    fp32 = folder / "fp32.pth"
    save_checkpoint(make_tiny_model(tiny_cfg, seed=8), fp32)
    default = folder / "ptq.pth"
    assert cli.main(["ptq", "-c", "tiny", "-p", str(fp32), "--calib-data", str(tiny_data), "--out", str(default),
                     "--frames", "2", "--quiet"]) == 0
    calibrated, _ = ptq_model(tiny_cfg, fp32, select_calibration_files(tiny_data, 2), skip=list(FLOAT_LAYERS),
                              progress=False)
    old = folder / "ptq_calibrate.pth"
    assert cli.main(["ptq", "-c", "tiny", "-p", str(fp32), "--calib-data", str(tiny_data), "--out", str(old),
                     "--recipe", "calibrate", "--quiet"]) == 0
    return fp32, default, calibrated, old


def test_the_default_quantizes_every_layer_but_the_documented_float_ones(runs, tiny_cfg):
    model = load_quantized_model(runs[1])
    meta = model.ptq_meta
    assert meta["recipe"] == "learn-ranges" and meta["skip"] == list(FLOAT_LAYERS)
    every = quantizable_layers(CenterPoint(tiny_cfg))
    floats = [name for name in every if is_skipped(name, FLOAT_LAYERS)]
    assert floats == ["backbone.conv_input.0"]  # the 5-channel sparse input conv only
    assert sorted(meta["quantized_layers"]) == sorted(set(every) - set(floats))
    assert any(name.startswith("bbox_head.tasks.") and name.endswith("reg.3") for name in meta["quantized_layers"])
    assert meta["float_layers"] == {p: FLOAT_LAYERS[p] for p in FLOAT_LAYERS}
    assert quantizable_layers(model) == floats  # what the loader rebuilt: every other layer is a quantized module


def test_the_default_learns_the_activation_ranges_and_keeps_the_calibrated_weights(runs):
    _, default, calibrated, _ = runs
    learned = load_quantized_model(default).state_dict()
    calib = calibrated.state_dict()
    assert learned.keys() == calib.keys()
    # the RPN and head activation ranges learn; the sparse backbone's stay calibrated (no backward through it)
    acts = [k for k in calib if k.endswith("_amax") and not _is_weight(k) and not k.startswith("backbone.")]
    moved = [k for k in acts if not torch.equal(learned[k], calib[k])]
    assert acts and len(moved) == len(acts), f"activation ranges not learned: {sorted(set(acts) - set(moved))[:3]}"
    assert any(k.startswith("backbone.") and k.endswith("_input_quantizer._amax") for k in calib)
    for key in calib:  # weights, biases, weight ranges and the backbone's ranges: the calibrated model's, bit for bit
        if key not in acts:
            assert torch.equal(learned[key], calib[key]), key
    record = load_quantized_model(default).ptq_meta["learned_ranges"]
    assert record["objective"] == "distill" and record["train_weights"] is False and record["epochs"] == 1
    assert record["frames"] == 2 == load_quantized_model(default).ptq_meta["num_frames"]  # the calibration frames
    # the FP32 targets came from the calibration passes: the teacher model never ran, and nothing was augmented
    assert record["teacher_steps_reused"] == record["steps_per_epoch"] == 2 and record["augment"] is False
    assert set(record["amax_ratio"]) == {k[: -len("._amax")] for k in moved}


def test_recipe_calibrate_is_the_earlier_behaviour(runs, tiny_cfg, tiny_data):
    fp32, _, _, old = runs
    model = load_quantized_model(old)
    assert model.ptq_meta["skip"] == list(DEFAULT_SKIP) and model.ptq_meta["recipe"] == "calibrate"
    assert "learned_ranges" not in model.ptq_meta and "stage" not in model.ptq_meta
    assert set(model.ptq_meta["float_layers"]) == set(DEFAULT_SKIP)
    reference, _ = ptq_model(tiny_cfg, fp32, select_calibration_files(tiny_data), progress=False)
    expected = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_float_layer_reasons_name_the_patterns_that_left_a_layer_float():
    assert default_skip() == list(FLOAT_LAYERS) and default_skip("calibrate") == list(DEFAULT_SKIP)
    reasons = float_layer_reasons(["backbone.conv_input*", "nothing.matches", "neck.blocks.0.*"],
                                  ["backbone.conv_input.0", "neck.blocks.0.1"])
    assert list(reasons) == ["backbone.conv_input*", "neck.blocks.0.*"]
    assert "FP16" in reasons["backbone.conv_input*"] and "--skip" in reasons["neck.blocks.0.*"]
    with pytest.raises(UserError, match="--recipe"):
        run_recipe("tiny", "x.pth", "d", "o.pth", recipe="other")


def test_calibration_outputs_are_the_float_model_s_own(tiny_cfg, tiny_data, tmp_path):
    fp32 = tmp_path / "fp32.pth"
    save_checkpoint(make_tiny_model(tiny_cfg, seed=8), fp32)
    files = select_calibration_files(tiny_data, 2)
    indices = evenly_spaced_indices(len(list_frames(tiny_data)), 2)
    cache = CalibrationOutputs(tmp_path, indices)
    model, _ = ptq_model(tiny_cfg, fp32, files, skip=list(FLOAT_LAYERS), progress=False, on_output=cache.save)
    assert cache.saved == set(indices) and len(indices) == 2
    twin = copy.deepcopy(model)  # the calibrated model with every quantizer off: the float model calibration ran
    for _, quantizer in iter_quantizers(twin):
        quantizer.disable()
    expected = []
    for ref in files:
        voxels = twin.voxelize([torch.from_numpy(read_frame(ref, tiny_cfg.voxel.num_point_features).points)])
        with torch.no_grad():
            expected.append(twin(voxels.features, voxels.coords, 1))
    for index, want in zip(indices, expected):
        got = cache(np.array([index]))
        assert [set(t) for t in got] == [set(t) for t in want]
        assert all(torch.equal(got[t][name], want[t][name]) for t in range(len(want)) for name in want[t])
    both = cache(np.array(indices))  # a step of two frames: batched along dim 0
    assert all(torch.equal(both[0][name], torch.cat([expected[0][0][name], expected[1][0][name]])) for name in both[0])
    assert cache(np.array([indices[0], max(indices) + 1])) is None  # one frame not calibrated: the teacher runs


def test_run_qat_refuses_given_targets_for_augmented_frames(tmp_path):
    with pytest.raises(ValueError, match="augment=False"):
        run_qat(tmp_path / "x.pth", tmp_path, tmp_path / "out.pth", QATOptions(augment=True),
                teacher_outputs=lambda idx: None)
