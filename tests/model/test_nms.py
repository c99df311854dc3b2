"""BEV corners, rotated IoU and NMS against independent plain-Python references and hand-checked values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from trt_centerpoint.model import nms as nms_module
from trt_centerpoint.model.nms import bev_corners, circle_nms, circle_nms_sq, rotate_nms, rotated_bev_iou

# ---------------------------------------------------------------------------------------------------------
# Plain-Python references (no torch): corners by trigonometry, Sutherland-Hodgman clipping, greedy loops.


def ref_corners(box):
    x, y, _, w, l, _, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for du, dv in ((w / 2, l / 2), (-w / 2, l / 2), (-w / 2, -l / 2), (w / 2, -l / 2)):
        out.append((x + c * du - s * dv, y + s * du + c * dv))
    return out  # counter-clockwise for w, l > 0


def ref_area(poly):
    total = 0.0
    for k in range(len(poly)):
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % len(poly)]
        total += x0 * y1 - x1 * y0
    return abs(total) / 2


def ref_clip(subject, clipper):
    """Sutherland-Hodgman: clip polygon `subject` by the half-planes left of each edge of the CCW `clipper`."""
    out = list(subject)
    for k in range(len(clipper)):
        ax, ay = clipper[k]
        bx, by = clipper[(k + 1) % len(clipper)]

        def side(p):
            return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)

        inp, out = out, []
        if not inp:
            break
        for m in range(len(inp)):
            cur, prev = inp[m], inp[m - 1]
            sc, sp = side(cur), side(prev)
            if sc >= 0:
                if sp < 0:
                    t = sp / (sp - sc)
                    out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
                out.append(cur)
            elif sp >= 0:
                t = sp / (sp - sc)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
    return out


def ref_iou(a, b):
    area_a, area_b = a[3] * a[4], b[3] * b[4]
    if area_a <= 0 or area_b <= 0:
        return 0.0
    poly = ref_clip(ref_corners(a), ref_corners(b))
    inter = ref_area(poly) if len(poly) >= 3 else 0.0
    return inter / (area_a + area_b - inter)


def ref_order(scores):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def ref_rotate_nms(boxes, scores, thr, pre_max=None, post_max=None):
    order = ref_order(scores)
    if pre_max is not None:
        order = order[:pre_max]
    keep = []
    for i in order:
        if post_max is not None and len(keep) >= post_max:
            break
        if all(ref_iou(boxes[k], boxes[i]) <= thr for k in keep):
            keep.append(i)
    return keep


def ref_circle_nms(centers, scores, radius, post_max=None):
    keep = []
    for i in ref_order(scores):
        if post_max is not None and len(keep) >= post_max:
            break
        if all((centers[k][0] - centers[i][0]) ** 2 + (centers[k][1] - centers[i][1]) ** 2 > radius**2 for k in keep):
            keep.append(i)
    return keep


def grid_iou(a, b, n=800):
    """Rasterised IoU on an n x n grid over the union's bounding square (a third, cruder method)."""
    pts = np.array(ref_corners(a) + ref_corners(b))
    lo, hi = pts.min(0), pts.max(0)
    side = (hi - lo).max()
    g = (np.arange(n) + 0.5) / n * side
    gx, gy = np.meshgrid(lo[0] + g, lo[1] + g)

    def inside(box):
        x, y, _, w, l, _, yaw = box[:7]
        dx, dy = gx - x, gy - y
        u = dx * math.cos(yaw) + dy * math.sin(yaw)
        v = -dx * math.sin(yaw) + dy * math.cos(yaw)
        return (np.abs(u) <= w / 2) & (np.abs(v) <= l / 2)

    ia, ib = inside(a), inside(b)
    return (ia & ib).sum() / max((ia | ib).sum(), 1)


def random_boxes(rng: random.Random, n, spread=4.0, offset=(0.0, 0.0)):
    out = []
    for _ in range(n):
        out.append(
            [
                offset[0] + rng.uniform(-spread, spread),
                offset[1] + rng.uniform(-spread, spread),
                rng.uniform(-1, 1),
                rng.uniform(0.3, 4.0),
                rng.uniform(0.3, 4.0),
                rng.uniform(0.5, 2.0),
                rng.uniform(-math.pi, math.pi),
            ]
        )
    return out


def box(x, y, w, l, yaw=0.0):
    return [x, y, 0.0, w, l, 1.0, yaw]


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Corners


