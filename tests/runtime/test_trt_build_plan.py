"""The version rules of the engine build, the ONNX checks and the TensorRT probe: all without TensorRT."""

import subprocess
import sys
import types

import pytest
from trt_facts import NO_GPU_ERROR

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt import env as trt_env
from trt_centerpoint.runtime.trt.build import (
    BuildSettings,
    artifact_paths,
    build_plan,
    check_io_types,
    config_kwargs,
    inspect_onnx,
    strongly_typed_arg,
)
from trt_centerpoint.runtime.trt.env import parse_version, require_tensorrt, resolve_builder, tensorrt_available


@pytest.mark.parametrize("version", ["10.0.0.6", "10.3.0", "10.8.0.43", "10.11.0.33"])
def test_weakly_typed_before_10_12_with_int8_and_fp16_flags_for_qdq(version):
    s = build_plan(version, onnx_has_qdq=True, fp16_io=False)
    assert (s.strongly_typed, s.int8, s.fp16) == (False, True, True)
    assert s.precision_flags == ("INT8", "FP16") and "weakly typed" in s.describe()


@pytest.mark.parametrize("version", ["10.0.1", "10.8.0"])
def test_weakly_typed_fp32_and_fp16_io(version):
    assert build_plan(version, onnx_has_qdq=False, fp16_io=False).precision_flags == ()
    s = build_plan(version, onnx_has_qdq=False, fp16_io=True)
    assert (s.strongly_typed, s.int8, s.fp16, s.fp16_io) == (False, False, True, True)


@pytest.mark.parametrize("version", ["10.12.0.36", "10.13.0", "10.16.1.11", "10.99"])
@pytest.mark.parametrize("qdq", [True, False])
@pytest.mark.parametrize("fp16_io", [True, False])
def test_strongly_typed_from_10_12_without_precision_flags(version, qdq, fp16_io):
    s = build_plan(version, onnx_has_qdq=qdq, fp16_io=fp16_io)
    assert s.strongly_typed and not s.int8 and not s.fp16 and s.fp16_io == fp16_io
    assert "10.12" in s.reason


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1.2", "12.0"])
def test_tensorrt_11_is_strongly_typed_unconditionally(version):
    for qdq in (True, False):
        s = build_plan(version, onnx_has_qdq=qdq, fp16_io=True)
        assert s.strongly_typed and s.precision_flags == ()
        assert "11" in s.reason


@pytest.mark.parametrize("version", ["1.4.0.76", "1.7.1.116"])
def test_tensorrt_rtx_is_strongly_typed_without_flags(version):
    for qdq in (True, False):
        s = build_plan(version, onnx_has_qdq=qdq, fp16_io=False, builder="tensorrt-rtx")
        assert s.strongly_typed and s.precision_flags == () and s.builder == "tensorrt-rtx"
        assert s.describe() == f"TensorRT-RTX {version}, strongly typed, no precision flags"
        assert s.target_list == ["8.6", "8.9", "12.0"] and "default" in s.describe_targets()


def test_config_kwargs_for_rtx(fake_trt):
    trt = fake_trt("1.7.1")
    settings = BuildSettings(**{**build_plan("1.7.1", True, False, "tensorrt-rtx").__dict__, "targets": ("8.6",)})
    kw = config_kwargs(trt, settings, 1 << 20, b"CACHE")
    assert kw["compute_capabilities"] == [(8, 6)]
    assert "load_timing_cache" not in kw and "int8" not in kw and "fp16" not in kw


def test_resolve_builder(fake_trt, no_tensorrt, monkeypatch):
    rtx = types.ModuleType("tensorrt_rtx")
    rtx.__version__ = "1.7.1.116"
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    builder, reason = resolve_builder("auto")  # no TensorRT: TensorRT-RTX, saying why
    assert builder == "tensorrt-rtx" and reason.startswith("TensorRT-RTX 1.7.1.116; TensorRT: TensorRT is not")
    assert resolve_builder("tensorrt")[0] is None
    fake_trt("10.13.0")
    assert resolve_builder("auto") == ("tensorrt", "TensorRT 10.13.0")
    assert resolve_builder("tensorrt-rtx") == ("tensorrt-rtx", "TensorRT-RTX 1.7.1.116")
    fake_trt("10.13.0", builder_error=TypeError(NO_GPU_ERROR))  # TensorRT without a GPU: auto takes TensorRT-RTX
    assert resolve_builder("auto")[0] == "tensorrt-rtx"
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    builder, reason = resolve_builder("auto")
    assert builder is None and "cannot create a builder" in reason and "TensorRT-RTX is not installed" in reason
    with pytest.raises(UserError, match="--builder gpu: choose from auto, tensorrt, tensorrt-rtx"):
        resolve_builder("gpu")


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0"])
def test_older_than_10_is_refused(version):
    with pytest.raises(UserError, match=r"too old .* >= 10\.0"):
        build_plan(version, onnx_has_qdq=True, fp16_io=False)


def test_unreadable_version():
    with pytest.raises(UserError, match="not a TensorRT version"):
        build_plan("unknown", True, False)
    assert parse_version("10.12.0.36") == (10, 12) and parse_version("11.0") == (11, 0)


def test_build_plan_is_pure():
    assert build_plan("10.8.0", True, False) == build_plan("10.8.0", True, False)
    assert isinstance(build_plan("11.0.0", True, False), BuildSettings)


