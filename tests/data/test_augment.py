"""Global augmentations keep points and boxes consistent: what was inside a box stays inside it."""

import numpy as np
import pytest
import torch

from trt_centerpoint.data.augment import augment_frame, flip_x, flip_y, rotate_z, scale
from trt_centerpoint.data.synth.dataset import boxes_to_corners
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


# --- flips keep headings: det3d's formulas, and a car whose heading must stay along its velocity

def _det3d_flip(boxes: np.ndarray, axis: str) -> np.ndarray:
    """det3d's random_flip_both written out on its own yaw d (its labels store d = -heading - pi/2, here
    d = -yaw - pi): mirroring y (its flip along x) d -> pi - d, vy -> -vy; mirroring x (along y) d -> 2 pi - d,
    vx -> -vx; then back to this project's yaw."""
    out = boxes.copy()
    d = -boxes[:, 6] - np.pi
    if axis == "y":
        out[:, 1], out[:, 8], d = -boxes[:, 1], -boxes[:, 8], np.pi - d
    else:
        out[:, 0], out[:, 7], d = -boxes[:, 0], -boxes[:, 7], 2 * np.pi - d
    out[:, 6] = -d - np.pi
    return out


def _angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a - b))))


@pytest.mark.parametrize("axis, flip", [("y", flip_y), ("x", flip_x)])
def test_flips_are_det3ds(axis, flip):
    rng = np.random.default_rng(4)
    boxes = np.column_stack([rng.uniform(-10, 10, (50, 3)), rng.uniform(0.5, 5, (50, 3)),
                             rng.uniform(-np.pi, np.pi, 50), rng.uniform(-9, 9, (50, 2))])
    _, ours = flip(np.zeros((0, 5), np.float32), boxes)
    want = _det3d_flip(boxes, axis)
    # float64 arithmetic on values below 4 pi: a few ulps (1e-15 each), far below a flip's error (>= the box)
    assert _angle_gap(ours[:, 6], want[:, 6]).max() < 1e-12
    np.testing.assert_allclose(np.delete(ours, 6, axis=1), np.delete(want, 6, axis=1), rtol=0, atol=1e-12)


def _front(boxes: np.ndarray) -> np.ndarray:
    """Middle of each box's front edge, from its corners: the +l/2 side (corners 0 and 3) is the front."""
    corners = boxes_to_corners(boxes)
    return (corners[:, 0] + corners[:, 3]) / 2


@pytest.mark.parametrize("yaw", [-np.pi / 2, 0.0, 0.7, 2.6, -2.9])
def test_a_car_keeps_heading_along_its_velocity_after_every_flip(yaw):
    """A car drives where its front is (velocity = 8 m/s towards the front edge); its front point travels with
    the points. After any flip the box's front edge, from its corners, must be at that point and the velocity
    must still point at it: the heading read from the geometry, not from the formula under test."""
    box = np.array([[6.0, -3.0, -1.0, 1.9, 4.6, 1.6, yaw, 0.0, 0.0]])
    front = _front(box)[0]
    box[0, 7:9] = 8.0 * (front - box[0, :2]) / np.linalg.norm(front - box[0, :2])
    points = np.array([[front[0], front[1], -1.0, 50.0, 0.0]], np.float32)  # a point on the front bumper
    ops = {"flip_y": flip_y, "flip_x": flip_x, "both": lambda p, b: flip_x(*flip_y(p, b))}
    ops.update({f"augment seed {s}": (lambda p, b, s=s: augment_frame(p, b, np.random.default_rng(s)))
                for s in range(8)})
    for name, op in ops.items():
        pts, out = op(points, box)
        new_front = _front(out)[0]
        # the front point is float32 with |x| < 16: one rounding (<= 1e-6) per transform, four transforms
        np.testing.assert_allclose(new_front, pts[0, :2], rtol=0, atol=1e-5, err_msg=name)
        ahead = (new_front - out[0, :2]) / np.linalg.norm(new_front - out[0, :2])
        velocity = out[0, 7:9] / np.linalg.norm(out[0, 7:9])
        assert ahead @ velocity > 1 - 1e-9, f"{name}: velocity {velocity} but heading {ahead}"


def test_the_issue_case_a_car_heading_and_driving_plus_x():
    box = np.array([[5.0, 0.0, -1.0, 1.9, 4.6, 1.6, -np.pi / 2, 5.0, 0.0]])  # heading +x (yaw + pi/2 = 0)
    _, out = flip_x(np.zeros((0, 5), np.float32), box)
    np.testing.assert_allclose(_front(out)[0], [-5.0 - 2.3, 0.0], atol=1e-12)  # front now at -x: heading 180 deg
    np.testing.assert_allclose(out[0, 7:9], [-5.0, 0.0])  # and it drives that way
