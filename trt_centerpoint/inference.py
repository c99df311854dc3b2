"""Point clouds -> detections with the PyTorch model: what `trt-centerpoint infer` runs."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from trt_centerpoint.config import load_config
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.data.points import list_point_files, read_points
from trt_centerpoint.model.centerpoint import CenterPoint, load_model
from trt_centerpoint.report.table import format_table


def detect_files(model: CenterPoint, files: list[Path], progress: bool = True) -> dict[str, list[dict]]:
    """Run the model frame by frame; returns the detection JSON mapping."""
    results: dict[str, list[dict]] = {}
    num_features = model.cfg.voxel.num_point_features
    for path in tqdm(files, desc="infer", unit="frame", disable=not progress or len(files) < 2):
        cloud = read_points(path, num_features)
        if cloud.stats.num_nonfinite:
            tqdm.write(f"{path}: dropped {cloud.stats.num_nonfinite} points with NaN / Inf")
        results[cloud.stem] = model.detect([torch.from_numpy(cloud.points)])[0].to_json_list()
    return results


def run_inference(config: str, checkpoint: str, points: str, out: str | None = None,
                  progress: bool = True) -> dict[str, list[dict]]:
    cfg = load_config(config)
    model = load_model(cfg, checkpoint)
    results = detect_files(model, list_point_files(points), progress)
    if out:
        write_detections(out, results)
    return results


def detections_table(dets: list[dict], limit: int = 20) -> str:
    rows = [[d["name"], d["score"], *(round(v, 2) for v in d["box"])] for d in dets[:limit]]
    text = format_table(["class", "score", "x", "y", "z", "w", "l", "h", "yaw", "vx", "vy"], rows)
    if len(dets) > limit:
        text += f"\n... {len(dets) - limit} more"
    return text
