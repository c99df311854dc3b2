"""`eval`: a subset of the frames (--frames), the precision a quantized checkpoint is scored at, the line saying
what was scored; `synth --frames` below 1 refused."""

import json

import pytest
import torch
from tiny_models import firing_model

from trt_centerpoint.cli import main
from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import read_labels, write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.calibrate import select_calibration_files
from trt_centerpoint.quant.ptq import ptq_model, save_quantized_model
from trt_centerpoint.stages.evaluate import checkpoint_kind, default_precision, describe_subject, run_eval


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """A random tiny model that fires (heatmap bias raised), its PTQ checkpoint, a QAT-stamped copy, 3 frames."""
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config("tiny")
    model = firing_model(cfg, 1.0)
    save_checkpoint(model, root / "float.pth")
    write_dataset(root / "data", frames=3, seed=5, config=cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    qmodel, meta = ptq_model(cfg, root / "float.pth", select_calibration_files(root / "data", 2), method="max",
                             progress=False)
    save_quantized_model(qmodel, root / "ptq.pth", meta)
    saved = torch.load(root / "ptq.pth", map_location="cpu", weights_only=True)
    saved["meta"]["stage"] = "qat"  # what `qat` writes into the meta of its output
    torch.save(saved, root / "qat.pth")
    return root


def _eval(root, capsys, *extra, checkpoint="float.pth"):
    dump = root / "dets.json"
    rc = main(["eval", "-c", "tiny", "-p", str(root / checkpoint), "--data", str(root / "data"),
               "--dump-detections", str(dump), "--out", str(root / "metrics.json"), "--quiet", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, json.loads(dump.read_text()), json.loads((root / "metrics.json").read_text())


def test_eval_frames_scores_an_evenly_spread_subset(tiny_eval, capsys):
    stems = sorted(p.stem for p in (tiny_eval / "data" / "points").iterdir())
    out, dets, metrics = _eval(tiny_eval, capsys, "--frames", "2")
    assert sorted(dets) == [stems[0], stems[-1]]  # first and last of three
    labels = [read_labels(tiny_eval / "data" / "labels" / f"{s}.json") for s in (stems[0], stems[-1])]
    assert sum(metrics["num_gt"].values()) == sum(len(x["names"]) for x in labels)
    assert "2 frame(s)" in out
    _, dets, _ = _eval(tiny_eval, capsys)
    assert sorted(dets) == stems


@pytest.mark.parametrize("extra, expect", [
    (["--frames", "0"], "--frames must be >= 1, got 0"),
    (["--frames", "-3"], "--frames must be >= 1, got -3"),
    (["--frames", "2", "--metric", "nuscenes"], "the nuScenes devkit scores a whole split"),
])
def test_eval_bad_frame_counts_are_one_line(tiny_eval, capsys, extra, expect):
    rc = main(["eval", "-c", "tiny", "-p", str(tiny_eval / "float.pth"), "--data", str(tiny_eval / "data"),
               "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and expect in err and "\n" not in err


@pytest.mark.parametrize("frames", ["0", "-1"])
def test_synth_refuses_fewer_than_one_frame(tmp_path, capsys, frames):
    rc = main(["synth", "--out", str(tmp_path / "data"), "--frames", frames, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"--frames must be >= 1, got {frames}" in err and "\n" not in err
    assert not (tmp_path / "data").exists()


def test_a_quantized_checkpoint_is_scored_at_int8_unless_told(tiny_eval, capsys):
    out, default, metrics = _eval(tiny_eval, capsys, checkpoint="ptq.pth")
    assert metrics["model"]["precision"] == "int8" and metrics["model"]["checkpoint_kind"] == "ptq"
    assert "ptq checkpoint" in out and "INT8 (fake quant)" in out and "torch backend" in out
    _, int8, _ = _eval(tiny_eval, capsys, "--precision", "int8", checkpoint="ptq.pth")
    out, fp32, metrics = _eval(tiny_eval, capsys, "--precision", "fp32", checkpoint="ptq.pth")
    assert default == int8
    assert fp32 != int8  # the quantizers change the scores: the default did not run the float model
    assert metrics["model"]["precision"] == "fp32" and "FP32, its quantizers off" in out
    # a `qat` output: the same rule, named by its meta's stage (no second model run needed to see it)
    assert checkpoint_kind(tiny_eval / "qat.pth") == "qat" and default_precision("torch", "qat") == "int8"
    assert "qat checkpoint) at INT8 (fake quant)" in describe_subject("torch", "int8", "qat", "qat.pth")
    assert default_precision("onnx", "ptq") == "fp32"  # a build folder holds both precisions: --precision picks


def test_a_float_checkpoint_stays_fp32(tiny_eval, capsys):
    out, _, metrics = _eval(tiny_eval, capsys)
    assert metrics["model"]["precision"] == "fp32" and metrics["model"]["checkpoint_kind"] == "float"
    assert "float checkpoint" in out and "at FP32 on the torch backend" in out
    metrics = run_eval(load_config("tiny"), tiny_eval / "float.pth", tiny_eval / "data", progress=False,
                       max_frames=1)
    assert metrics["model"]["precision"] == "fp32" and metrics["num_frames"] == 1


def test_the_line_names_the_files_of_a_build_folder():
    line = describe_subject("trt", "int8", None, artifacts="build")
    assert "INT8 files of build" in line and "scn.int8.onnx" in line and ".plan" in line and "trt backend" in line
    assert "rpn_head.fp32.onnx" in describe_subject("onnx", "fp32", None, artifacts="build")
    assert "d.json" in describe_subject("torch", "fp32", None, detections="d.json")
