"""nuScenes data: a dataroot's split read with the nuScenes devkit, converted to a folder, or synthesized.

- `selection`: which samples (`NuScenesSelection`: dataroot, version, split, sweeps) and each one's frame
  (`NuScenesFrame`: points, labels, poses), read on the fly wherever a point folder is accepted;
- `reader`: one sample through the devkit (multi-sweep points, boxes in the LiDAR frame, poses);
- `convert`: a selection written as a labeled folder (`trt-centerpoint convert nuscenes`);
- `synth`: a devkit-loadable dataroot made by the synthetic generator (`trt-centerpoint synth --format nuscenes`).

The devkit itself is an optional extra, imported on first use through `trt_centerpoint._compat.nuscenes`.
"""

from trt_centerpoint.data.nuscenes.selection import (
    DEFAULT_SWEEPS,
    META_FORMAT,
    SPLITS,
    NuScenesFrame,
    NuScenesSelection,
    is_dataroot,
)

__all__ = ["DEFAULT_SWEEPS", "META_FORMAT", "NuScenesFrame", "NuScenesSelection", "SPLITS", "is_dataroot"]
