"""The voxel geometry a checkpoint was trained with, where its `meta` records it, against the config's.

Why: the sparse backbone's weights do not depend on the voxel size or the point cloud range, so a checkpoint
trained with 0.1 m voxels loads without a single key or shape error into a 0.075 m config, and then detects
nothing useful (every voxel coordinate is read on the wrong grid). The training frameworks record their config
in the checkpoint: mmengine (MMDetection3D 1.x) writes the config's text as `meta["cfg"]`, mmcv-era trainers
(MMDetection3D 0.x, det3d) as `meta["config"]`; our own files keep the model config as a dict in
`meta["config"]`. Where one is there, its `voxel_size` and `point_cloud_range` must be the config's.
OpenPCDet writes no config into its checkpoints: nothing to check there.
"""

from __future__ import annotations

import re

from trt_centerpoint.config import ModelConfig

__all__ = ["geometry_mismatch", "trained_geometry"]

FIELDS = ("voxel_size", "point_cloud_range")
TOLERANCE = 1e-6  # metres: configs write these as decimal literals


def _from_text(text: str) -> dict[str, list[float]]:
    """The first literal `name = [a, b, ...]` (or `name=(...)`) of each field in a Python config's text."""
    found = {}
    for name in FIELDS:
        match = re.search(rf"\b{name}\s*=\s*[\[(]([^\])]*)[\])]", text)
        if match:
            try:
                found[name] = [float(v) for v in match.group(1).split(",") if v.strip()]
            except ValueError:  # an expression, not literals: nothing to compare
                continue
    return found


def trained_geometry(meta: dict) -> tuple[dict[str, list[float]], str] | None:
    """({field: values}, where they were read) from a checkpoint's `meta`; None where it records neither."""
    for key in ("cfg", "config"):
        value = meta.get(key)
        if isinstance(value, str):
            found = _from_text(value)
        elif isinstance(value, dict) and isinstance(value.get("voxel"), dict):  # ours: config_to_dict
            found = {name: [float(v) for v in value["voxel"][name]] for name in FIELDS if name in value["voxel"]}
        else:
            continue
        if found:
            return found, f"meta[{key!r}]"
    return None


def geometry_mismatch(meta: dict, cfg: ModelConfig) -> str | None:
    """What differs between a checkpoint's recorded voxel geometry and `cfg`'s, in words; None where nothing does
    (or nothing is recorded)."""
    recorded = trained_geometry(meta)
    if recorded is None:
        return None
    found, where = recorded
    for name, values in found.items():
        ours = [float(v) for v in getattr(cfg.voxel, name)]
        if len(values) != len(ours) or any(abs(a - b) > TOLERANCE for a, b in zip(values, ours)):
            return (f"trained with {name} {values} (its {where}), config {cfg.name} has {ours}: give a config with "
                    f"the checkpoint's voxel geometry (a YAML copy of the bundled one, voxel.{name} changed)")
    return None
