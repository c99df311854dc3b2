"""The report's INT8 pictures: worst frames ordered by INT8-vs-FP32 disagreement, bird's-eye PNGs written and
referenced from report.md, box footprints and headings in the project's convention; the distance-band table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trt_centerpoint.artifacts import BEV_PNGS
from trt_centerpoint.config import load_config
from trt_centerpoint.data.frames import EvalFrames
from trt_centerpoint.eval.disagreement import frame_disagreement, worst_frames
from trt_centerpoint.model.decode import Detections
from trt_centerpoint.report.bev import footprint
from trt_centerpoint.report.markdown import render_markdown, write_report
from trt_centerpoint.stages.compare import draw_worst_frames

CLASSES = ["car", "truck", "pedestrian", "cyclist"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dets(rows) -> Detections:
    """rows: (x, y, score, label)."""
    if not rows:
        return Detections.empty(CLASSES)
    boxes = torch.tensor([[x, y, 0.0, 2.0, 4.5, 1.6, 0.3, 0.0, 0.0] for x, y, _, _ in rows])
    return Detections(boxes, torch.tensor([r[2] for r in rows]), torch.tensor([r[3] for r in rows]), list(CLASSES))


BASE = [(5.0, 3.0, 0.9, 0), (-10.0, 8.0, 0.8, 2), (20.0, -4.0, 0.6, 3)]
FP32 = [_dets(BASE)] * 5
INT8 = [
    _dets(BASE),                                          # 0: the same boxes: 0
    _dets([BASE[0], (-10.0, 9.0, 0.8, 2), BASE[2]]),      # 1: the pedestrian 1 m off: both unmatched: 2
    _dets(BASE + [(0.0, -20.0, 0.2, 0)]),                 # 2: an extra box below the score floor: 0
    _dets(BASE[:2]),                                      # 3: the cyclist lost: 1
    _dets([BASE[0], (-10.0, 8.0, 0.8, 3), BASE[2], (30.0, 30.0, 0.5, 1), (31.0, 30.0, 0.5, 1)]),
    # 4: the pedestrian called a cyclist (2) and two extra trucks (2): 4
]


def test_worst_frames_follow_the_disagreement_measure():
    assert [frame_disagreement(a, b) for a, b in zip(FP32, INT8)] == [0, 2, 0, 1, 4]
    assert worst_frames(FP32, INT8, 5) == [(4, 4), (1, 2), (3, 1), (0, 0), (2, 0)]  # ties: earlier first
    assert worst_frames(FP32, INT8, 2) == [(4, 4), (1, 2)]
    assert frame_disagreement(FP32[0], INT8[1], within_m=1.5) == 0  # 1 m off is a match within 1.5 m


def test_footprint_and_heading_follow_the_box_convention():
    # yaw 0: length along y, heading (yaw + pi/2) along +y; yaw pi/2: length along -x, heading -x
    corners, heading = footprint([1.0, 2.0, 0.0, 2.0, 4.0, 1.5, 0.0])
    assert np.allclose(sorted(map(tuple, corners)), [(0, 0), (0, 4), (2, 0), (2, 4)])
    assert np.allclose(heading, [[1, 2], [1, 4]])
    corners, heading = footprint([0.0, 0.0, 0.0, 2.0, 4.0, 1.5, math.pi / 2])
    assert np.allclose(heading[1], [-2, 0], atol=1e-12)
    assert np.allclose(np.abs(corners).max(axis=0), [2, 1])


def test_pictures_are_written_worst_first_and_referenced_from_the_report(tmp_path):
    cfg = load_config("synthetic_small")
    rng = np.random.default_rng(0)
    points = [np.concatenate([rng.uniform(-40, 40, (500, 2)), rng.uniform(-2, 2, (500, 3))], 1).astype(np.float32)
              for _ in FP32]
    stems = [f"frame{i}" for i in range(len(FP32))]
    truth = {s: {"boxes": [[5.0, 3.0, 0.0, 2.0, 4.5, 1.6, 0.3, 0.0, 0.0]], "names": ["car"]} for s in stems}
    (tmp_path / BEV_PNGS[2]).write_bytes(b"stale")  # an earlier run's third picture
    drawn = draw_worst_frames(cfg, tmp_path, EvalFrames(stems, points, truth), {"fp32": FP32, "int8": INT8}, 2)
    assert [d["stem"] for d in drawn] == ["frame4", "frame1"] and [d["png"] for d in drawn] == list(BEV_PNGS[:2])
    assert drawn[0] == {"png": BEV_PNGS[0], "stem": "frame4", "disagreement": 4, "gt_boxes": 1, "fp32_boxes": 3,
                        "int8_boxes": 5}
    for d in drawn:
        assert (tmp_path / d["png"]).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / BEV_PNGS[2]).exists()
    write_report(tmp_path, {"model": {"config": "synthetic_small"}, "bev": drawn})
    md = (tmp_path / "report.md").read_text()
    assert md.index(f"![frame4]({BEV_PNGS[0]})") < md.index(f"![frame1]({BEV_PNGS[1]})")
    assert "Worst INT8 frames" in md and "4 box(es) differ" in md


def _band(map_, car, ped, gt_car, gt_ped, ate=0.3):
    return {"range": [0, 20], "mAP": map_, "per_class": {"car": car, "pedestrian": ped},
            "num_gt": {"car": gt_car, "pedestrian": gt_ped}, "mean_tp_errors": {"mATE": ate, "mASE": 0.2}}


def test_the_report_shows_the_bands_side_by_side():
    acc = {"fp32": {"mAP": 0.6, "bands": {"0-20 m": _band(0.8, 0.9, 0.7, 10, 4), "20-40 m": _band(0.5, 0.5, None, 6, 0),
                                          "40+ m": _band(None, None, None, 0, 0)}},
           "int8": {"mAP": 0.58, "bands": {"0-20 m": _band(0.79, 0.88, 0.7, 10, 4, ate=0.33),
                                           "20-40 m": _band(0.4, 0.4, None, 6, 0), "40+ m": _band(None, None, None, 0,
                                                                                                  0)}}}
    md = render_markdown({"model": {}, "accuracy": acc})
    section = md[md.index("## Accuracy by distance"):]
    lines = section.splitlines()[4:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    rows = rows[: next(i for i, r in enumerate(rows) if r[0] == "**40+ m**") + 1]
    assert ["**20-40 m**", "mAP", "6", "0.5000", "0.4000", "-0.1000"] in rows
    assert ["", "AP car", "10", "0.9000", "0.8800", "-0.0200"] in rows
    assert ["", "AP pedestrian", "4", "0.7000", "0.7000", "+0.0000"] in rows
    assert sum(r[1] == "AP pedestrian" for r in rows) == 1  # no ground truth beyond 20 m: no row there
    assert ["**40+ m**", "mAP", "0", "-", "-", "-"] in rows
    assert ["", "mATE (lower is better)", "14", "0.300", "0.330", "+0.030 (+10.0%)"] in rows
    assert "Accuracy by distance" not in render_markdown({"model": {}, "accuracy": {"fp32": {"mAP": 0.6}}})


@pytest.mark.parametrize("recipe_meta", [{"backbone.conv_input*": "sparse input conv: reason"}, {}])
def test_the_report_lists_the_float_layers_and_why(recipe_meta):
    md = render_markdown({"model": {"quantization": {"recipe": "learn-ranges", "float_layers": recipe_meta}}})
    assert "layers left float (everything else runs INT8)" in md
    if recipe_meta:
        assert "- `backbone.conv_input*`: sparse input conv: reason" in md
    else:
        assert "runs INT8): none" in md


def test_learned_ranges_explain_the_low_whole_map_cosine():
    tensors = {"reg_0": {"cosine": 0.3, "snr_db": 0.4, "max_abs": 27.0, "median_abs": 0.01}}
    learned = render_markdown({"model": {"quantization": {"ranges_learned": True}}, "tensors": tensors})
    calibrated = render_markdown({"model": {"quantization": {"ranges_learned": False}}, "tensors": tensors})
    assert "low by design" in learned and "low by design" not in calibrated
