"""`build`'s engine stage with the TensorRT fakes: engine names by builder, the FP16 variant, and where a
TensorRT engine can run, the engines in bench and in a second comparison (no GPU here)."""

import json

import pytest

import trt_centerpoint.stages.build as build_stage
from trt_centerpoint.artifacts import COMPARE_ENGINES_DIR, COMPARE_JSON, ENGINE_FILES
from trt_centerpoint.report.markdown import render_markdown
from trt_centerpoint.stages.build import BuildOptions, _Build


@pytest.fixture
def folder(tmp_path, make_head):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not read by the engine stage")
    out = tmp_path / "build"
    out.mkdir()
    make_head(out / "rpn_head.fp32.onnx", qdq=False)
    make_head(out / "rpn_head.int8.onnx", qdq=True)
    make_head(out / "rpn_head.int8.fp16.onnx", qdq=True)
    return BuildOptions(config="tiny", checkpoint=checkpoint, out=out, eval_frames=2, progress=False)


def test_tensorrt_engines_are_built_compared_and_benched(folder, fake_trt, fake_build, monkeypatch):
    fake_trt("10.13.0.35")
    rec = fake_build()
    b = _Build(folder, log=lambda _: None)
    engine = b.engine()
    out = folder.out
    assert engine["builder"] == "tensorrt" and engine["runnable"] and engine["version"] == "10.13.0.35"
    assert list(engine["engines"]) == ["rpn_head.fp32.plan", "rpn_head.int8.plan", "rpn_head.int8.fp16.plan"]
    assert set(ENGINE_FILES.values()) <= set(engine["engines"])  # what `--backend trt` (eval, compare) opens
    for plan in engine["engines"]:
        assert (out / plan).read_bytes() == b"FAKE-ENGINE"
        assert json.loads((out / plan.replace(".plan", ".layers.json")).read_text())["builder"] == "tensorrt"
    assert rec.calls["cache_in"] is not None  # the timing cache is shared across the three builds
    assert set(b.stages.entries) == {"engine_fp32", "engine_int8", "engine_int8_fp16"}

    calls = []

    def fake_compare(cfg, artifacts, data, *, out, backend, **kwargs):
        calls.append((backend, out))
        figures = {"frames": 2, "tensors": {"hm_0": {"cosine": 0.999}, "reg_0": {"cosine": 0.99}},
                   "detections": {"int8_vs_fp32": {"0.1m": {"matched_fraction": 0.9, "within_m": 0.1}}}}
        (out / COMPARE_JSON).write_text(json.dumps(figures))
        for name in ("compare.run_results.json", "detections.fp32.json", "detections.int8.json"):
            (out / name).write_text("{}")
        return figures

    monkeypatch.setattr(build_stage, "run_compare", fake_compare)
    for name in ("scn.fp16.onnx", "scn.int8.onnx"):
        (out / name).write_bytes(b"scn")
    (out / "eval").mkdir()
    comparison = b.compare_engines(out / "eval", folder.checkpoint, engine)
    assert calls == [("trt", out / COMPARE_ENGINES_DIR)]
    assert comparison["min_cosine"] == 0.99 and comparison["min_cosine_output"] == "reg_0"
    assert comparison["matched_fraction"] == 0.9 and comparison["folder"] == COMPARE_ENGINES_DIR

    benched = []

    def fake_bench(cfg, artifacts, data, *, backends, **kwargs):
        benched.append(list(backends))
        (out / "bench.json").write_text("{}")
        (out / "bench.png").write_bytes(b"png")

    monkeypatch.setattr(build_stage, "run_bench", fake_bench)
    b.bench(out / "eval", engine)
    assert benched == [["onnx", "trt"]]

    engine["comparison"] = comparison
    md = "\n".join(render_markdown({"model": {}, "engine": engine}).splitlines())
    assert "built with TensorRT 10.13.0.35, for the GPU model it was built on" in md
    assert "`rpn_head.int8.fp16.plan`" in md and "min output cosine 0.990000 (reg_0)" in md


def test_rtx_engines_are_not_run_here(folder, no_tensorrt, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX (the rtx extra)")
    b = _Build(folder, log=lambda _: None)
    engine = b.engine()
    assert engine["builder"] == "tensorrt-rtx" and not engine["runnable"]
    assert list(engine["engines"]) == ["rpn_head.fp32.rtx.plan", "rpn_head.int8.rtx.plan",
                                       "rpn_head.int8.fp16.rtx.plan"]
    assert engine["targets"] == ["8.6", "8.9", "12.0"] and engine["targets_default"]
    assert b.compare_engines(folder.out / "eval", folder.checkpoint, engine) is None
    md = render_markdown({"model": {}, "engine": engine})
    for text in ("built with TensorRT-RTX", "compute capability 8.6, 8.9, 12.0 (TensorRT-RTX's default)",
                 "not Hopper, not Jetson", "NVIDIA's ONNX parser and builder accept", "not an INT8 latency figure",
                 "weight-only GEMM", "`rpn_head.int8.rtx.plan`"):
        assert text in md, text