def test_corners_convention_width_along_x_at_yaw_zero():
    c = bev_corners(t64([box(1.0, 2.0, 4.0, 2.0)]))[0]
    assert c.shape == (4, 2)
    assert torch.allclose(c[:, 0].min(), torch.tensor(-1.0, dtype=torch.float64))
    assert torch.allclose(c[:, 0].max(), torch.tensor(3.0, dtype=torch.float64))
    assert torch.allclose(c[:, 1].min(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(c[:, 1].max(), torch.tensor(3.0, dtype=torch.float64))
    # Counter-clockwise rotation: yaw = +90 degrees turns the w axis onto +y.
    c = bev_corners(t64([box(0.0, 0.0, 4.0, 2.0, math.pi / 2)]))[0]
    assert torch.allclose(c[0], t64([-1.0, 2.0]), atol=1e-12)  # (+w/2, +l/2) -> (-l/2, +w/2)
    assert torch.allclose(c[:, 1].abs().max(), torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(c[:, 0].abs().max(), torch.tensor(1.0, dtype=torch.float64))


def test_corners_match_reference():
    boxes = random_boxes(random.Random(1), 20)
    got = bev_corners(t64(boxes))
    want = t64([ref_corners(b) for b in boxes])
    assert torch.allclose(got, want, atol=1e-12)
    area = 0.5 * (got[:, :, 0] * got.roll(-1, 1)[:, :, 1] - got.roll(-1, 1)[:, :, 0] * got[:, :, 1]).sum(1)
    assert (area > 0).all()  # counter-clockwise


# ---------------------------------------------------------------------------------------------------------
# IoU: hand-checked values


@pytest.mark.parametrize(
    "a, b, want",
    [
        (box(0, 0, 1, 1), box(0.5, 0, 1, 1), 1 / 3),  # unit squares offset by half a side
        (box(0, 0, 1, 1), box(0, 0.5, 1, 1), 1 / 3),
        # a square and itself turned 45 degrees: a regular octagon of area 2*sqrt(2) - 2, IoU sqrt(2)/2
        (box(0, 0, 1, 1), box(0, 0, 1, 1, math.pi / 4), (2 * math.sqrt(2) - 2) / (2 - (2 * math.sqrt(2) - 2))),
        (box(0, 0, 4, 1), box(0, 0, 4, 1, math.pi / 2), 1 / 7),  # a cross: overlap 1, union 7
        (box(0, 0, 4, 1), box(0, 0, 1, 4), 1 / 7),  # w and l swapped = the same cross
        (box(0, 0, 4, 1), box(0, 0, 1, 4, math.pi / 2), 1.0),  # ... and rotated back: identical footprint
        (box(0, 0, 2, 2), box(0.2, -0.2, 1, 1, 0.7), 1 / 4),  # nested: small area / big area
        (box(3, -2, 2, 1, 0.3), box(3, -2, 2, 1, 0.3), 1.0),  # identical
        (box(3, -2, 2, 1, 0.3), box(3, -2, 2, 1, 0.3 + math.pi), 1.0),  # a half turn changes nothing
        (box(0, 0, 1, 1), box(1, 0, 1, 1), 0.0),  # touching along an edge
        (box(0, 0, 1, 1), box(1, 1, 1, 1), 0.0),  # touching at a corner
        (box(0, 0, 1, 1), box(5, 0, 1, 1), 0.0),  # disjoint
        (box(0, 0, 1, 1), box(0, 0, 0, 1), 0.0),  # zero area
        (box(0, 0, 0, 0), box(0, 0, 0, 0), 0.0),  # both zero area
    ],
)
def test_iou_hand_checked(a, b, want):
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        got = rotated_bev_iou(torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype))
        assert got.shape == (1, 1) and got.dtype == dtype
        assert not torch.isnan(got).any()
        assert abs(got.item() - want) < tol, (dtype, got.item(), want)
        assert abs(ref_iou(a, b) - want) < 1e-9  # the reference agrees with the hand value too


def test_iou_hand_checked_far_from_origin_float32():
    a, b = box(50.0, -48.0, 1, 1), box(50.5, -48.0, 1, 1, 0.0)
    got = rotated_bev_iou(torch.tensor([a]), torch.tensor([b])).item()
    assert abs(got - 1 / 3) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# IoU: random boxes against the clipping reference (and a few against rasterisation)


def test_iou_matches_clipping_reference_on_random_boxes():
    rng = random.Random(0)
    a = random_boxes(rng, 30)
    b = random_boxes(rng, 25)
    b += [a[3], a[7], list(a[5])]  # identical pairs
    b[-1][6] += math.pi  # same footprint, flipped heading
    b.append([a[0][0], a[0][1], 0.0, 0.2, 0.2, 1.0, 0.4])  # nested inside a[0] (min size 0.3)
    got = rotated_bev_iou(t64(a), t64(b))
    assert got.shape == (len(a), len(b))
    want = t64([[ref_iou(x, y) for y in b] for x in a])
    assert torch.allclose(got, want, atol=1e-9)
    assert (got > 0).sum() > 50 and (got == 0).sum() > 50  # both overlapping and disjoint pairs exercised
    assert torch.allclose(rotated_bev_iou(t64(b), t64(a)), got.T, atol=1e-12)  # symmetric
    diag = rotated_bev_iou(t64(a), t64(a)).diagonal()
    assert torch.allclose(diag, torch.ones_like(diag), atol=1e-9)


def test_iou_float32_far_from_origin_matches_reference():
    rng = random.Random(5)
    a = random_boxes(rng, 20, spread=3.0, offset=(48.0, -52.0))
    b = random_boxes(rng, 20, spread=3.0, offset=(48.0, -52.0))
    got = rotated_bev_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert got.dtype == torch.float32
    want = torch.tensor([[ref_iou(x, y) for y in b] for x in a], dtype=torch.float32)
    assert torch.allclose(got, want, atol=2e-5)


def test_iou_matches_rasterisation():
    rng = random.Random(3)
    pairs = []
    while len(pairs) < 4:
        a, b = random_boxes(rng, 2, spread=1.0)
        if ref_iou(a, b) > 0.05:
            pairs.append((a, b))
    for a, b in pairs:
        got = rotated_bev_iou(t64([a]), t64([b])).item()
        assert abs(got - grid_iou(a, b)) < 5e-3


def test_iou_empty_inputs_and_half_precision():
    a = t64([box(0, 0, 1, 1)])
    assert rotated_bev_iou(a, a[:0]).shape == (1, 0)
    assert rotated_bev_iou(a[:0], a).shape == (0, 1)
    h = torch.tensor([box(0, 0, 1, 1), box(0.5, 0, 1, 1)], dtype=torch.float16)
    got = rotated_bev_iou(h, h)
    assert got.dtype == torch.float32 and abs(got[0, 1].item() - 1 / 3) < 1e-6


def test_iou_accepts_nine_value_boxes():
    rng = random.Random(4)
    a = random_boxes(rng, 5, spread=1.0)
    nine = t64([row + [1.0, -2.0] for row in a])
    assert torch.allclose(rotated_bev_iou(nine, nine), rotated_bev_iou(t64(a), t64(a)))


# ---------------------------------------------------------------------------------------------------------
# Rotated NMS


@pytest.fixture(params=["all-pairs", "per-kept-box"])
def nms_path(request, monkeypatch):
    """rotate_nms's two ways to the same boxes: every overlapping pair's IoU at once, or per kept box."""
    if request.param == "per-kept-box":
        monkeypatch.setattr(nms_module, "_BATCH_CANDIDATES", 0)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr, pre_max, post_max", [(0.2, None, None), (0.1, 40, 10), (0.5, 25, None), (0.0, None, 7)])
def test_rotate_nms_matches_greedy_loop(seed, thr, pre_max, post_max, nms_path):
    rng = random.Random(seed)
    boxes = random_boxes(rng, 60, spread=5.0)
    scores = [rng.random() for _ in boxes]
    got = rotate_nms(t64(boxes), t64(scores), thr, pre_max, post_max)
    assert got.dtype == torch.long
    want = ref_rotate_nms(boxes, scores, thr, pre_max, post_max)
    assert got.tolist() == want
    assert 0 < len(want) < len(boxes) or post_max is not None
    kept_scores = t64(scores)[got]
    assert (kept_scores[:-1] >= kept_scores[1:]).all()


def test_rotate_nms_float32_agrees(nms_path):
    rng = random.Random(11)
    boxes = random_boxes(rng, 80, spread=5.0, offset=(30.0, 20.0))
    scores = [rng.random() for _ in boxes]
    got = rotate_nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), 0.2, 1000, 83)
    assert got.tolist() == ref_rotate_nms(boxes, scores, 0.2, 1000, 83)


