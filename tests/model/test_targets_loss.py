"""Training targets and the CenterPoint loss against direct, loop-based formulations."""

import math

import numpy as np
import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.model.loss import centerpoint_loss, focal_loss, regression_loss
from trt_centerpoint.model.targets import build_targets, draw_gaussian, gaussian_radius


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")  # BEV 16 x 16, 1.6 m cells, range from -12.8


def test_draw_gaussian_matches_dense_formula():
    heat = np.zeros((9, 11), np.float32)
    heat[0, 0] = 0.9
    draw_gaussian(heat, cx=1, cy=2, radius=3)
    sigma = 7 / 6
    ys, xs = np.mgrid[0:9, 0:11]
    dense = np.exp(-((xs - 1) ** 2 + (ys - 2) ** 2) / (2 * sigma**2))
    dense[(np.abs(xs - 1) > 3) | (np.abs(ys - 2) > 3)] = 0
    expect = np.maximum(dense, np.where((xs == 0) & (ys == 0), 0.9, 0))
    np.testing.assert_allclose(heat, expect, rtol=1e-6, atol=1e-7)
    assert heat[2, 1] == 1.0


def test_gaussian_radius_grows_with_size_and_overlap():
    assert gaussian_radius(2, 2) < gaussian_radius(4, 4) < gaussian_radius(8, 8)
    assert gaussian_radius(4, 4, 0.7) < gaussian_radius(4, 4, 0.1)
    # case 2 of CornerNet's derivation (both corners inside): (h - 2r)(w - 2r) / (h w) = overlap for the
    # exact root; the det3d formula keeps CornerNet's denominator, so it is an upper bound of that root.
    h = w = 10.0
    exact = ((2 * (h + w)) - math.sqrt(4 * (h + w) ** 2 - 16 * 0.9 * h * w)) / 8
    assert math.isclose((h - 2 * exact) * (w - 2 * exact) / (h * w), 0.1, rel_tol=1e-9)


def test_build_targets_places_objects(cfg):
    boxes = np.array([
        [1.0, -2.0, -0.5, 1.9, 4.5, 1.6, 0.4, 3.0, -1.0],  # car
        [-10.0, 11.5, 0.2, 0.7, 0.7, 1.8, -2.0, 0.5, 0.0],  # pedestrian
        [5.0, 5.0, 0.0, 0.6, 1.8, 1.7, 1.0, 0.0, 0.0],  # cyclist
        [30.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0, 0.0, 0.0],  # car outside the grid: skipped
    ])
    names = ["car", "pedestrian", "cyclist", "car"]
    t_car, t_small = build_targets(cfg, [boxes], [names])
    assert t_car.heatmap.shape == (1, 1, 16, 16) and t_small.heatmap.shape == (1, 2, 16, 16)
    assert t_car.mask.sum() == 1 and t_small.mask.sum() == 2
    cx, cy = (1.0 + 12.8) / 1.6, (-2.0 + 12.8) / 1.6
    assert t_car.index[0, 0] == int(cy) * 16 + int(cx)
    assert t_car.heatmap[0, 0, int(cy), int(cx)] == 1.0
    expect = [cx - int(cx), cy - int(cy), -0.5, math.log(1.9), math.log(4.5), math.log(1.6), 3.0, -1.0,
              math.sin(0.4), -math.cos(0.4)]  # det3d rot of our yaw 0.4
    np.testing.assert_allclose(t_car.box[0, 0].numpy(), expect, rtol=1e-6, atol=1e-6)
    assert t_small.cls[0, :2].tolist() == [0, 1]  # pedestrian, cyclist within the task
    assert t_small.heatmap[0, 1].max() == 1.0 and t_small.heatmap[0, 0].max() == 1.0


def _naive_focal(logits, heat, index, cls, mask):
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    b, c, h, w = pred.shape
    neg = 0.0
    for bi in range(b):
        for ci in range(c):
            for y in range(h):
                for x in range(w):
                    p, g = float(pred[bi, ci, y, x]), float(heat[bi, ci, y, x])
                    neg += math.log(1 - p) * p * p * (1 - g) ** 4
    pos, num = 0.0, 0.0
    for bi in range(b):
        for m in range(index.shape[1]):
            if mask[bi, m]:
                i = int(index[bi, m])
                p = float(pred[bi, int(cls[bi, m]), i // w, i % w])
                pos += math.log(p) * (1 - p) ** 2
                num += 1
    return -(pos + neg) / num


def test_losses_match_naive_loops(cfg):
    g = torch.Generator().manual_seed(0)
    boxes = [np.array([[1.0, -2.0, -0.5, 1.9, 4.5, 1.6, 0.4, 3.0, -1.0], [-6, 6, 0, 2, 4, 1.5, 1, 0, 0]]),
             np.array([[3.0, 3.0, 0.0, 1.8, 4.2, 1.5, -1.0, 0.0, 2.0]])]
    targets = build_targets(cfg, boxes, [["car", "car"], ["car"]])
    t = targets[0]
    logits = torch.randn(2, 1, 16, 16, generator=g)
    naive = _naive_focal(logits, t.heatmap, t.index, t.cls, t.mask)
    # float32: a few unit roundoffs per term (sigmoid, log, powers) and a sum of the 2 x 256 heatmap terms plus the
    # object terms, all of one sign, in the CPU's order: off by at most (n + 8) u of the total (u = eps / 2); the
    # naive loop adds in float64. rel = (n + 8) eps is twice that.
    n = logits.numel() + int(t.mask.sum())
    assert float(focal_loss(logits, t)) == pytest.approx(naive, rel=(n + 8) * torch.finfo(torch.float32).eps)

    pred = {k: torch.randn(2, c, 16, 16, generator=g) for k, c in
            [("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)]}
    per_dim = regression_loss(pred, t)
    order = ["reg", "height", "dim", "vel", "rot"]
    expect = torch.zeros(10)
    n = 0
    for b in range(2):
        for m in range(int(t.mask[b].sum())):
            i = int(t.index[b, m])
            vec = torch.cat([pred[k][b, :, i // 16, i % 16] for k in order])
            expect += (vec - t.box[b, m]).abs()
            n += 1
    torch.testing.assert_close(per_dim, expect / (n + 1e-4), rtol=1e-5, atol=1e-6)


def test_perfect_regression_and_gradients(cfg):
    boxes = [np.array([[1.0, -2.0, -0.5, 1.9, 4.5, 1.6, 0.4, 3.0, -1.0]])]
    targets = build_targets(cfg, boxes, [["car"]])
    t = targets[0]
    i = int(t.index[0, 0])
    pred = {k: torch.zeros(1, c, 16, 16) for k, c in [("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)]}
    target = t.box[0, 0]
    order = [("reg", slice(0, 2)), ("height", slice(2, 3)), ("dim", slice(3, 6)), ("vel", slice(6, 8)),
             ("rot", slice(8, 10))]
    for k, sl in order:
        pred[k][0, :, i // 16, i % 16] = target[sl]
    assert float(regression_loss(pred, t).sum()) < 1e-6
    pred["hm"] = torch.zeros(1, 1, 16, 16, requires_grad=True)
    small = [{k: torch.zeros(1, c, 16, 16, requires_grad=True) for k, c in
              [("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2), ("hm", 2)]}]
    loss, parts = centerpoint_loss([pred, small[0]], targets)
    loss.backward()
    assert pred["hm"].grad.abs().sum() > 0 and parts["hm"] > 0
