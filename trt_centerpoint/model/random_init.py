"""`trt-centerpoint init-checkpoint`: a randomly initialised checkpoint of any config, in its source's layout.

Why: to run the whole chain at a config's real size (nuScenes: 0.075 m voxels, 1440 x 1440 grid, six tasks) and
measure time, memory and file sizes where no trained weights are at hand. The weights follow PyTorch's default
init (det3d's heatmap bias `head.init_bias`), so detections are noise; accuracy figures of such a build mean
nothing, every other figure is real. The file is written in the file layout and key names of the config's
`source` project (det3d, OpenPCDet, MMDetection3D), so that project's own code loads it too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import save_source_checkpoint

__all__ = ["save_random_checkpoint"]


def save_random_checkpoint(cfg: ModelConfig, path: str | Path, seed: int = 0) -> dict:
    """Write a random-init checkpoint of `cfg` to `path` (atomically); returns its meta."""
    torch.manual_seed(seed)
    model = CenterPoint(cfg)
    params = sum(p.numel() for p in model.parameters())
    meta = {"config": config_to_dict(cfg), "init": {"kind": "random", "seed": seed, "parameters": params,
                                                    "note": "untrained: for size, time and memory runs only"}}
    save_source_checkpoint(model, path, meta=meta)
    return meta
