"""`check` with NVIDIA's ONNX parser (TensorRT-RTX here: it parses without a GPU), beside the project's lint."""

import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.cli import main
from trt_centerpoint.runtime.trt.env import tensorrt_status
from trt_centerpoint.runtime.trt.parser import nvidia_parser, parse_onnx
from trt_centerpoint.stages.check import check_files, exit_status

rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trt-centerpoint[rtx]')")


def save(path, nodes, inits, opset=17, domains=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    return path


def weight():
    return numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4, 3, 3)).astype(np.float32), "w")


def qdq_conv(path, zero_point: int):
    """input -> Q/DQ (per tensor) -> Conv with a Q/DQ'd weight (per output channel): TensorRT's INT8 form."""
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(zero_point, np.int8), "z")
    ws = numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(4, np.int8), "wz")
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="q_in"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq_in"),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="q_w", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], name="dq_w", axis=0),
             helper.make_node("Conv", ["dq", "wdq"], ["out"], pads=[1, 1, 1, 1], name="conv0")]
    return save(path, nodes, [weight(), s, z, ws, wz])


def unknown_op(path):
    """A node of a custom domain: onnx.checker cannot know it and accepts the file; TensorRT has no importer."""
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("FancyNorm", ["c"], ["out"], name="fancy0", domain="com.example")]
    return save(path, nodes, [weight()], domains=("com.example",))


def test_the_parser_is_tensorrt_rtx_here():
    parser, reason = nvidia_parser()
    assert parser is not None, reason
    assert parser.name == "TensorRT-RTX" and parser.version == rtx.__version__


def test_a_clean_int8_file_parses(tmp_path):
    parser, _ = nvidia_parser()
    result = parse_onnx(qdq_conv(tmp_path / "ok.onnx", 0), parser)
    assert result.ok and result.layers > 0 and result.parser.startswith("TensorRT-RTX ")


def test_check_rejects_a_non_zero_zero_point_naming_the_node(tmp_path, capsys):
    path = qdq_conv(tmp_path / "zp.onnx", 3)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: TensorRT-RTX {rtx.__version__} parser: node 0 'q_in' (QuantizeLinear): " in out
    assert "Non-zero zero point is not supported" in out


def test_check_rejects_an_op_only_the_parser_rejects(tmp_path, capsys):
    path = unknown_op(tmp_path / "op.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # the ONNX checker has no objection
    checks = check_files([path])
    assert [c.kind for c in checks] == ["onnx"]
    assert len(checks[0].findings) == 1 and "node 1 'fancy0' (FancyNorm)" in checks[0].findings[0]
    assert "Plugin not found" in checks[0].findings[0]
    assert main(["check", str(path)]) == 1
    assert "fancy0" in capsys.readouterr().out


def test_every_file_is_checked_and_the_worst_status_wins(tmp_path, capsys):
    good = qdq_conv(tmp_path / "good.onnx", 0)
    bad = unknown_op(tmp_path / "bad.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert main(["check", str(junk), str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert "junk.onnx: not a readable ONNX model" in captured.err
    assert "fancy0" in captured.out and f"{good}: ok (onnx; TensorRT-RTX" in captured.out
    assert exit_status(check_files([good, bad])) == 1


def test_without_any_parser_the_lint_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("trt_centerpoint.stages.check.nvidia_parser", lambda: (None, "no TensorRT here"))
    (check,) = check_files([qdq_conv(tmp_path / "zp.onnx", 3)])
    assert check.parser == "NVIDIA parser unavailable: no TensorRT here"
    assert any("zero point" in line for line in check.findings)  # the project's own Q/DQ rule


def test_tensorrt_without_a_gpu_falls_back_to_rtx(monkeypatch):
    """TensorRT proper cannot create a builder without a GPU; the parser choice then takes TensorRT-RTX."""
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.13.0"

    class ILogger:
        def __init__(self):
            pass

    def no_gpu(logger):
        raise RuntimeError("CUDA initialization failure with error: 35")

    fake.ILogger, fake.Builder = ILogger, no_gpu
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    parser, reason = nvidia_parser()
    assert parser is not None and parser.name == "TensorRT-RTX"
    trt, why = tensorrt_status(check_gpu=True)  # the same check `--builder auto` makes
    assert trt is None and "TensorRT 10.13.0 is installed but cannot create a builder" in why
