"""report.markdown: a full report, a minimal one ("not run" everywhere), the terminal table, atomicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trt_centerpoint.eval.tensor_metrics import error_histogram, tensor_metrics
from trt_centerpoint.report import markdown as build_report
from trt_centerpoint.report.markdown import (
    latency_series,
    render_markdown,
    summary_table,
    write_report,
)
from trt_centerpoint.report.plots import latency_chart


def _tensor(seed: int, noise: float) -> dict:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=200)
    got = ref + rng.normal(scale=noise, size=200)
    return {**tensor_metrics(ref, got), "histogram": error_histogram(ref, got, bins=12)}


def _stages(scale: float) -> dict:
    return {name: {"median_ms": ms * scale, "mean_ms": ms * scale * 1.01, "p90_ms": ms * scale * 1.1,
                   "p99_ms": ms * scale * 1.3, "min_ms": ms * scale * 0.9}
            for name, ms in (("voxelize", 1.5), ("backbone", 12.25), ("end_to_end", 20.0))}


@pytest.fixture
def full_data() -> dict:
    return {
        "title": "Tiny CenterPoint INT8",
        "model": {"config": "configs/tiny.yaml", "checkpoint": "ckpt/model.pt", "checkpoint_sha256": "ab" * 32,
                  "quantization": {"method": "ptq", "calib": "mse", "frames": 32}},
        "accuracy": {"fp32": {"mAP": 0.5123, "per_class": {"car": 0.7311, "pedestrian": 0.2935},
                              "mean_tp_errors": {"mATE": 0.4, "mASE": 0.2, "mAOE": 0.6, "mAVE": 2.9},
                              "nds_without_aae": 0.3957},
                     "int8": {"mAP": 0.5049, "per_class": {"car": 0.7288, "pedestrian": 0.2810},
                              "mean_tp_errors": {"mATE": 0.41, "mASE": 0.3, "mAOE": 0.6, "mAVE": 2.9},
                              "nds_without_aae": 0.3800}, "frames": 81},
        "tensors": {"hm": _tensor(0, 0.01), "reg": _tensor(1, 0.002), "same": {**_tensor(2, 0.0), "snr_db": math.inf}},
        "detections": {"matched_fraction": 0.9731, "frames": 81, "within_m": 0.5},
        "validation": {"scn.int8.onnx": "reference runner vs PyTorch fake quant: cosine 0.999985"},
        "per_layer": {"first_jump": "conv2_out", "criterion": "1-cos > 1e-4 and 10x",
                      "layers": [{"tensor": "conv1_out", "op": "Conv", "cosine": 1.0, "max_abs": 0.0,
                                  "median_abs": 0.0, "snr_db": math.inf},
                                 {"tensor": "conv2_out", "op": "Conv", "cosine": 0.99871, "max_abs": 0.25,
                                  "median_abs": 0.01, "snr_db": 26.3}]},
        "latency": {"pytorch": {"fp32": _stages(1.0), "int8": _stages(0.5)}, "tensorrt": {"int8": _stages(0.1)},
                    "meta": {"device_name": "Test CPU", "threads": 1}},
        "artifacts": {"rpn_head.onnx": {"bytes": 2_345_678, "sha256": "0123456789abcdef" * 4},
                      "scn.onnx": {"bytes": 512, "sha256": "fedcba9876543210" * 4}},
        "stages": {"evaluate": {"status": "ran", "seconds": 12.5, "detail": "81 frames"},
                   "engine": {"status": "unavailable", "seconds": 0.0, "detail": "no TensorRT"}},
        "engine": {"available": False, "reason": "tensorrt is not installed"},
        "sensitivity": {"png": "sensitivity.png"},
        "versions": {"torch": "2.13.0", "onnx": "1.23.2"},
        "output_bounds": {"conv0": {"output_bound": 20000, "max_active": 2706, "headroom": 20000 / 2706,
                                    "path": "conv_input.0", "source": "safe"},
                          "conv3": {"output_bound": 4000, "max_active": 3100, "headroom": 4000 / 3100,
                                    "path": "conv2.0", "source": "scaled"}},
    }


def test_full_report(tmp_path, full_data):
    # the bench stage's chart, next to the report: linked, not redrawn
    latency_chart(tmp_path / "out" / "bench.png", latency_series(full_data["latency"]))
    paths = write_report(tmp_path / "out", full_data)
    names = sorted(p.name for p in paths)
    assert names == ["errors.png", "report.json", "report.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, "bench.png"])  # no temp file
    for png in ("errors.png", "bench.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "latency.png" not in md
    for text in ("# Tiny CenterPoint INT8", "configs/tiny.yaml", "ckpt/model.pt", "0.5123", "0.5049", "-0.0074",
                 "0.7311", "pedestrian", "0.9731", "`conv2_out`", "0.998710", "12.25", "6.12", "2.00x",
                 "rpn_head.onnx", "2.2 MiB", "0123456789ab", "unavailable", "no TensorRT",
                 "tensorrt is not installed", "(errors.png)", "(bench.png)", "(sensitivity.png)",
                 "How to read", "pytorch/fp32", "tensorrt/int8", "Test CPU", "2.13.0", "inf",
                 "output_bound headroom", "1.29 | scaled |", "7.39 |   safe |",
                 "Tightest: 1.29.", "mASE (lower is better)", "+0.1000 (+50.0%)",
                 "NDS without AAE", "0.3957"):
        assert text in md, text
    assert "max |x|" not in md and "`ptq`" in md
    assert f"{full_data['tensors']['hm']['cosine']:.6f}" in md
    assert "not run" not in md
    loaded = json.loads((tmp_path / "out" / "report.json").read_text())
    assert loaded["accuracy"]["fp32"]["mAP"] == 0.5123
    assert loaded["tensors"]["hm"]["cosine"] == pytest.approx(full_data["tensors"]["hm"]["cosine"])
    assert loaded["tensors"]["same"]["snr_db"] is None  # inf -> null, strict JSON
    assert loaded["latency"]["pytorch"]["int8"]["backbone"]["median_ms"] == 12.25 * 0.5
    assert loaded["artifacts"] == full_data["artifacts"]
    assert set(loaded) == set(full_data)  # nothing invented


def test_latency_without_bench_png_has_no_image_link(tmp_path, full_data):
    write_report(tmp_path, full_data)
    md = (tmp_path / "report.md").read_text()
    assert "12.25" in md and "![latency]" not in md and not (tmp_path / "bench.png").exists()


def test_minimal_report_says_not_run(tmp_path):
    data = {"model": {"config": "configs/tiny.yaml"}}
    paths = write_report(tmp_path, data)
    assert sorted(p.name for p in paths) == ["report.json", "report.md"]
    md = (tmp_path / "report.md").read_text()
    for section in ("Accuracy: not run", "Tensor comparison: not run", "Detection agreement: not run",
                    "Latency benchmark: not run", "Per-layer comparison: not run", "Engine: not run"):
        assert section in md, section
    assert json.loads((tmp_path / "report.json").read_text()) == data
    with pytest.raises(ValueError, match="model"):
        write_report(tmp_path / "x", {"title": "no model"})


def test_half_missing_accuracy():
    md = render_markdown({"model": {}, "accuracy": {"fp32": {"mAP": 0.4, "per_class": {"car": 0.6}}}})
    assert "INT8 evaluation: not run" in md and "0.4000" in md and "| AP car" in md


def test_summary_table(full_data):
    text = summary_table(full_data)
    for item in ("0.5123", "0.5049", "-0.0074", "pytorch/int8", "tensorrt/int8", "6.12", "rpn_head.onnx",
                 "0123456789ab", "mASE FP32 / INT8", "0.2000 / 0.3000 (+50.0%)", "NDS without AAE FP32 / INT8"):
        assert item in text, item
    worst = min(full_data["tensors"], key=lambda n: full_data["tensors"][n]["cosine"])
    assert worst in text and "|" not in text
    backbone = next(line for line in text.splitlines() if line.startswith("backbone"))
    assert backbone.split() == ["backbone", "12.25", "6.12", "1.23"]
    minimal = summary_table({"model": {}})
    assert minimal.count("not run") == 4


def test_failure_leaves_no_half_written_report(tmp_path, full_data, monkeypatch):
    def boom(path, tensors):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(build_report, "errors_chart", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(tmp_path, full_data)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "report.md" not in left and "report.json" not in left
    assert not [n for n in left if n.endswith(".tmp")]


def test_failed_md_write_keeps_previous_report(tmp_path, full_data, monkeypatch):
    write_report(tmp_path, {"model": {"config": "old"}})
    old = (tmp_path / "report.md").read_text()

    def bad_render(data, pngs=None):
        raise RuntimeError("render failed")

    monkeypatch.setattr(build_report, "render_markdown", bad_render)
    with pytest.raises(RuntimeError):
        write_report(tmp_path, full_data)
    assert (tmp_path / "report.md").read_text() == old
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pipe_in_a_cell_is_escaped():
    md = render_markdown({"model": {}, "stages": {"export": {"status": "ran", "seconds": 1.0, "detail": "a|b"}}})
    assert "a\\|b" in md


def test_summary_shows_the_cosine_of_every_output_per_task():
    from trt_centerpoint.report.markdown import summary_table

    data = {"model": {"config": "x"}, "tensors": {"reg_0": {"cosine": 0.9}, "hm_0": {"cosine": 0.99},
                                                  "reg_1": {"cosine": 0.8}, "hm_1": {"cosine": 0.999}}}
    text = summary_table(data)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(("reg ", "hm "))}
    assert rows == {"reg": ["0.90000", "0.80000"], "hm": ["0.99000", "0.99900"]}
    assert "task 0" in text and "task 1" in text and "min output cosine" in text


def test_engine_section_says_what_was_built_and_what_it_proves():
    engine = {"available": True, "reason": "TensorRT-RTX 1.7.1.116; TensorRT: TensorRT is not installed",
              "builder": "tensorrt-rtx", "builder_name": "TensorRT-RTX", "version": "1.7.1.116",
              "targets": ["8.6", "8.9", "12.0"], "targets_default": True, "runnable": False,
              "engines": {"rpn_head.int8.rtx.plan": {"onnx": "rpn_head.int8.onnx", "bytes": 4_500_000,
                                                     "build_seconds": 0.91, "strongly_typed": True,
                                                     "layers": "20 conv/matmul layers of the network"}}}
    md = render_markdown({"model": {}, "engine": engine})
    for text in ("## Engines", "built with TensorRT-RTX 1.7.1.116, for compute capability 8.6, 8.9, 12.0 "
                 "(TensorRT-RTX's default)", "TensorRT: TensorRT is not installed", "`rpn_head.int8.rtx.plan`",
                 "`rpn_head.int8.onnx`", "4.3 MiB", "0.91", "RTX GPUs", "not Hopper, not Jetson",
                 "were not run here", "NVIDIA's ONNX parser and builder accept the exported files",
                 "not an INT8 latency figure", "weight-only GEMM", "TensorRT stays the deployment target"):
        assert text in md, text
    trt = {**engine, "builder": "tensorrt", "builder_name": "TensorRT", "version": "10.13.0.35",
           "targets": ["the GPU model it was built on"], "targets_default": False, "runnable": True,
           "comparison": {"frames": 5, "min_cosine": 0.9991, "min_cosine_output": "hm_0", "matched_fraction": 0.95,
                          "within_m": 0.1, "folder": "compare_trt"}}
    md = render_markdown({"model": {}, "engine": trt})
    assert "built with TensorRT 10.13.0.35, for the GPU model it was built on" in md
    assert "ran them here" in md and "weight-only" not in md
    assert "INT8 vs FP32 engines on 5 frames: min output cosine 0.999100 (hm_0)" in md and "`compare_trt/`" in md


def test_latency_shows_speed_ups_only_where_int8_runs_int8_kernels(tmp_path):
    """onnx / torch INT8 on the CPU is simulated quantization: a FP32 / INT8 ratio there is noise, not a speed-up."""
    latency = {"onnx": {"fp32": _stages(1.0), "int8": _stages(1.4)},
               "trt": {"fp32": _stages(0.2), "int8": _stages(0.1)},
               "meta": {"device": "cpu"},
               "settings": {"onnx/fp32": {"device": "cpu", "timer": "perf_counter", "torch_threads": 1},
                            "onnx/int8": {"device": "cpu", "timer": "perf_counter", "torch_threads": 1},
                            "trt/fp32": {"device": "cuda", "timer": "cuda_events", "torch_threads": 1},
                            "trt/int8": {"device": "cuda", "timer": "cuda_events", "torch_threads": 1}}}
    md = "\n".join(build_report._section_latency({"latency": latency}, {}))
    assert "speed-up trt (FP32/INT8)" in md and "speed-up onnx" not in md
    assert "onnx: INT8 runs as simulated quantization" in md
    assert "Measured with (per column):" in md and "| trt/int8 " in md and "cuda_events" in md
    assert set(latency_series(latency)) == {"onnx/fp32", "onnx/int8", "trt/fp32", "trt/int8"}
