"""`trt-centerpoint export` and `check` end to end on the tiny model and two generated frames."""

import json

import onnx
import pytest
import torch
from onnx import helper

from trt_centerpoint.cli import main
from trt_centerpoint.manifest import file_sha256
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.ptq import run_ptq


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    rc = main(["export", "--config", "tiny", "--checkpoint", str(checkpoint), "--out", str(out),
               "--calib-data", str(data_dir)])
    assert rc == 0
    return out


def test_export_writes_validated_files_and_manifest(exported, checkpoint):
    assert sorted(p.name for p in exported.iterdir()) == ["manifest.json", "rpn_head.fp32.onnx", "scn.fp16.onnx"]
    manifest = json.loads((exported / "manifest.json").read_text())
    stage = manifest["stages"]["export"]
    assert stage["outputs"] == {name: file_sha256(exported / name) for name in ("scn.fp16.onnx", "rpn_head.fp32.onnx")}
    assert stage["inputs"]["checkpoint"] == file_sha256(checkpoint) and "calib_data" in stage["inputs"]
    assert manifest["versions"]["torch"] and manifest["versions"]["onnx"]
    extra = stage["extra"]
    assert extra["validation"]["scn.fp16.onnx"]["min_cosine"] >= 0.9999
    assert extra["validation"]["rpn_head.fp32.onnx"]["max_abs_error"] <= 1e-4
    assert extra["output_bounds"]["source"] == "calib_data" and len(extra["calib_data"]["frames"]) == 2
    layers = extra["output_bounds"]["layers"]
    assert {layer["source"] for layer in layers.values()} <= {"scaled", "safe"} and "scaled" in {
        layer["source"] for layer in layers.values()}
    assert layers["conv_input.0"]["bound"] == 20000  # subm on the input: the tiny config's max_voxels
    assert [p["pass"] for p in extra["passes"]["rpn_head.fp32.onnx"]] == [
        "fold_constants", "name_and_order_outputs", "cleanup_toposort", "infer_shapes"]
    # the bounds in the file are the ones recorded
    scn = onnx.load(str(exported / "scn.fp16.onnx"))
    conv3 = next(n for n in scn.graph.node if n.name == "conv3")
    bound = next(a.i for a in conv3.attribute if a.name == "output_bound")
    assert bound == extra["output_bounds"]["layers"]["conv2.0"]["bound"]


