"""Runners and pipelines: each backend against the PyTorch model, and detection matching against brute force."""

import itertools
import json

import numpy as np
import pytest
import torch
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER
from tiny_models import firing_model

from trt_centerpoint._compat.polygraphy import quiet_logger
from trt_centerpoint.config import load_config
from trt_centerpoint.data.points import iter_frames
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.compare import polygraphy_accuracy
from trt_centerpoint.eval.match import match_detections, merge_matches
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.validate import fp16_deployed_reference
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.model.decode import Detections
from trt_centerpoint.quant.ptq import run_ptq
from trt_centerpoint.runtime.base import BackboneRunner, HeadRunner
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline, split_tasks
from trt_centerpoint.stages.export import run_export


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="module")
def build(cfg, tmp_path_factory):
    """A float checkpoint, a PTQ checkpoint, two frames and the exported INT8 build folder."""
    work = tmp_path_factory.mktemp("runners")
    model = firing_model(cfg, 0.5)  # a head that fires: boxes to compare
    save_checkpoint(model, work / "fp32.pth")
    write_dataset(work / "data", frames=2, seed=5, config=cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    run_ptq(cfg, work / "fp32.pth", work / "data", work / "ptq.pth", method="mse", progress=False)
    run_export(cfg, work / "ptq.pth", work / "build", calib_data=work / "data", log=lambda _: None)
    frames = [points for _, points, _ in iter_frames(work / "data", cfg.voxel.num_point_features)]
    return {"work": work, "model": model, "frames": frames}


def test_torch_pipeline_equals_model_detect(cfg, build):
    pipe = make_pipeline(cfg, "torch", "fp32", checkpoint=build["work"] / "fp32.pth")
    for points in build["frames"]:
        got = pipe.detect(points)
        ref = build["model"].detect([torch.from_numpy(points)])[0]
        assert len(ref) > 0
        assert torch.equal(got.boxes, ref.boxes) and torch.equal(got.labels, ref.labels)


class _Deployed:
    """The PyTorch fake-quant backbone with the scn file's FP16 weights (validate.fp16_deployed_reference)."""

    def __init__(self, qmodel):
        self.module, self.name = fp16_deployed_reference(fuse_backbone(qmodel.backbone)), "deployed"

    def run(self, features, coords):
        with torch.no_grad():
            return self.module(features, coords, 1)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_pipeline_matches_torch_within_1cm(cfg, build, precision):
    torch_pipe = make_pipeline(cfg, "torch", precision, checkpoint=build["work"] / "ptq.pth")
    if precision == "int8":  # INT8 amplifies FP16 weight rounding: compare with the weights the file holds
        torch_pipe = Pipeline(cfg, _Deployed(torch_pipe.backbone.model), torch_pipe.head)
    onnx_pipe = make_pipeline(cfg, "onnx", precision, artifacts=build["work"] / "build")
    frames = [match_detections(torch_pipe.detect(p), onnx_pipe.detect(p)) for p in build["frames"]]
    merged = merge_matches(frames)
    assert merged["ref_boxes"] > 0
    assert merged["matched_fraction"] >= 0.99, merged
    assert merged["max_center_error_m"] <= 0.01


def test_heads_are_polygraphy_runners(cfg, build):
    """Both heads go into Comparator.run as they are; a pipeline reactivates its head after it."""
    torch_pipe = make_pipeline(cfg, "torch", "fp32", checkpoint=build["work"] / "ptq.pth")
    onnx_pipe = make_pipeline(cfg, "onnx", "fp32", artifacts=build["work"] / "build")
    for pipe in (torch_pipe, onnx_pipe):
        assert isinstance(pipe.backbone, BackboneRunner) and isinstance(pipe.head, HeadRunner)
    bev = onnx_pipe.bev(build["frames"][0])
    with quiet_logger(G_LOGGER.ERROR):
        results = Comparator.run([onnx_pipe.head, torch_pipe.head], data_loader=[{"input": bev.numpy()}])
    check = polygraphy_accuracy(results, atol=1e-3, rtol=1e-3)
    assert check["passed"] and set(check["outputs"]) == set(onnx_pipe.run_head(bev))
    assert check["runners"] == [onnx_pipe.head.name, torch_pipe.head.name]
    assert onnx_pipe.head.is_active  # run_head activated it again
    with onnx_pipe:
        onnx_pipe.detect(build["frames"][0])
    assert not onnx_pipe.head.is_active


def test_timer_sees_every_stage(cfg, build):
    seen = []

    class Timer:
        def stage(self, name):
            seen.append(name)
            return torch.no_grad()  # any context manager

    make_pipeline(cfg, "onnx", "int8", artifacts=build["work"] / "build").detect(build["frames"][0], timer=Timer())
    assert seen == ["voxelize", "backbone", "rpn_head", "decode"]


def test_empty_frame_gives_empty_detections(cfg, build):
    pipe = make_pipeline(cfg, "onnx", "fp32", artifacts=build["work"] / "build")
    far = np.full((10, cfg.voxel.num_point_features), 1000.0, dtype=np.float32)
    assert len(pipe.detect(far)) == 0


def test_bad_inputs_are_one_line_errors(cfg, build, tmp_path):
    with pytest.raises(UserError, match=r"scn\.int8\.onnx: missing; INT8 files come from a quantized checkpoint: "
                                        r"run `trt-centerpoint ptq`, then `export`"):
        make_pipeline(cfg, "onnx", "int8", artifacts=tmp_path)
    with pytest.raises(UserError, match=r"scn\.fp16\.onnx: missing; run `trt-centerpoint export` \(or `build`\)"):
        make_pipeline(cfg, "onnx", "fp32", artifacts=tmp_path)
    with pytest.raises(UserError, match=r"--artifacts BUILD_DIR"):
        make_pipeline(cfg, "onnx", "fp32")
    with pytest.raises(UserError, match=r"a float checkpoint; --precision int8 needs a quantized one"):
        make_pipeline(cfg, "torch", "int8", checkpoint=build["work"] / "fp32.pth")
    with pytest.raises(UserError, match="choose from"):
        make_pipeline(cfg, "tflite", "fp32", artifacts=tmp_path)
    with pytest.raises(UserError, match="not named <head>_<task>"):
        split_tasks({"heatmap": np.zeros(1)})
    (tmp_path / "scn.fp16.onnx").write_bytes((build["work"] / "build" / "scn.fp16.onnx").read_bytes())
    (tmp_path / "rpn_head.fp32.onnx").write_text("junk")
    with pytest.raises(UserError, match="ONNX Runtime cannot load it"):
        make_pipeline(cfg, "onnx", "fp32", artifacts=tmp_path)


def _dets(rows):
    boxes = torch.zeros(len(rows), 9)
    for i, (x, y, label, score) in enumerate(rows):
        boxes[i, :2] = torch.tensor([x, y])
    return Detections(boxes, torch.tensor([r[3] for r in rows], dtype=torch.float32),
                      torch.tensor([r[2] for r in rows], dtype=torch.long), ["a", "b"])


def _brute_force(ref, got, within):
    """Greedy by reference score, trying every unmatched candidate (the definition, spelled out)."""
    taken, matched = set(), 0
    for i in sorted(range(len(ref)), key=lambda k: -float(ref.scores[k])):
        best, best_d = None, None
        for j in range(len(got)):
            if j in taken or int(got.labels[j]) != int(ref.labels[i]):
                continue
            d = float(torch.linalg.norm(ref.boxes[i, :3].double() - got.boxes[j, :3].double()))
            if d <= within and (best_d is None or d < best_d):
                best, best_d = j, d
        if best is not None:
            taken.add(best)
            matched += 1
    return matched


def test_match_detections_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, m = rng.integers(0, 7, size=2)
        ref = _dets([(rng.uniform(0, 0.05), rng.uniform(0, 0.05), int(rng.integers(0, 2)), float(rng.uniform()))
                     for _ in range(n)])
        got = _dets([(rng.uniform(0, 0.05), rng.uniform(0, 0.05), int(rng.integers(0, 2)), float(rng.uniform()))
                     for _ in range(m)])
        result = match_detections(ref, got, within_m=0.02)
        assert result["matched"] == _brute_force(ref, got, 0.02), trial
    same = _dets([(1.0, 2.0, 0, 0.9), (5.0, 5.0, 1, 0.5)])
    assert merge_matches([match_detections(same, same)])["matched_fraction"] == 1.0
    moved = _dets([(1.0, 2.02, 0, 0.9), (5.0, 5.0, 0, 0.5)])  # 2 cm off; wrong class
    merged = merge_matches([match_detections(same, moved)])
    assert merged["matched"] == 0 and merged["matched_fraction"] == 0.0
    assert json.dumps(merged)
    assert list(itertools.islice(iter(merged), 1)) == ["frames"]