def test_rotate_nms_threshold_is_strict_and_ties_are_stable(nms_path):
    # Two unit squares offset by 0.5 have IoU 1/3: suppressed above thresholds below 1/3 only.
    boxes = t64([box(0, 0, 1, 1), box(0.5, 0, 1, 1), box(10, 0, 1, 1)])
    scores = t64([0.5, 0.9, 0.7])
    assert rotate_nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert rotate_nms(boxes, scores, 0.34).tolist() == [1, 2, 0]
    # Identical boxes and scores: the first one in input order wins, every time.
    same = t64([box(1, 1, 2, 1, 0.2)] * 4)
    assert rotate_nms(same, t64([0.4, 0.6, 0.6, 0.6]), 0.5).tolist() == [1]
    # pre_max drops the worst before NMS; post_max caps the result.
    assert rotate_nms(boxes, scores, 0.3, pre_max=1).tolist() == [1]
    assert rotate_nms(boxes, scores, 0.9, post_max=2).tolist() == [1, 2]
    assert rotate_nms(boxes, scores, 0.9, post_max=0).tolist() == []


def test_rotate_nms_empty(nms_path):
    got = rotate_nms(torch.zeros(0, 7), torch.zeros(0), 0.2, 10, 10)
    assert got.dtype == torch.long and got.shape == (0,)


