"""A bird's-eye view of one frame: the points, and boxes of several sources (ground truth, FP32, INT8) with
their heading marked, as a PNG (matplotlib's object-oriented API on the Agg canvas, like `report.plots`).

Boxes are `[x, y, z, w, l, h, yaw, ...]`: footprint corners `centre + R(yaw) (+-w/2, +-l/2)`, the heading (the
length's direction) `yaw + pi/2`; a line from the centre to the middle of the front edge marks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Polygon

from trt_centerpoint.report.plots import _figure, _save

MAX_POINTS = 40000  # drawn points per picture (every n-th point beyond that): the picture, not the file, is the point

__all__ = ["BoxLayer", "bev_chart", "footprint"]


@dataclass
class BoxLayer:
    """One source of boxes in the picture."""

    label: str
    boxes: np.ndarray  # [K, >= 7]
    color: str
    linestyle: str = "-"
    linewidth: float = 1.2


def footprint(box) -> tuple[np.ndarray, np.ndarray]:
    """(4 footprint corners [4, 2], heading segment [2, 2] from the centre to the middle of the front edge)."""
    x, y, w, length, yaw = float(box[0]), float(box[1]), float(box[3]), float(box[4]), float(box[6])
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    local = np.array([[-w / 2, -length / 2], [w / 2, -length / 2], [w / 2, length / 2], [-w / 2, length / 2]])
    corners = local @ rot.T + [x, y]
    front = rot @ [0.0, length / 2] + [x, y]
    return corners, np.array([[x, y], front])


def bev_chart(path: str | Path, points: np.ndarray, layers: list[BoxLayer], extent: tuple[float, float, float, float],
              title: str = "") -> Path:
    """Points (x, y; coloured by height) inside `extent` (x_min, x_max, y_min, y_max) and every layer's boxes."""
    fig = _figure(7.5, 7.5)
    ax = fig.add_subplot(1, 1, 1)
    pts = np.asarray(points, np.float32)  # [N, >= 3]
    inside = ((pts[:, 0] >= extent[0]) & (pts[:, 0] <= extent[1]) & (pts[:, 1] >= extent[2])
              & (pts[:, 1] <= extent[3]))
    pts = pts[inside]
    if len(pts) > MAX_POINTS:
        pts = pts[:: -(-len(pts) // MAX_POINTS)]
    ax.scatter(pts[:, 0], pts[:, 1], s=0.5, c=pts[:, 2], cmap="Greys", vmin=-4, vmax=3, linewidths=0, rasterized=True)
    for layer in layers:
        for i, box in enumerate(np.asarray(layer.boxes, np.float64)):
            corners, heading = footprint(box)
            ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=layer.color, linestyle=layer.linestyle,
                                 linewidth=layer.linewidth, label=layer.label if i == 0 else None))
            ax.plot(heading[:, 0], heading[:, 1], color=layer.color, linewidth=layer.linewidth)
    ax.plot([0], [0], marker="^", color="tab:orange", markersize=8, linestyle="none", label="sensor")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)
