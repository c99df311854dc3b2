"""Global training augmentations (det3d's flip / rotate / scale) applied to a frame and its labels together.

Box convention [x, y, z, w, l, h, yaw, vx, vy] with footprint corners centre + R(yaw) (+-w/2, +-l/2): the
length, and the heading, point along yaw + pi/2 (`model.decode`). A mirror maps the heading h to -h (y -> -y) or
pi - h (x -> -x), so the yaw goes to -yaw - pi (y -> -y) or -yaw (x -> -x), with the mirrored velocity component
negated. (These are det3d's own flips, y: d -> pi - d, x: d -> 2 pi - d, for its yaw d = -yaw - pi; OpenPCDet's
-yaw / pi - yaw are for a yaw that IS the heading and would reverse every flipped box here.) A rotation by a
adds a; a scale s scales positions, sizes and velocities. Extra point features (intensity, time lag) are
untouched.
"""

from __future__ import annotations

import numpy as np


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles into [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def flip_y(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points, boxes = points.copy(), boxes.copy()
    points[:, 1] *= -1
    boxes[:, 1] *= -1
    boxes[:, 6] = wrap_angle(-boxes[:, 6] - np.pi)  # heading -h
    boxes[:, 8] *= -1
    return points, boxes


def flip_x(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points, boxes = points.copy(), boxes.copy()
    points[:, 0] *= -1
    boxes[:, 0] *= -1
    boxes[:, 6] = wrap_angle(-boxes[:, 6])  # heading pi - h
    boxes[:, 7] *= -1
    return points, boxes


def rotate_z(points: np.ndarray, boxes: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    points, boxes = points.copy(), boxes.copy()
    points[:, :2] = (points[:, :2].astype(np.float64) @ rot.T).astype(points.dtype)
    boxes[:, :2] = boxes[:, :2] @ rot.T
    boxes[:, 7:9] = boxes[:, 7:9] @ rot.T
    boxes[:, 6] = wrap_angle(boxes[:, 6] + angle)
    return points, boxes


def scale(points: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    points, boxes = points.copy(), boxes.copy()
    points[:, :3] *= factor
    boxes[:, :6] *= factor
    boxes[:, 7:9] *= factor
    return points, boxes


def augment_frame(points: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                  rotation: float = np.pi / 4, scale_range: tuple[float, float] = (0.95, 1.05)):
    """Random flips (x, y), rotation in [-rotation, rotation], scale in scale_range; boxes [K, 9] float64."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    if rng.random() < 0.5:
        points, boxes = flip_y(points, boxes)
    if rng.random() < 0.5:
        points, boxes = flip_x(points, boxes)
    points, boxes = rotate_z(points, boxes, float(rng.uniform(-rotation, rotation)))
    return scale(points, boxes, float(rng.uniform(*scale_range)))
