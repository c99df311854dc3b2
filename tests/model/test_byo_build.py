"""`build` runs every stage on an MMDetection3D checkpoint in its own file format; the full QAT recipe trains and
exports on OpenPCDet's and MMDetection3D's checkpoint files.

A reduced config of the same structure as mmdet3d_voxel0075 (the tiny grid and channel plan with MMDetection3D's
bias-free convs, top-500 decode and circle NMS), its checkpoint written by `init-checkpoint` in MMDetection3D's
layout and key names. MMDetection3D is the source whose modules differ from det3d's (no conv bias before a
BatchNorm, through fusing, quantization and both exports); an OpenPCDet model is det3d's module tree (its
build is the det3d build plus the top-500 decode, which tests/model/test_byo_golden.py checks), so one build
keeps the suite short.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from trt_centerpoint.cli import main
from trt_centerpoint.config import config_to_dict, load_config
from trt_centerpoint.stages.build import BuildOptions, run_build

SOURCES = {
    "openpcdet": {"post": {"max_candidates": 500}},
    "mmdetection3d": {"backbone": {"block_bias": False}, "head": {"conv_bias": False},
                      "post": {"max_candidates": 500, "nms_type": "circle"}},
}


def _config(tmp_path, source: str):
    data = config_to_dict(dataclasses.replace(load_config("tiny"), source=source))
    data["name"] = f"tiny_{source}"
    for section, values in SOURCES[source].items():
        data[section].update(values)
    path = tmp_path / f"tiny_{source}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("source", ["mmdetection3d"])
def test_build_runs_every_stage_on_the_projects_checkpoint(tmp_path, source):
    config = _config(tmp_path, source)
    ckpt = tmp_path / "ckpt.pth"
    assert main(["init-checkpoint", "--config", str(config), "--out", str(ckpt)]) == 0
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert ("model_state" if source == "openpcdet" else "state_dict") in raw
    out = tmp_path / "build"
    data = run_build(BuildOptions(config=str(config), checkpoint=ckpt, out=out, calib_frames=2, eval_frames=2,
                                  bench_iterations=1, bench_seconds=1.0, bench_warmup=0,
                                  progress=False), log=lambda _: None)
    failed = {name: s for name, s in data["stages"].items() if s["status"] not in ("ran", "unavailable")}
    assert not failed, failed
    for name in ("ptq.pth", "scn.int8.onnx", "rpn_head.int8.onnx", "compare.json", "detections.int8.json",
                 "report.md"):
        assert (out / name).is_file(), name
    compare = json.loads((out / "compare.json").read_text())
    assert compare  # the exported files were compared with the PyTorch model


@pytest.mark.slow
@pytest.mark.parametrize("source", ["openpcdet", "mmdetection3d"])
def test_qat_trains_and_exports_on_the_projects_checkpoint(tmp_path, source):
    """The full QAT recipe (weights and ranges, distilled from the project's own checkpoint file) on both layouts:
    the teacher loads through the project's key mapping, the weights move, and the result exports and validates."""
    config = _config(tmp_path, source)
    ckpt, data = tmp_path / "ckpt.pth", tmp_path / "data"
    assert main(["init-checkpoint", "--config", str(config), "--out", str(ckpt)]) == 0
    assert main(["synth", "--config", str(config), "--frames", "2", "--out", str(data), "--quiet"]) == 0
    ptq, qat = tmp_path / "ptq.pth", tmp_path / "qat.pth"
    assert main(["ptq", "--config", str(config), "--checkpoint", str(ckpt), "--calib-data", str(data),
                 "--recipe", "calibrate", "--out", str(ptq), "--quiet"]) == 0
    assert main(["qat", "--checkpoint", str(ptq), "--data", str(data), "--objective", "distill", "--teacher",
                 str(ckpt), "--epochs", "1", "--batch-size", "1", "--out", str(qat), "--quiet"]) == 0
    before = torch.load(ptq, map_location="cpu", weights_only=True)["state_dict"]
    after = torch.load(qat, map_location="cpu", weights_only=True)
    assert after["meta"]["qat"]["teacher"] == str(ckpt) and after["meta"]["qat"]["history"][0]["steps"] == 2
    moved = [k for k, v in after["state_dict"].items() if k.endswith("weight") and not torch.equal(v, before[k])]
    assert any(k.startswith("bbox_head.") for k in moved) and any(k.startswith("neck.") for k in moved)
    out = tmp_path / "files"
    assert main(["export", "--config", str(config), "--checkpoint", str(qat), "--calib-data", str(data),
                 "--out", str(out)]) == 0
    assert {"scn.int8.onnx", "rpn_head.int8.onnx", "manifest.json"} <= {p.name for p in out.iterdir()}
