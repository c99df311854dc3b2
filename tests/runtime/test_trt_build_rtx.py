"""Real TensorRT-RTX builds on CPU: the tiny ONNX, the tiny and the sample model's head files, FP32 and INT8.

TensorRT-RTX's ahead-of-time builder needs no GPU, so these run in `make test` (skipped only where the `rtx`
extra is missing). Its engines are never run here: they need the TensorRT-RTX runtime on an RTX GPU.
"""

import json
import os
import subprocess
import sys

import pytest

from trt_centerpoint.artifacts import RPN_HEAD_INT8, engine_file
from trt_centerpoint.cli import main
from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.build import RTX_DEFAULT_TARGETS, build_engine

pytestmark = pytest.mark.tensorrt_rtx


def _check(result, onnx_name):
    assert result.engine.stat().st_size > 0 and result.engine.name.endswith(".rtx.plan")
    record = json.loads(result.layers.read_text())
    assert record["builder"] == "tensorrt-rtx" and record["builder_version"] == result.settings.trt_version
    assert record["onnx"] == onnx_name and record["engine_bytes"] == result.engine.stat().st_size
    assert record["strongly_typed"] is True and record["build_seconds"] > 0
    assert record["source"] == "network" and "RTX GPU" in record["note"]
    log = result.log.read_text()
    assert f"builder: TensorRT-RTX {result.settings.trt_version}" in log and "strongly typed" in log
    return record


@pytest.mark.parametrize("heads", ["tiny_heads", "sample_heads"])
def test_head_files_build_fp32_and_int8(heads, request, tmp_path):
    files = request.getfixturevalue(heads)
    records = {}
    for precision, onnx_path in files.items():
        out = tmp_path / engine_file(onnx_path.name, "tensorrt-rtx")
        records[precision] = _check(build_engine(onnx_path, out, builder="tensorrt-rtx", workspace_mb=256),
                                    onnx_path.name)
    assert records["int8"]["engine"] == "rpn_head.int8.rtx.plan"
    assert records["fp32"]["counts"]["INT8"] == 0 and records["fp32"]["counts"]["FP32"] > 0
    assert records["int8"]["counts"]["INT8"] > 0  # the Q/DQ convolutions
    assert records["int8"]["types"]["DEQUANTIZE"] > 0
    assert records["int8"]["targets"] == list(RTX_DEFAULT_TARGETS) and records["int8"]["targets_default"]


def test_tiny_onnx_int8_and_fp16_io(tmp_path, qdq_onnx, fp16_io_onnx):
    result = build_engine(qdq_onnx, tmp_path / "a.rtx.plan", builder="tensorrt-rtx",
                          timing_cache=tmp_path / "timing.cache")
    record = _check(result, qdq_onnx.name)
    assert record["counts"] == {"INT8": 3, "FP16": 0, "FP32": 0}
    assert [t["name"] for t in record["io"]] == ["input", "hm", "reg"]
    assert not (tmp_path / "timing.cache").exists()  # a no-op in TensorRT-RTX: not written
    assert "timing cache: not used" in result.log.read_text()
    result = build_engine(fp16_io_onnx, tmp_path / "b.rtx.plan", builder="tensorrt-rtx", fp16_io=True)
    assert json.loads(result.layers.read_text())["io"][0]["dtype"] == "FP16"


def test_compute_capabilities(tmp_path, qdq_onnx):
    result = build_engine(qdq_onnx, tmp_path / "cc.rtx.plan", builder="tensorrt-rtx",
                          compute_capabilities=["8.6", "12.0"])
    record = _check(result, qdq_onnx.name)
    assert record["targets"] == ["8.6", "12.0"] and not record["targets_default"]
    assert "Setting 2 target compute capabilities" in result.log.read_text()
    with pytest.raises(UserError, match=r"--compute-capability 9\.0: TensorRT-RTX .* targets .*8\.6"):
        build_engine(qdq_onnx, tmp_path / "x.rtx.plan", builder="tensorrt-rtx", compute_capabilities=["9.0"])
    with pytest.raises(UserError, match="expected MAJOR.MINOR"):
        build_engine(qdq_onnx, tmp_path / "x.rtx.plan", builder="tensorrt-rtx", compute_capabilities=["sm86"])
    assert not (tmp_path / "x.rtx.plan").exists()


def test_parser_failure_is_one_line_and_writes_no_engine(tmp_path, qdq_onnx):
    import onnx

    model = onnx.load(str(qdq_onnx))
    model.graph.node[0].op_type = "NoSuchOp"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError) as err:
        build_engine(bad, tmp_path / "bad.rtx.plan", builder="tensorrt-rtx")
    message = str(err.value)
    assert "\n" not in message and message.startswith("TensorRT-RTX could not build bad.rtx.plan from bad.onnx: ")
    assert "bad.rtx.build.log" in message and not (tmp_path / "bad.rtx.plan").exists()
    assert "FAILED" in (tmp_path / "bad.rtx.build.log").read_text()


def test_cli_auto_builds_with_rtx_without_tensorrt(tmp_path, qdq_onnx, no_tensorrt, capsys):
    out = tmp_path / engine_file(RPN_HEAD_INT8, "tensorrt-rtx")
    assert main(["engine", "--onnx", str(qdq_onnx), "--out", str(out), "--compute-capability", "8.9", "12.0"]) == 0
    printed = capsys.readouterr().out
    assert "TensorRT-RTX" in printed and "compute capability 8.9, 12.0" in printed and f"wrote {out}" in printed
    assert json.loads((tmp_path / "rpn_head.int8.rtx.layers.json").read_text())["targets"] == ["8.9", "12.0"]


def test_a_process_bound_to_rtx_builds_in_place_and_refuses_tensorrt(tmp_path, qdq_onnx):
    code = ("import sys; from trt_centerpoint.runtime.trt.build import build_engine; "
            f"r = build_engine({str(qdq_onnx)!r}, {str(tmp_path / 'p.rtx.plan')!r}, builder='tensorrt-rtx'); "
            "print(r.settings.builder, 'tensorrt' in sys.modules, 'tensorrt_rtx' in sys.modules); "
            f"build_engine({str(qdq_onnx)!r}, {str(tmp_path / 'p.plan')!r}, builder='tensorrt')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "POLYGRAPHY_USE_TENSORRT_RTX": "1"})
    assert done.stdout.split() == ["tensorrt-rtx", "False", "True"]
    assert "POLYGRAPHY_USE_TENSORRT_RTX is set" in done.stderr and not (tmp_path / "p.plan").exists()
