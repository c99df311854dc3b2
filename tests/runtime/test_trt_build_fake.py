"""Engine-build orchestration against a fake ``tensorrt`` and a fake Polygraphy backend, and the CLI path.

No real TensorRT runs here: these prove what the build asks Polygraphy for on each version, that the timing
cache is read and written, and that nothing half-built is left behind.
"""

import json
import sys

import pytest
from polygraphy.logger import G_LOGGER
from trt_facts import ENGINE_INFO_11, NO_GPU_ERROR

from trt_centerpoint.cli import main
from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.build import build_engine
from trt_centerpoint.runtime.trt.inspect import format_counts


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_strongly_typed_on_10_12(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0.36")
    rec = fake_build()
    result = build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan", workspace_mb=512)
    assert rec.calls["network"]["strongly_typed"] is True
    assert rec.calls["network"]["path"] == str(qdq_onnx)
    config = rec.calls["config"]
    assert "int8" not in config and "fp16" not in config
    assert config["profiling_verbosity"] == "DETAILED"
    assert config["memory_pool_limits"] == {"WORKSPACE": 512 << 20}
    assert rec.calls["inspector_format"] == "JSON"
    assert result.settings.strongly_typed and result.summary["counts"]["INT8"] == 2
    assert (tmp_path / "rpn_head.int8.plan").read_bytes() == b"FAKE-ENGINE"


def test_int8_fp16_flags_on_10_8(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.8.0.43")
    rec = fake_build()
    result = build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan")
    assert rec.calls["network"]["strongly_typed"] is False
    assert rec.calls["config"]["int8"] is True and rec.calls["config"]["fp16"] is True
    assert rec.calls["config"]["memory_pool_limits"] == {"WORKSPACE": 2048 << 20}
    assert not result.settings.strongly_typed


def test_fp32_onnx_on_10_8_gets_no_flags(tmp_path, fp32_onnx, fake_trt, fake_build):
    fake_trt("10.8.0")
    rec = fake_build()
    build_engine(fp32_onnx, tmp_path / "rpn_head.plan")
    assert "int8" not in rec.calls["config"] and "fp16" not in rec.calls["config"]


def test_tensorrt_11_keeps_the_deprecated_creation_flag(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("11.4.0")  # 11.0 and 11.4 still define STRONGLY_TYPED (deprecated, ignored: 11 is strongly typed)
    rec = fake_build(engine_info=ENGINE_INFO_11)
    result = build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan")
    assert rec.calls["network"]["strongly_typed"] is True
    assert "int8" not in rec.calls["config"] and "fp16" not in rec.calls["config"]
    assert result.settings.strongly_typed
    # TensorRT 11's inspector JSON ("Format" and "Datatype" apart, "I/O Tensors") gives the same summary as 10's
    assert format_counts(result.summary) == "4 layers: 2 INT8, 1 FP16, 1 FP32"
    assert [(t["name"], t["mode"], t["dtype"]) for t in result.summary["io"]] == [
        ("input", "input", "FP32"), ("hm", "output", "FP32"), ("reg", "output", "FP32")]


def test_a_later_tensorrt_without_the_creation_flag(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("12.0.0", strongly_typed_flag=False)  # should a later TensorRT drop it: no flag, still strongly typed
    rec = fake_build()
    result = build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan")
    assert rec.calls["network"]["strongly_typed"] is False
    assert result.settings.strongly_typed


def test_engine_without_a_usable_gpu_is_one_line(tmp_path, qdq_onnx, fake_trt, fake_build, capsys):
    """The real bindings raise TypeError (not RuntimeError) from Builder() without a usable GPU."""
    fake_trt("10.16.0", builder_error=TypeError(NO_GPU_ERROR))
    fake_build()
    rc = main(["engine", "--onnx", str(qdq_onnx), "--out", str(tmp_path / "rpn_head.int8.plan"),
               "--builder", "tensorrt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert "TensorRT 10.16.0 is installed but cannot create a builder" in err and "nullptr" in err
    assert not (tmp_path / "rpn_head.int8.plan").exists()


def test_outputs_log_and_summary(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0")
    fake_build()
    out = tmp_path / "rpn_head.int8.plan"
    result = build_engine(qdq_onnx, out)
    assert _files(tmp_path) == ["rpn_head.int8.build.log", "rpn_head.int8.layers.json",
                                "rpn_head.int8.onnx", "rpn_head.int8.plan"]
    record = json.loads(result.layers.read_text())
    assert record["engine"] == "rpn_head.int8.plan" and record["tensorrt"] == "10.12.0"
    assert record["counts"] == {"INT8": 2, "FP16": 1, "FP32": 1} and record["num_layers"] == 4
    assert record["settings"]["strongly_typed"] is True and record["engine_bytes"] == len(b"FAKE-ENGINE")
    log = result.log.read_text()
    assert "strongly typed" in log and "fake TensorRT: a build warning" in log
    assert "fake TensorRT: tactic chosen" in log  # verbose messages (TensorRT's INFO) are kept
    assert "4 layers: 2 INT8, 1 FP16, 1 FP32" in log


def test_polygraphy_logger_is_restored(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0")
    fake_build()
    before = (G_LOGGER.use_python_logging_system, str(G_LOGGER.module_severity), G_LOGGER.colors)
    build_engine(qdq_onnx, tmp_path / "e.plan")
    assert (G_LOGGER.use_python_logging_system, str(G_LOGGER.module_severity), G_LOGGER.colors) == before


def test_timing_cache_loaded_and_saved(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0")
    cache = tmp_path / "cache" / "timing.cache"
    rec = fake_build(cache_out=b"CACHE-v1")
    result = build_engine(qdq_onnx, tmp_path / "a.plan", timing_cache=cache)
    assert rec.calls["cache_in"] is None and "load_timing_cache" not in rec.calls["config"]
    assert cache.read_bytes() == b"CACHE-v1" and result.timing_cache == cache

    rec = fake_build(cache_out=b"CACHE-v2")
    build_engine(qdq_onnx, tmp_path / "b.plan", timing_cache=cache)
    assert rec.calls["cache_in"] == b"CACHE-v1"  # read back in
    assert cache.read_bytes() == b"CACHE-v2"  # and written after the build
    assert _files(cache.parent) == ["timing.cache"]  # no lock or temporary files left
    assert rec.calls["save_timing_cache"] is None  # saved by us, atomically, not by Polygraphy


def test_failed_build_leaves_no_engine(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    out = tmp_path / "rpn_head.int8.plan"
    out.write_bytes(b"PREVIOUS-ENGINE")

    def fail():
        G_LOGGER.critical("Could not parse ONNX correctly")

    fake_build(fail=fail)
    with pytest.raises(UserError) as err:
        build_engine(qdq_onnx, out, timing_cache=cache)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("TensorRT could not build rpn_head.int8.plan from rpn_head.int8.onnx: ")
    assert "unsupported operator Foo" in message and "rpn_head.int8.build.log" in message
    assert out.read_bytes() == b"PREVIOUS-ENGINE"  # the old engine is untouched
    assert cache.read_bytes() == b"OLD"
    assert not (tmp_path / "rpn_head.int8.layers.json").exists()
    assert "FAILED" in (tmp_path / "rpn_head.int8.build.log").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failure_after_the_build_writes_no_engine(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.12.0")
    fake_build(inspect_fail=RuntimeError("inspector exploded"))
    out = tmp_path / "rpn_head.int8.plan"
    with pytest.raises(RuntimeError, match="inspector exploded"):  # a bug, not a user error: traceback kept
        build_engine(qdq_onnx, out)
    assert _files(tmp_path) == ["rpn_head.int8.build.log", "rpn_head.int8.onnx"]


def test_fp16_io_checked_before_building(tmp_path, qdq_onnx, fp16_io_onnx, fake_trt, fake_build):
    fake_trt("10.8.0")
    rec = fake_build()
    with pytest.raises(UserError, match="--fp16-io needs FLOAT16"):
        build_engine(qdq_onnx, tmp_path / "x.plan", fp16_io=True)
    assert rec.calls == {}
    result = build_engine(fp16_io_onnx, tmp_path / "y.plan", fp16_io=True)
    assert result.settings.fp16_io and rec.calls["config"]["fp16"] is True


def test_bad_workspace(tmp_path, qdq_onnx):
    with pytest.raises(UserError, match="--workspace"):
        build_engine(qdq_onnx, tmp_path / "x.plan", workspace_mb=0)


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_without_tensorrt_exits_2_with_one_line(tmp_path, qdq_onnx, no_tensorrt, capsys):
    before = _files(tmp_path)
    rc = main(["engine", "--onnx", str(qdq_onnx), "--out", str(tmp_path / "rpn_head.int8.plan"),
               "--timing-cache", str(tmp_path / "timing.cache"), "--builder", "tensorrt"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == ("trt-centerpoint engine: error: TensorRT is not installed (pip install 'trt-centerpoint[trt]' "
                   "on a machine with an NVIDIA GPU): cannot build rpn_head.int8.plan\n")
    assert _files(tmp_path) == before  # nothing written


def test_cli_missing_onnx_and_wrong_io(tmp_path, qdq_onnx, capsys):
    assert main(["engine", "--onnx", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.plan")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.onnx: no such ONNX file" in err
    assert main(["engine", "--onnx", str(qdq_onnx), "--out", str(tmp_path / "x.plan"), "--fp16-io"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fp16-io needs FLOAT16" in err
    assert not (tmp_path / "x.plan").exists()


def test_cli_builds_with_fakes(tmp_path, qdq_onnx, fake_trt, fake_build, capsys):
    fake_trt("10.8.0")
    rec = fake_build()
    out = tmp_path / "rpn_head.int8.plan"
    rc = main(["engine", "--onnx", str(qdq_onnx), "--out", str(out), "--workspace", "256",
               "--timing-cache", str(tmp_path / "timing.cache")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "weakly typed, INT8+FP16" in printed and "4 layers: 2 INT8, 1 FP16, 1 FP32" in printed
    assert f"wrote {out}" in printed and "wrote " + str(tmp_path / "timing.cache") in printed
    assert rec.calls["config"]["memory_pool_limits"] == {"WORKSPACE": 256 << 20}
    assert out.exists() and (tmp_path / "timing.cache").exists()


def test_cli_without_any_builder_names_both(tmp_path, qdq_onnx, no_tensorrt, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert main(["engine", "--onnx", str(qdq_onnx), "--out", str(tmp_path / "e.plan")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorRT is not installed" in err
    assert "TensorRT-RTX is not installed (pip install 'trt-centerpoint[rtx]')" in err and "cannot build e.plan" in err
    assert not (tmp_path / "e.plan").exists()


def test_compute_capability_is_for_rtx_only(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.13.0")
    rec = fake_build()
    with pytest.raises(UserError, match="--compute-capability is for TensorRT-RTX builds"):
        build_engine(qdq_onnx, tmp_path / "x.plan", compute_capabilities=["8.6"])  # auto -> TensorRT here
    assert rec.calls == {}


def test_tensorrt_record_names_the_builder(tmp_path, qdq_onnx, fake_trt, fake_build):
    fake_trt("10.13.0")
    fake_build()
    record = build_engine(qdq_onnx, tmp_path / "rpn_head.int8.plan").record
    assert record["builder"] == "tensorrt" and record["builder_version"] == "10.13.0"
    assert record["strongly_typed"] is True and record["targets"] == ["the GPU model it was built on"]
    assert record["source"] == "engine inspector" and [t["name"] for t in record["io"]] == ["input", "hm", "reg"]
