"""Real TensorRT: build engines from tiny Q/DQ / FP16-I/O ONNX models and run them with both runners,
checked against ONNX Runtime. Every test is marked ``tensorrt`` and skipped where TensorRT cannot be used."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt


def _reference(onnx_path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x})))


def _input(dtype=np.float32):
    return np.random.default_rng(1).uniform(-2, 2, (1, 4, 8, 8)).astype(dtype)


@pytest.fixture
def int8_engine(tmp_path, qdq_onnx):
    from trt_centerpoint.runtime.trt.build import build_engine

    return build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan", workspace_mb=256,
                        timing_cache=tmp_path / "timing.cache")


def test_build_int8_engine(int8_engine, tmp_path, qdq_onnx):
    from trt_centerpoint.runtime.trt.build import build_engine

    assert int8_engine.engine.stat().st_size > 0
    record = json.loads(int8_engine.layers.read_text())
    assert record["detailed"] and record["num_layers"] >= 1
    assert record["counts"]["INT8"] >= 1, record["layers"]
    cache = tmp_path / "timing.cache"
    assert cache.stat().st_size > 0
    again = build_engine(qdq_onnx, tmp_path / "again.plan", workspace_mb=256, timing_cache=cache)
    assert "loaded" in again.log.read_text()


def test_polygraphy_runner_matches_onnxruntime(int8_engine, qdq_onnx):
    from trt_centerpoint.runtime.trt.runner import TrtEngineRunner

    x = _input()
    ref = _reference(qdq_onnx, x)
    with TrtEngineRunner(int8_engine.engine) as head:
        assert head.input_names == ["input"] and sorted(head.output_names) == ["hm", "reg"]
        out = head.infer({"input": x})
        assert head.last_inference_time() > 0
    for name, value in ref.items():
        # INT8 kernels vs simulated quantization: rounding may differ by one quantization step
        np.testing.assert_allclose(out[name], value, atol=0.15, rtol=0.05)


def test_pycuda_runner_matches_onnxruntime(int8_engine, qdq_onnx):
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    from trt_centerpoint.runtime.trt.pycuda_runner import PycudaEngineRunner

    x = _input()
    ref = _reference(qdq_onnx, x)
    with PycudaEngineRunner(int8_engine.engine) as head:
        out = head.infer({"input": x})
        assert head.last_gpu_ms > 0 and head.last_total_ms >= head.last_gpu_ms
        times = head.time_gpu(iterations=5, warmup=2)
        assert len(times) == 5 and min(times) > 0
    for name, value in ref.items():
        np.testing.assert_allclose(out[name], value, atol=0.15, rtol=0.05)


def test_fp16_io_engine(tmp_path, fp16_io_onnx):
    from trt_centerpoint.runtime.trt.build import build_engine
    from trt_centerpoint.runtime.trt.runner import TrtEngineRunner

    result = build_engine(fp16_io_onnx, tmp_path / "rpn_head.int8.fp16io.plan", workspace_mb=256, fp16_io=True)
    x = _input(np.float16)
    ref = _reference(fp16_io_onnx, x)
    with TrtEngineRunner(result.engine) as head:
        out = head.infer({"input": x.astype(np.float32)})  # cast to FP16 by the runner
    assert out["hm"].dtype == np.float16
    np.testing.assert_allclose(out["hm"].astype(np.float32), ref["hm"].astype(np.float32), atol=0.2, rtol=0.05)


def test_cli_builds(tmp_path, qdq_onnx, capsys):
    from trt_centerpoint.cli import main

    out = tmp_path / "cli.plan"
    assert main(["engine", "--onnx", str(qdq_onnx), "--out", str(out), "--workspace", "256"]) == 0
    assert out.exists() and "INT8" in capsys.readouterr().out