def test_rotate_nms_dense_clutter_takes_the_per_box_way_with_the_same_result(monkeypatch):
    rng = random.Random(5)
    boxes = random_boxes(rng, 120, spread=1.5)  # nearly every pair overlaps
    scores = [rng.random() for _ in boxes]
    want = ref_rotate_nms(boxes, scores, 0.3, None, None)
    assert rotate_nms(t64(boxes), t64(scores), 0.3).tolist() == want
    monkeypatch.setattr(nms_module, "_BATCH_PAIRS", 100)  # fewer than the overlapping pairs: the per-box loop
    calls = []
    monkeypatch.setattr(nms_module, "_greedy_pairs", lambda *a: calls.append(a))
    assert rotate_nms(t64(boxes), t64(scores), 0.3).tolist() == want and not calls


# ---------------------------------------------------------------------------------------------------------
# Circle NMS


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("radius, post_max", [(1.0, None), (2.5, 5), (0.3, None)])
def test_circle_nms_matches_loop(seed, radius, post_max):
    rng = random.Random(seed)
    centers = [[rng.uniform(-5, 5), rng.uniform(-5, 5)] for _ in range(70)]
    scores = [rng.random() for _ in centers]
    got = circle_nms(t64(centers), t64(scores), radius, post_max)
    assert got.dtype == torch.long
    assert got.tolist() == ref_circle_nms(centers, scores, radius, post_max)
    # Full boxes work too (only x, y are used), and the squared-threshold form is the same NMS.
    boxes = t64([c + [0.0, 1.0, 1.0, 1.0, 0.0] for c in centers])
    assert circle_nms(boxes, t64(scores), radius, post_max).tolist() == got.tolist()
    assert circle_nms_sq(t64(centers), t64(scores), radius**2, post_max).tolist() == got.tolist()


def test_circle_nms_boundary_is_inclusive_and_squared():
    centers = t64([[0.0, 0.0], [3.0, 4.0], [0.0, -6.0]])  # distances 5 and 6 from the first, far apart
    scores = t64([0.9, 0.8, 0.7])
    assert circle_nms(centers, scores, 5.0).tolist() == [0, 2]  # 25 <= 25: suppressed (det3d: <=)
    assert circle_nms(centers, scores, 4.999).tolist() == [0, 1, 2]
    # det3d's min_radius is compared with the squared distance: min_radius 25 means 5 m.
    assert circle_nms_sq(centers, scores, 25.0).tolist() == [0, 2]
    assert circle_nms(centers[:0], scores[:0], 1.0).shape == (0,)


# ---------------------------------------------------------------------------------------------------------
# Device agnostic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_on_cuda_matches_cpu():
    rng = random.Random(7)
    boxes = torch.tensor(random_boxes(rng, 100, spread=5.0), dtype=torch.float32)
    scores = torch.rand(100, generator=torch.Generator().manual_seed(0))
    cpu = rotate_nms(boxes, scores, 0.2, 80, 40)
    gpu = rotate_nms(boxes.cuda(), scores.cuda(), 0.2, 80, 40)
    assert gpu.device.type == "cuda" and gpu.cpu().tolist() == cpu.tolist()
    assert torch.allclose(rotated_bev_iou(boxes.cuda(), boxes.cuda()).cpu(), rotated_bev_iou(boxes, boxes), atol=1e-5)
    assert circle_nms(boxes.cuda(), scores.cuda(), 1.0).cpu().tolist() == circle_nms(boxes, scores, 1.0).tolist()


def test_many_ties_keep_input_order():
    # An unstable sort reorders these equal scores (checked with torch 2.13 on CPU).
    n = 500
    centers = torch.stack([torch.arange(n, dtype=torch.float64) * 10.0, torch.zeros(n, dtype=torch.float64)], dim=1)
    scores = torch.zeros(n, dtype=torch.float64)
    scores[::7] = 1.0
    want = list(range(0, n, 7))[:40]
    assert circle_nms(centers, scores, 1.0, post_max=40).tolist() == want
    boxes = torch.cat([centers, torch.zeros(n, 1), torch.ones(n, 3), torch.zeros(n, 1)], dim=1)
    assert rotate_nms(boxes, scores, 0.2, pre_max=40, post_max=None).tolist() == want