def test_strongly_typed_flag_only_while_tensorrt_defines_it(fake_trt):
    settings = build_plan("11.0.0", True, False)
    assert strongly_typed_arg(fake_trt("11.0.0"), settings) is True  # 11.0 / 11.4 still define it (ignored)
    later = build_plan("12.0.0", True, False)
    assert strongly_typed_arg(fake_trt("12.0.0", strongly_typed_flag=False), later) is False  # once it is gone
    assert strongly_typed_arg(fake_trt("10.8.0"), build_plan("10.8.0", True, False)) is False


def test_config_kwargs(fake_trt):
    trt = fake_trt("10.8.0")
    kw = config_kwargs(trt, build_plan("10.8.0", True, False), 512 << 20, b"CACHE")
    assert kw["profiling_verbosity"] == "DETAILED"
    assert kw["memory_pool_limits"] == {"WORKSPACE": 512 << 20}
    assert kw["int8"] is True and kw["fp16"] is True and kw["load_timing_cache"].read() == b"CACHE"
    kw = config_kwargs(trt, build_plan("10.12.0", True, False), 1 << 20, None)
    assert "int8" not in kw and "fp16" not in kw and "load_timing_cache" not in kw


def test_timing_cache_object_suits_polygraphy(fake_trt):
    """CreateConfig reads load_timing_cache with Polygraphy's own util (lock + load_file): check with the real one."""
    from polygraphy import util

    cache = config_kwargs(fake_trt("10.12.0"), build_plan("10.12.0", True, False), 1, b"CACHE")["load_timing_cache"]
    with util.LockFile(cache):
        assert util.load_file(cache, description="tactic timing cache") == b"CACHE"


def test_artifact_paths(tmp_path):
    paths = artifact_paths(tmp_path / "rpn_head.int8.plan")
    assert paths["log"].name == "rpn_head.int8.build.log" and paths["layers"].name == "rpn_head.int8.layers.json"


# --------------------------------------------------------------------------------------------- the ONNX side


def test_inspect_onnx(qdq_onnx, fp32_onnx, fp16_io_onnx):
    facts = inspect_onnx(qdq_onnx)
    assert facts.has_qdq and facts.inputs == (("input", "FLOAT"),)
    assert [n for n, _ in facts.outputs] == ["hm", "reg"]
    assert not inspect_onnx(fp32_onnx).has_qdq
    assert inspect_onnx(fp16_io_onnx).inputs == (("input", "FLOAT16"),)


def test_inspect_onnx_bad_files(tmp_path):
    with pytest.raises(UserError, match="no such ONNX file"):
        inspect_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 this is not protobuf \xff" * 10)
    with pytest.raises(UserError, match="bad.onnx"):
        inspect_onnx(bad)


def test_fp16_io_requires_fp16_onnx_io(qdq_onnx, fp16_io_onnx):
    with pytest.raises(UserError, match=r"--fp16-io needs FLOAT16 .* input 'input' is FLOAT"):
        check_io_types(inspect_onnx(qdq_onnx), fp16_io=True)
    assert check_io_types(inspect_onnx(fp16_io_onnx), fp16_io=True) == []
    notes = check_io_types(inspect_onnx(fp16_io_onnx), fp16_io=False)
    assert notes and "FP16 I/O" in notes[0]
    assert check_io_types(inspect_onnx(qdq_onnx), fp16_io=False) == []


# ------------------------------------------------------------------------------------------ is TensorRT here?


def test_tensorrt_absent(no_tensorrt):
    ok, reason = tensorrt_available()
    assert not ok
    assert reason == "TensorRT is not installed (pip install 'trt-centerpoint[trt]' on a machine with an NVIDIA GPU)"
    with pytest.raises(UserError) as err:
        require_tensorrt("build x.plan")
    assert str(err.value) == f"{reason}: cannot build x.plan" and "\n" not in str(err.value)
    assert trt_env.pycuda_available()[0] is False


def test_tensorrt_import_failure_is_one_line(monkeypatch):
    def broken(name):
        raise OSError("libnvinfer.so.10: cannot open shared object file\nmore detail")

    monkeypatch.setattr(trt_env, "import_optional", broken)
    ok, reason = tensorrt_available()
    assert not ok and reason == "TensorRT cannot be imported (libnvinfer.so.10: cannot open shared object file)"


def test_tensorrt_too_old_or_without_gpu(fake_trt):
    fake_trt("8.6.1")
    too_old = "TensorRT 8.6.1 is too old (trt-centerpoint needs TensorRT >= 10.0)"
    assert tensorrt_available(check_gpu=False) == (False, too_old)
    fake_trt("10.8.0", builder_error=TypeError(NO_GPU_ERROR))
    ok, reason = tensorrt_available(check_gpu=True)
    assert not ok and "cannot create a builder" in reason and "nullptr" in reason
    assert tensorrt_available(check_gpu=False) == (True, "TensorRT 10.8.0")
    fake_trt("10.13.0.35")
    assert tensorrt_available() == (True, "TensorRT 10.13.0.35")


def test_nothing_imports_tensorrt_at_module_level():
    code = ("import sys, trt_centerpoint.runtime.trt.build, trt_centerpoint.runtime.trt.runner, "
            "trt_centerpoint.runtime.trt.pycuda_runner, trt_centerpoint.runtime.trt.env; "
            "print(sorted(m for m in ('tensorrt', 'tensorrt_rtx', 'pycuda', 'pycuda.driver', 'polygraphy.backend.trt', "
            "'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
