"""nuScenes data: a dataroot's split read with the nuScenes devkit, converted to a folder, or synthesized.

- `selection`: which samples (`NuScenesSelection`: dataroot, version, split, sweeps) and each one's frame
  (`NuScenesFrame`: points, labels, poses), read on the fly wherever a point folder is accepted;
- `reader`: one sample through the devkit's tables (multi-sweep points stacked as det3d does, or as the devkit
  does; boxes in the LiDAR frame, poses);
- `convert`: a selection written as a labeled folder (`trt-centerpoint convert nuscenes`);
- `synth`: a devkit-loadable dataroot made by the synthetic generator (`trt-centerpoint synth --format nuscenes`).

The devkit itself is an optional extra, imported on first use through `trt_centerpoint._compat.nuscenes`.
"""

from trt_centerpoint.data.nuscenes.selection import (
    DEFAULT_POINT_SOURCE,
    DEFAULT_SWEEPS,
    META_FORMAT,
    POINT_SOURCES,
    SPLITS,
    NuScenesFrame,
    NuScenesSelection,
    is_dataroot,
)

__all__ = ["DEFAULT_POINT_SOURCE", "DEFAULT_SWEEPS", "META_FORMAT", "NuScenesFrame", "NuScenesSelection",
           "POINT_SOURCES", "SPLITS", "is_dataroot"]
