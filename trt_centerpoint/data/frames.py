"""The frames a stage runs on: a labeled `synth`-layout folder (labels -> mAP), any folder of point files, or a
split of a nuScenes dataroot (`data.nuscenes.NuScenesSelection`; labeled unless it is the test split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.data.dataset import LabeledFrames, check_against_meta
from trt_centerpoint.data.nuscenes.selection import NuScenesSelection
from trt_centerpoint.data.points import list_point_files
from trt_centerpoint.data.sampling import evenly_spaced, evenly_spaced_indices
from trt_centerpoint.data.source import DataSource, frame_stem, has_labels, read_frame
from trt_centerpoint.errors import UserError

__all__ = ["EvalFrames", "load_frames"]


@dataclass
class EvalFrames:
    stems: list[str]
    points: list[np.ndarray]
    ground_truth: dict | None  # {stem: {"boxes", "names"}} when the folder has labels


def load_frames(data: DataSource, cfg: ModelConfig, limit: int | None = None) -> EvalFrames:
    """Up to `limit` frames (evenly spread) of `data`, with labels when `data/labels/` exists (or the nuScenes
    split is annotated)."""
    if not isinstance(data, NuScenesSelection):
        data = Path(data)
        if not data.is_dir():
            raise UserError(f"{data}: no such data folder")
    if has_labels(data):
        frames = LabeledFrames(data, cfg.voxel.num_point_features, cfg.class_names)
        picked = evenly_spaced_indices(len(frames), limit)
        items = [frames[i] for i in picked]
        truth = frames.ground_truth()
        stems = [item[0] for item in items]
        return EvalFrames(stems, [item[1] for item in items], {s: truth[s] for s in stems})
    if isinstance(data, NuScenesSelection):
        files = data.frames()
    else:
        files = list_point_files(data)
        check_against_meta(data, files)
    picked = evenly_spaced(files, limit)
    return EvalFrames([frame_stem(f) for f in picked],
                      [read_frame(f, cfg.voxel.num_point_features).points for f in picked], None)
