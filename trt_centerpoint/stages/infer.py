"""Point clouds -> detections with any backend (`runtime.pipeline`): what `trt-centerpoint infer` runs."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from trt_centerpoint.config import load_config
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.data.points import list_point_files, read_points
from trt_centerpoint.report.table import format_table
from trt_centerpoint.runtime.pipeline import make_pipeline

__all__ = ["detections_table", "run_inference"]


def run_inference(config: str, checkpoint: str | Path | None, points: str | Path, out: str | Path | None = None,
                  backend: str = "torch", precision: str = "fp32", artifacts: str | Path | None = None,
                  progress: bool = True) -> dict[str, list[dict]]:
    """Detect on every point file of `points` (a file or a folder), frame by frame; returns the detection JSON
    mapping {file stem: [detection]} and writes it to `out` when given. torch needs `checkpoint`, onnx / trt
    the build folder `artifacts` (`make_pipeline`)."""
    cfg = load_config(config)
    pipe = make_pipeline(cfg, backend, precision, checkpoint=checkpoint, artifacts=artifacts)
    files = list_point_files(points)
    results: dict[str, list[dict]] = {}
    with pipe:
        for path in tqdm(files, desc="infer", unit="frame", disable=not progress or len(files) < 2):
            cloud = read_points(path, cfg.voxel.num_point_features)
            if cloud.stats.num_nonfinite:
                tqdm.write(f"{path}: dropped {cloud.stats.num_nonfinite} points with NaN / Inf")
            results[cloud.stem] = pipe.detect(cloud.points).to_json_list()
    if out:
        write_detections(out, results)
    return results


def detections_table(dets: list[dict], limit: int = 20) -> str:
    rows = [[d["name"], d["score"], *(round(v, 2) for v in d["box"])] for d in dets[:limit]]
    text = format_table(["class", "score", "x", "y", "z", "w", "l", "h", "yaw", "vx", "vy"], rows)
    if len(dets) > limit:
        text += f"\n... {len(dets) - limit} more"
    return text
