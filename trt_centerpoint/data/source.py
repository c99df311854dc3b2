"""Where frames come from: a point file or folder (`data.points`), or a split of a nuScenes dataroot read on the
fly (`data.nuscenes.NuScenesSelection`). Stages list and read frames through here, so every data option takes
either; a folder behaves exactly as before (these are `list_point_files` / `read_points` for it)."""

from __future__ import annotations

from pathlib import Path

from trt_centerpoint.data.nuscenes.selection import NuScenesFrame, NuScenesSelection
from trt_centerpoint.data.points import PointCloud, frame_name, list_point_files, read_points
from trt_centerpoint.manifest import tree_sha256

__all__ = ["DataSource", "FrameRef", "frame_stem", "has_labels", "list_frames", "read_frame", "source_sha256"]

DataSource = str | Path | NuScenesSelection
FrameRef = Path | NuScenesFrame  # a point file, or a nuScenes sample: both have `stem` and `name`


def list_frames(source: DataSource) -> list[FrameRef]:
    """The frames of `source`: the point files of a file / folder (`list_point_files`), or a selection's samples."""
    if isinstance(source, NuScenesSelection):
        return source.frames()
    return list_point_files(source)


def frame_stem(ref: FrameRef) -> str:
    """The frame's name in detections and labels: a file's name without `.bin` / `.npy` (and `.pcd` of a raw
    nuScenes sweep, `points.frame_name`), or a sample's token."""
    return frame_name(ref) if isinstance(ref, Path) else ref.stem


def read_frame(ref: FrameRef, num_features: int) -> PointCloud:
    """One frame's points [N, num_features] float32 and read statistics."""
    if isinstance(ref, NuScenesFrame):
        return ref.read(num_features)
    return read_points(ref, num_features)


def has_labels(source: DataSource) -> bool:
    """A labeled folder (`labels/`) or an annotated nuScenes split."""
    if isinstance(source, NuScenesSelection):
        return source.labeled
    return (Path(source) / "labels").is_dir()


def source_sha256(source: DataSource) -> str:
    """The hash a build records for a data input: the folder's files, or the selection's `fingerprint`."""
    if isinstance(source, NuScenesSelection):
        return source.fingerprint
    return tree_sha256(source)
