"""Small models the tests share (importable from every test folder: `pythonpath` in pyproject.toml)."""

from __future__ import annotations

import torch

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.model.centerpoint import CenterPoint


def firing_model(cfg: ModelConfig, heat_bias: float, seed: int = 0) -> CenterPoint:
    """A random model (torch seed `seed`, eval mode) whose heatmap logits start at `heat_bias`, so that it still
    gives boxes to score and compare (a random head's logits sit near 0, below the score threshold)."""
    torch.manual_seed(seed)
    model = CenterPoint(cfg).eval()
    with torch.no_grad():
        for task in model.bbox_head.tasks:
            task.hm[-1].bias.fill_(heat_bias)
    return model
