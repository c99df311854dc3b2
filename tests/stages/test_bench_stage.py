"""`bench` checks every input before it times anything."""

import numpy as np
import pytest

from trt_centerpoint.config import load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.stages import bench as bench_stage


def test_a_missing_int8_file_fails_before_any_benchmark(tmp_path, monkeypatch):
    (tmp_path / "points").mkdir()
    np.zeros((4, 5), np.float32).tofile(tmp_path / "points" / "f.bin")
    timed, made = [], []

    def make_pipeline(cfg, backend, precision, **kwargs):
        made.append((backend, precision))
        if precision == "int8":
            raise UserError("build/scn.int8.onnx: missing")
        return object()

    monkeypatch.setattr(bench_stage, "make_pipeline", make_pipeline)
    monkeypatch.setattr(bench_stage, "run_benchmark", lambda *a, **k: timed.append(a))
    with pytest.raises(UserError, match="scn.int8.onnx: missing"):
        bench_stage.run_bench(load_config("tiny"), tmp_path, tmp_path, precisions=("fp32", "int8"), progress=False)
    assert made == [("onnx", "fp32"), ("onnx", "int8")] and timed == []


def test_latency_section_keeps_each_columns_settings():
    from trt_centerpoint.eval.bench import BenchResult, LatencyStats

    def result(threads, device):
        return BenchResult({"backbone": LatencyStats.from_ms([1.0, 2.0, 3.0])},
                           {"device": device, "torch_threads": threads, "versions": {"torch": "x"}})

    section = bench_stage.latency_section({"onnx/fp32": result(1, "cpu"), "trt/int8": result(2, "cuda")})
    assert section["onnx"]["fp32"]["backbone"]["median_ms"] == 2.0
    assert section["settings"] == {"onnx/fp32": {"device": "cpu", "torch_threads": 1},
                                   "trt/int8": {"device": "cuda", "torch_threads": 2}}
