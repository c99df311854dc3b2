"""An OpenPCDet checkpoint gives what OpenPCDet's own code gives: voxels, head outputs, boxes.

The golden data (tests/model/golden/openpcdet_voxel.npz) come from OpenPCDet's own model code on a real
nuScenes sweep and seeded random weights (scripts/make_byo_golden.py documents how, and what it stubbed). Here
the same weights are drawn again from the stored key list and seed, written as an OpenPCDet checkpoint
(`{"model_state": ...}`, legacy torch pickle, with OpenPCDet's key names) and loaded through the normal path.
The model is `openpcdet_voxel0075` at the script's reduced x / y range (every layer the same).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trt_centerpoint.config import BUNDLED_DIR, config_from_dict
from trt_centerpoint.model.centerpoint import load_model
from trt_centerpoint.model.decode import decode
from trt_centerpoint.model.random_init import seeded_state_dict
from trt_centerpoint.model.voxelizer import Voxelizer

GOLDEN = Path(__file__).parent / "golden" / "openpcdet_voxel.npz"
# OpenPCDet branch -> ours, and how our (det3d) coding follows from theirs (see model.sources)
BRANCHES = {"center": "reg", "center_z": "height", "dim": "dim", "rot": "rot", "vel": "vel", "hm": "hm"}


def _to_ours(name: str, value: np.ndarray) -> np.ndarray:
    if name == "dim":  # (dx, dy, dz) = (l, w, h) -> (w, l, h)
        return value[:, [1, 0, 2]]
    if name == "rot":  # (cos h, sin h) -> det3d's (sin r, cos r) with r = -h - pi/2
        return -value
    return value


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def cfg(golden):
    data = yaml.safe_load((BUNDLED_DIR / "openpcdet_voxel0075.yaml").read_text())
    data["name"] = "openpcdet_voxel0075_reduced"
    data["voxel"]["point_cloud_range"] = [float(v) for v in golden["point_cloud_range"]]
    return config_from_dict(data, "openpcdet_voxel0075 (reduced range)")


@pytest.fixture(scope="module")
def outputs(golden, cfg, tmp_path_factory):
    """Our model's head outputs and detections for the golden frame, loaded from an OpenPCDet checkpoint."""
    like = OrderedDict()
    for key, shape in zip(golden["keys"].tolist(), golden["shapes"].tolist()):
        integer = key == "global_step" or key.endswith("num_batches_tracked")
        like[key] = torch.zeros(eval(shape), dtype=torch.long if integer else torch.float32)  # noqa: S307
    path = tmp_path_factory.mktemp("openpcdet") / "checkpoint_epoch_20.pth"
    state = OrderedDict(seeded_state_dict(like, int(golden["seed"])))
    torch.save({"epoch": 20, "it": 0, "model_state": state, "optimizer_state": None, "version": "pcdet+0.6.0"},
               path, _use_new_zipfile_serialization=False)
    model = load_model(cfg, path)
    voxels = Voxelizer(cfg.voxel)(torch.from_numpy(golden["points"]))
    with torch.no_grad():
        preds = model(voxels.features, voxels.coords, 1)
    return voxels, preds, decode(preds, cfg)[0]


def test_voxels_match_openpcdet_mean_vfe(golden, outputs):
    voxels, _, _ = outputs
    np.testing.assert_array_equal(voxels.coords.numpy(), golden["voxel_coords"])
    # both average at most 10 float32 points: a few ulps of the largest feature (intensity <= 255)
    want = golden["voxel_features"]
    np.testing.assert_allclose(voxels.features.numpy(), want, rtol=0, atol=8 * np.finfo(np.float32).eps * 255)


def test_head_outputs_match_openpcdet(golden, outputs):
    _, preds, _ = outputs
    for t, pred in enumerate(preds):
        for theirs, ours in BRANCHES.items():
            want = _to_ours(theirs, golden[f"task{t}.{theirs}"])
            got = pred[ours].numpy()
            scale = float(np.abs(want).max())
            err = float(np.abs(got - want).max())
            assert err <= 1e-4 * scale, f"task {t} {theirs}: max error {err:g}, scale {scale:g}"


def test_boxes_match_openpcdet_decode_and_nms(golden, outputs, cfg):
    _, _, dets = outputs
    want = golden["pred_boxes"]  # [x, y, z, dx, dy, dz, heading, vx, vy]
    assert len(dets) == len(want) > 100
    np.testing.assert_array_equal(dets.labels.numpy(), golden["pred_labels"] - 1)  # OpenPCDet labels are 1-based
    np.testing.assert_allclose(dets.scores.numpy(), golden["pred_scores"], rtol=1e-5, atol=1e-6)
    got = dets.boxes.numpy()
    np.testing.assert_allclose(got[:, [0, 1, 2, 7, 8]], want[:, [0, 1, 2, 7, 8]], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, [3, 4, 5]], want[:, [4, 3, 5]], rtol=1e-4, atol=1e-5)  # w = dy, l = dx
    turn = (got[:, 6] + math.pi / 2 - want[:, 6] + math.pi) % (2 * math.pi) - math.pi  # heading = yaw + pi / 2
    assert np.abs(turn).max() < 1e-4
