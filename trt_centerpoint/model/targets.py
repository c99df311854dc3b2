"""CenterPoint training targets: Gaussian heatmaps per task and regression targets at object centres.

Follows det3d's `AssignLabel`: an object's centre cell gets a Gaussian peak (radius from CornerNet's
formula with min_overlap 0.1, at least `min_radius` cells), and its regression target
`[dx, dy, z, log w, log l, log h, vx, vy, sin yaw, -cos yaw]` (det3d's order: reg, height, dim, vel, rot)
at the flattened index of that cell. The rot pair is (sin, cos) of det3d's yaw `-yaw - pi` (see
`model.decode`), so a model trained here and a det3d checkpoint mean the same thing by their rot maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trt_centerpoint.config import ModelConfig

BOX_TARGET_SIZE = 10


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """Largest radius at which a box of (height, width) cells still overlaps its shifted copy by min_overlap.

    CornerNet's three cases (both corners inside, both outside, one of each); the smallest root wins.
    """
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """heatmap = max(heatmap, Gaussian of sigma (2r + 1) / 6 centred at (cx, cy)), clipped at the border."""
    sigma = (2 * radius + 1) / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch, out=region)


@dataclass
class TaskTargets:
    heatmap: torch.Tensor  # [B, C_task, H, W]
    index: torch.Tensor  # [B, M] long, flattened cell index y * W + x
    mask: torch.Tensor  # [B, M] float, 1 for real objects
    cls: torch.Tensor  # [B, M] long, class index within the task
    box: torch.Tensor  # [B, M, 10]


def build_targets(cfg: ModelConfig, boxes_per_frame: list[np.ndarray], names_per_frame: list[list[str]],
                  max_objects: int = 500, min_radius: int = 2) -> list[TaskTargets]:
    """Targets for a batch: boxes [K, 9] ([x, y, z, w, l, h, yaw, vx, vy]) and their class names per frame."""
    h_cells, w_cells = cfg.bev_shape
    stride = cfg.head.out_size_factor
    x0, y0 = cfg.voxel.point_cloud_range[0], cfg.voxel.point_cloud_range[1]
    vx_size, vy_size = cfg.voxel.voxel_size[0] * stride, cfg.voxel.voxel_size[1] * stride
    batch = len(boxes_per_frame)
    out = []
    for task_names in cfg.head.tasks:
        heat = np.zeros((batch, len(task_names), h_cells, w_cells), np.float32)
        index = np.zeros((batch, max_objects), np.int64)
        mask = np.zeros((batch, max_objects), np.float32)
        cls = np.zeros((batch, max_objects), np.int64)
        box = np.zeros((batch, max_objects, BOX_TARGET_SIZE), np.float32)
        for b, (boxes, names) in enumerate(zip(boxes_per_frame, names_per_frame)):
            k = 0
            for obj, name in zip(np.asarray(boxes, np.float64).reshape(-1, 9), names):
                if name not in task_names or k >= max_objects:
                    continue
                x, y, z, w, l, h, yaw, vx, vy = obj
                if w <= 0 or l <= 0 or h <= 0:
                    continue
                cx, cy = (x - x0) / vx_size, (y - y0) / vy_size
                ix, iy = int(math.floor(cx)), int(math.floor(cy))
                if not (0 <= ix < w_cells and 0 <= iy < h_cells):
                    continue
                radius = max(min_radius, int(gaussian_radius(l / vy_size, w / vx_size)))
                c = task_names.index(name)
                draw_gaussian(heat[b, c], ix, iy, radius)
                index[b, k] = iy * w_cells + ix
                mask[b, k] = 1.0
                cls[b, k] = c
                box[b, k] = [cx - ix, cy - iy, z, math.log(w), math.log(l), math.log(h), vx, vy,
                             math.sin(yaw), -math.cos(yaw)]  # det3d's rot: yaw_det3d = -yaw - pi
                k += 1
        out.append(TaskTargets(*(torch.from_numpy(a) for a in (heat, index, mask, cls, box))))
    return out
