"""`trt-centerpoint convert nuscenes`: a split of a nuScenes dataroot as a labeled folder every command reads.

    OUT/points/<sample token>.bin    float32 x 5 (x, y, z, intensity, time lag): the stacked sweeps
    OUT/labels/<sample token>.json   {"boxes": [[x, y, z, w, l, h, yaw, vx, vy], ...], "names": [...],
                                      "num_lidar_pts": [...]} in the key frame's LiDAR frame
    OUT/meta.json                    {"format", "dataroot", "version", "split", "sweeps", "stems": [tokens in
                                      order], "poses": {token: {"lidar2ego", "ego2global", "timestamp"}}}

The frames are read by the same code as a dataroot given to `--data` (`NuScenesFrame`), so both give the same
bytes. The test split has no annotations: its folder has no labels/ (a point folder). The folder is written
whole into a temporary sibling and renamed (`fileio.atomic_dir`); `force` replaces an existing one.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from trt_centerpoint.data.nuscenes.selection import POINT_FEATURES, NuScenesSelection
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_dir, check_output_dir

__all__ = ["convert_nuscenes"]


def convert_nuscenes(selection: NuScenesSelection, out: str | Path, force: bool = False,
                     progress: bool = True) -> dict:
    """Write `selection` to `out` (see the module docstring); returns the meta.json written."""
    root = check_output_dir(out, "output folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise UserError(f"{root}: exists and is not empty; give --force to replace it (a folder is written whole)")
    meta = selection.meta()  # loads the tables and lists the split before any file is written
    with atomic_dir(root, replace=force) as tmp:
        (tmp / "points").mkdir()
        if selection.labeled:
            (tmp / "labels").mkdir()
        for frame in tqdm(selection.frames(), desc="convert", unit="sample", disable=not progress):
            cloud = frame.read(POINT_FEATURES)
            (tmp / "points" / f"{frame.stem}.bin").write_bytes(cloud.points.astype("<f4", copy=False).tobytes())
            if selection.labeled:
                (tmp / "labels" / f"{frame.stem}.json").write_text(json.dumps(frame.labels()) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