def test_export_prints_the_pass_log(checkpoint, tmp_path, capsys):
    assert main(["export", "--config", "tiny", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fuse_bn_relu: 13 BatchNorm folded into 13 sparse convs, 9 ReLU fused" in out
    assert "output_bound: safe bound (no --calib-data)" in out
    assert "rpn_head.fp32.onnx: fold_constants: " in out and "rpn_head.fp32.onnx: infer_shapes: " in out
    assert "scn.fp16.onnx: reference runner vs PyTorch backbone on 2 frame(s): cosine" in out
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_check_passes_exported_files(exported, capsys):
    files = [str(exported / "scn.fp16.onnx"), str(exported / "rpn_head.fp32.onnx")]
    assert main(["check", *files]) == 0
    scn, head = capsys.readouterr().out.splitlines()
    not_parsed = "NVIDIA parser not run: the libspconv dialect is read by libspconv, not TensorRT"
    assert scn == f"{files[0]}: ok (scn; {not_parsed})"
    # the 2D file also went through NVIDIA's parser (TensorRT-RTX on a CPU machine), named with its version
    assert head.startswith(f"{files[1]}: ok (onnx; TensorRT") and " parser: " in head and head.endswith(" layers)")


def test_check_fails_with_one_line_per_finding(exported, tmp_path, capsys):
    model = onnx.load(str(exported / "scn.fp16.onnx"))
    conv = next(n for n in model.graph.node if n.name == "conv4")
    conv.attribute.append(helper.make_attribute("weight_dynamic_ranges", [1.0, float("nan")]))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    assert main(["check", str(bad)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}: conv4: weight_dynamic_ranges has 2 values, out_channels is 8 (one per output channel)",
        f"{bad}: conv4: weight_dynamic_ranges[1] is nan (1 value(s) not finite and >= 0)",
    ]
    (tmp_path / "junk.onnx").write_text("not onnx")
    assert main(["check", str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


INT8_FILES = ["scn.int8.onnx", "scn.int8.qdq.onnx", "rpn_head.int8.onnx"]


@pytest.fixture(scope="module")
def exported_int8(checkpoint, data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("export_int8")
    run_ptq("tiny", checkpoint, data_dir, work / "ptq.pth", method="mse", progress=False)
    out = work / "build"
    assert main(["export", "--config", "tiny", "--checkpoint", str(work / "ptq.pth"), "--out", str(out),
                 "--calib-data", str(data_dir)]) == 0
    return out


def test_int8_export_writes_validated_files(exported_int8, capsys):
    names = sorted(p.name for p in exported_int8.iterdir())
    assert names == sorted(["manifest.json", "rpn_head.fp32.onnx", "scn.fp16.onnx", *INT8_FILES])
    stage = json.loads((exported_int8 / "manifest.json").read_text())["stages"]["export"]
    assert stage["params"]["precision"] == "int8" and stage["extra"]["quantized"] is True
    validation = stage["extra"]["validation"]
    assert validation["scn.int8.onnx"]["min_cosine"] >= 0.9999
    assert validation["scn.int8.qdq.onnx"]["identical_to"] == "scn.int8.onnx"
    assert validation["rpn_head.int8.onnx"]["max_median_abs_error"] <= 1e-4
    layers = stage["extra"]["artifacts"]["scn.int8.onnx"]["layers"]
    assert layers["conv_input.0"]["precision"] == "fp16" and layers["conv2.0"]["precision"] == "int8"
    files = [str(exported_int8 / n) for n in ("scn.fp16.onnx", "rpn_head.fp32.onnx", *INT8_FILES)]
    assert main(["check", *files]) == 0
    assert all(": ok (scn; " in line or ": ok (onnx; " in line for line in capsys.readouterr().out.splitlines())


def test_stray_ranges_without_ptq_meta_are_a_one_line_error(model, tmp_path, capsys):
    state = {k: v for k, v in model.state_dict().items()}
    state["backbone.conv2.0._input_quantizer._amax"] = torch.tensor(1.0)
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "q.pth")
    assert main(["export", "--config", "tiny", "--checkpoint", str(tmp_path / "q.pth"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "q.pth" in err and "_amax" in err
    assert not (tmp_path / "o").exists()


def test_fp16_option_writes_the_strongly_typed_head(exported_int8, data_dir, tmp_path, capsys):
    ptq = exported_int8.parent / "ptq.pth"
    out = tmp_path / "fp16"
    assert main(["export", "--config", "tiny", "--checkpoint", str(ptq), "--out", str(out), "--calib-data",
                 str(data_dir), "--fp16", "--fp16-io"]) == 0
    assert "rpn_head.int8.fp16.onnx: ONNX Runtime vs PyTorch fake-quant head" in capsys.readouterr().out
    model = onnx.load(str(out / "rpn_head.int8.fp16.onnx"))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    stage = json.loads((out / "manifest.json").read_text())["stages"]["export"]
    assert stage["params"]["fp16"] is True and "rpn_head.int8.fp16.onnx" in stage["outputs"]
    assert main(["check", str(out / "rpn_head.int8.fp16.onnx")]) == 0
    assert main(["export", "--config", "tiny", "--checkpoint", str(ptq), "--out", str(out), "--fp16-io"]) == 2
    assert "--fp16-io needs --fp16" in capsys.readouterr().err


def test_frames_over_an_output_bound_stop_compare_unless_allowed(checkpoint, exported_int8, data_dir, tmp_path,
                                                                  capsys):
    """`export --output-bound 50`: every sparse conv gets 50 voxels, far below these frames. compare (and any
    run of the files) must stop naming the layer, the bound and the count; --allow-overflow runs on and records
    the overflow, and the headroom per layer is in compare.json either way."""
    ptq = exported_int8.parent / "ptq.pth"
    out = tmp_path / "small_bounds"
    assert main(["export", "-c", "tiny", "-p", str(ptq), "--out", str(out), "--calib-data", str(data_dir),
                 "--output-bound", "50", "--quiet"]) == 0
    stage = json.loads((out / "manifest.json").read_text())["stages"]["export"]
    assert stage["params"]["output_bound"] == 50 and stage["extra"]["output_bounds"]["source"] == "override"
    capsys.readouterr()
    assert main(["compare", "-c", "tiny", "--artifacts", str(out), "--data", str(data_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "scn.fp16.onnx: sparse conv conv0 needs" in err and "over its output_bound 50" in err
    assert "--allow-overflow" in err and "\n" not in err
    assert main(["compare", "-c", "tiny", "--artifacts", str(out), "--data", str(data_dir), "--quiet",
                 "--allow-overflow"]) == 0
    figures = json.loads((out / "compare.json").read_text())
    assert figures["output_bound_overflows"]["conv0"]["output_bound"] == 50
    assert figures["output_bound_headroom"]["conv0"]["headroom"] < 1
    # the files exported with per-layer bounds have room on the same frames
    assert main(["compare", "-c", "tiny", "--artifacts", str(exported_int8), "--data", str(data_dir), "--quiet"]) == 0
    headroom = json.loads((exported_int8 / "compare.json").read_text())["output_bound_headroom"]
    assert headroom and min(row["headroom"] for row in headroom.values()) >= 1
    assert main(["export", "-c", "tiny", "-p", str(ptq), "--out", str(out), "--output-bound", "0"]) == 2
