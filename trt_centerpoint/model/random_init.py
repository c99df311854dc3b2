"""`trt-centerpoint init-checkpoint`: a randomly initialised checkpoint of any config, in its source's layout.

Why: to run the whole chain at a config's real size (nuScenes: 0.075 m voxels, 1440 x 1440 grid, six tasks) and
measure time, memory and file sizes where no trained weights are at hand. The weights follow PyTorch's default
init (det3d's heatmap bias `head.init_bias`), so detections are noise; accuracy figures of such a build mean
nothing, every other figure is real. The file is written in the file layout and key names of the config's
`source` project (det3d, OpenPCDet, MMDetection3D), so that project's own code loads it too.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import save_checkpoint

__all__ = ["save_random_checkpoint", "seeded_state_dict"]


def save_random_checkpoint(cfg: ModelConfig, path: str | Path, seed: int = 0) -> dict:
    """Write a random-init checkpoint of `cfg` to `path` (atomically); returns its meta."""
    torch.manual_seed(seed)
    model = CenterPoint(cfg)
    params = sum(p.numel() for p in model.parameters())
    meta = {"config": config_to_dict(cfg), "init": {"kind": "random", "seed": seed, "parameters": params,
                                                    "note": "untrained: for size, time and memory runs only"}}
    save_checkpoint(model, path, meta=meta)
    return meta


def seeded_state_dict(like: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random weights for golden comparisons, shaped like the state dict `like` (any project's key names):
    every tensor drawn from one seeded CPU generator in key order, so the same seed and keys give the same
    weights on every machine. Unlike PyTorch's default init it also draws BatchNorm statistics (otherwise
    eval-mode BN is the identity and would hide a mixed-up BN), with variance-preserving conv weights (uniform,
    +-sqrt(3 / fan_in)) so activations stay O(1) through the net, and the heatmap bias near det3d's -2.19."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float32)

    state = {}
    for key, value in like.items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = uniform(value.shape, 0.5, 1.5)
        elif value.dim() == 1:  # BN weight / bias, running mean, conv bias
            centre = 1.0 if key.endswith(".weight") else -2.19 if _is_heatmap_bias(key, like) else 0.0
            state[key] = uniform(value.shape, centre - 0.2, centre + 0.2)
        else:
            fan_in = value[0].numel()  # [out, ...] (sparse [out, kz, ky, kx, in]); ConvTranspose2d [in, out, k, k]
            bound = (3.0 / fan_in) ** 0.5
            state[key] = uniform(value.shape, -bound, bound)
    return state


def _is_heatmap_bias(key: str, state: dict) -> bool:
    """The bias of a heatmap branch's last conv (det3d `hm.3`, OpenPCDet `hm.1`, MMDetection3D `heatmap.1`): not
    a BatchNorm's (no running_mean beside it), not the branch's first conv (`.0` / `.0.0`)."""
    return (re.search(r"\.(hm|heatmap)\.\d+\.bias$", key) is not None and not key.endswith((".0.bias", ".0.0.bias"))
            and key[: -len("bias")] + "running_mean" not in state)
