"""`compare`'s printed summary and backend choice, without running a model."""

import pytest

from trt_centerpoint.config import load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.stages.compare import run_compare, summary_lines


def figures(with_check: bool, with_accuracy: bool) -> dict:
    out = {
        "tensors": {"hm_0": {"cosine": 0.9994, "max_abs": 0.5, "median_abs": 0.001, "snr_db": 30.25}},
        "per_layer": {"first_jump": "conv2.0"},
        "detections": {"int8_vs_fp32": {"0.1m": {"matched_fraction": 0.36}, "0.5m": {"matched_fraction": 0.87}}},
        "accuracy": None,
    }
    if with_check:
        out["detections"]["int8_files_vs_pytorch_fake_quant"] = {
            "files": {"0.01m": {"matched_fraction": 0.058}},
            "baseline_fp16_features": {"0.01m": {"matched_fraction": 0.079}}}
    if with_accuracy:
        out["accuracy"] = {"fp32": {"mAP": 0.7469, "bands": {"0-20 m": {"mAP": 0.8}, "40+ m": {"mAP": None}}},
                           "int8": {"mAP": 0.7442, "bands": {"0-20 m": {"mAP": 0.79}, "40+ m": {"mAP": None}}},
                           "delta_mAP": -0.0027}
        out["bev"] = [{"png": "bev_1.png"}, {"png": "bev_2.png"}]
    return out


def test_summary_lines_say_every_figure():
    lines = summary_lines(figures(True, True), "build")
    text = "\n".join(lines)
    assert "hm_0" in lines[2] and "0.999400" in lines[2] and "30.2" in lines[2]  # header, rule, first row
    assert "per layer: the error first jumps at conv2.0" in lines
    assert "INT8 vs FP32 boxes within 0.1m: 0.360" in lines and "INT8 vs FP32 boxes within 0.5m: 0.870" in lines
    assert ("INT8 files vs PyTorch fake quant within 0.01m: 0.058 (PyTorch vs itself with FP16-rounded voxel "
            "features: 0.079)") in lines
    assert "mAP FP32 0.7469  INT8 0.7442  (-0.0027)" in lines
    assert "  0-20 m: mAP FP32 0.8000  INT8 0.7900  (-0.0100)" in lines and "40+ m" not in text  # no GT there
    assert "disagree most: build/bev_1.png, build/bev_2.png" in text
    assert lines[-1] == "wrote build/compare.json and build/compare.run_results.json (Polygraphy RunResults)"
    assert text.count("\n") == len(lines) - 1


def test_summary_lines_leave_out_what_did_not_run():
    text = "\n".join(summary_lines(figures(False, False), "out"))
    assert "mAP" not in text and "fake quant" not in text and "bev_" not in text


def test_compare_refuses_a_backend_that_does_not_run_files(tmp_path):
    with pytest.raises(UserError, match="--backend torch"):
        run_compare(load_config("tiny"), tmp_path, tmp_path, backend="torch", progress=False)
