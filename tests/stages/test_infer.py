"""`infer`: every point a frame loses before the model is counted and said (NaN rows, out of range)."""

import numpy as np
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.stages.infer import run_inference


def test_points_outside_the_range_are_counted(tmp_path, capsys):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    save_checkpoint(CenterPoint(cfg), tmp_path / "tiny.pth")
    lo, hi = np.array(cfg.voxel.point_cloud_range[:3]), np.array(cfg.voxel.point_cloud_range[3:])
    rng = np.random.default_rng(0)
    inside = rng.uniform(lo + 0.1, hi - 0.1, size=(10, 3))
    outside = np.stack([hi + 5.0, lo - 5.0, [hi[0] + 1.0, 0.0, 0.0]])
    points = np.concatenate([np.concatenate([inside, outside]), np.zeros((13, 2))], axis=1).astype(np.float32)
    points = np.concatenate([points, np.full((2, 5), np.nan, np.float32)])  # and two NaN rows
    np.save(tmp_path / "frame.npy", points)
    results = run_inference("tiny", tmp_path / "tiny.pth", tmp_path / "frame.npy", progress=False)
    assert list(results) == ["frame"]
    out = capsys.readouterr().out
    assert f"{tmp_path / 'frame.npy'}: dropped 2 points with NaN / Inf" in out
    assert f"{tmp_path / 'frame.npy'}: dropped 3 of 13 points outside the config's point_cloud_range" in out
