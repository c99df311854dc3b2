"""Point clouds -> detections with any backend (`runtime.pipeline`): what `trt-centerpoint infer` runs."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from trt_centerpoint.config import load_config
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.data.source import DataSource, list_frames, read_frame
from trt_centerpoint.fileio import ensure_parent
from trt_centerpoint.model.voxelizer import VoxelStats
from trt_centerpoint.report.table import format_table
from trt_centerpoint.runtime.pipeline import make_pipeline

__all__ = ["detections_table", "run_inference"]


def run_inference(config: str, checkpoint: str | Path | None, points: DataSource, out: str | Path | None = None,
                  backend: str = "torch", precision: str = "fp32", artifacts: str | Path | None = None,
                  progress: bool = True, allow_overflow: bool = False) -> dict[str, list[dict]]:
    """Detect on every point file of `points` (a file or a folder, or the samples of a nuScenes selection), frame
    by frame; returns the detection JSON mapping {file stem or sample token: [detection]} and writes it to `out`
    when given. torch needs `checkpoint`, onnx / trt
    the build folder `artifacts` (`make_pipeline`)."""
    if out is not None:
        ensure_parent(out, "detections file")  # before any frame runs
    cfg = load_config(config)
    pipe = make_pipeline(cfg, backend, precision, checkpoint=checkpoint, artifacts=artifacts,
                         allow_overflow=allow_overflow)
    files = list_frames(points)
    results: dict[str, list[dict]] = {}
    with pipe:
        for path in tqdm(files, desc="infer", unit="frame", disable=not progress or len(files) < 2):
            cloud = read_frame(path, cfg.voxel.num_point_features)
            results[cloud.stem if isinstance(path, Path) else path.stem] = pipe.detect(cloud.points).to_json_list()
            if cloud.stats.note and len(results) == 1:  # once: every file of a folder is read the same way
                tqdm.write(cloud.stats.note)
            for line in dropped_points(path, cloud.stats.num_nonfinite, pipe.last_stats):
                tqdm.write(line)
    if out:
        write_detections(out, results)
    return results


def dropped_points(path, nonfinite: int, stats: VoxelStats) -> list[str]:
    """What a frame lost before the model saw it, one line each: NaN / Inf rows, points outside the config's
    point_cloud_range, and voxels beyond max_voxels (points per voxel beyond the cap are normal and not listed)."""
    lines = []
    if nonfinite:
        lines.append(f"{path}: dropped {nonfinite} points with NaN / Inf")
    if stats.points_out_of_range:
        lines.append(f"{path}: dropped {stats.points_out_of_range} of {stats.points_in} points outside the config's "
                     "point_cloud_range")
    if stats.voxels_dropped:
        lines.append(f"{path}: dropped {stats.voxels_dropped} voxels ({stats.points_in_dropped_voxels} points) beyond "
                     "voxel.max_voxels")
    return lines


def detections_table(dets: list[dict], limit: int = 20) -> str:
    rows = [[d["name"], d["score"], *(round(v, 2) for v in d["box"])] for d in dets[:limit]]
    text = format_table(["class", "score", "x", "y", "z", "w", "l", "h", "yaw", "vx", "vy"], rows)
    if len(dets) > limit:
        text += f"\n... {len(dets) - limit} more"
    return text
