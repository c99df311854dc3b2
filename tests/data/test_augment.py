"""Global augmentations keep points and boxes consistent: what was inside a box stays inside it."""

import numpy as np
import pytest
import torch

from trt_centerpoint.data.augment import augment_frame, flip_x, flip_y, rotate_z, scale
from trt_centerpoint.model.nms import bev_corners


def _inside(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, K] bool: point inside a box footprint (via the corner polygon, independent of the transforms)."""
    corners = bev_corners(torch.from_numpy(boxes)).numpy()  # [K, 4, 2], counter-clockwise
    out = np.ones((len(points), len(boxes)), bool)
    for k in range(4):
        a, b = corners[:, k], corners[:, (k + 1) % 4]
        edge, rel = b - a, points[:, None, :2] - a[None]
        out &= (edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]) >= -1e-6
    return out


@pytest.fixture()
def frame():
    rng = np.random.default_rng(0)
    boxes = np.array([[5.0, 3.0, -1.0, 1.9, 4.5, 1.6, 0.7, 4.0, 1.0],
                      [-8.0, -6.0, -1.0, 0.7, 0.8, 1.7, -2.5, 0.3, -0.2]])
    pts = np.concatenate([rng.uniform(-12, 12, (3000, 5)), np.array([[5.0, 3.0, -1.0, 10.0, 0.05]])]).astype(np.float32)
    return pts, boxes


@pytest.mark.parametrize("op", [flip_x, flip_y, lambda p, b: rotate_z(p, b, 0.9), lambda p, b: scale(p, b, 1.04)])
def test_membership_is_preserved(frame, op):
    pts, boxes = frame
    before = _inside(pts.astype(np.float64), boxes)
    assert before.sum() > 10
    p2, b2 = op(pts, boxes)
    np.testing.assert_array_equal(_inside(p2.astype(np.float64), b2), before)
    np.testing.assert_array_equal(p2[:, 3:], pts[:, 3:])  # intensity and time lag untouched
    assert np.all((b2[:, 6] >= -np.pi) & (b2[:, 6] < np.pi))


def test_velocity_follows_the_motion(frame):
    pts, boxes = frame
    _, rot = rotate_z(pts, boxes, np.pi / 2)
    np.testing.assert_allclose(rot[:, 7:9], np.stack([-boxes[:, 8], boxes[:, 7]], 1), atol=1e-12)
    _, fx = flip_x(pts, boxes)
    np.testing.assert_allclose(fx[:, 7:9], boxes[:, 7:9] * [-1, 1])
    _, twice = flip_y(*flip_y(pts, boxes))
    np.testing.assert_allclose(twice, boxes, atol=1e-12)


def test_augment_frame_is_seeded(frame):
    pts, boxes = frame
    a = augment_frame(pts, boxes, np.random.default_rng(3))
    b = augment_frame(pts, boxes, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(_inside(a[0].astype(np.float64), a[1]), _inside(pts.astype(np.float64), boxes))
