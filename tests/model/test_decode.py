"""CenterPoint decode: known peaks decoded exactly, and random outputs against an independent loop decoder."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.model.decode import Detections, decode

LOW = -10.0  # background logit: sigmoid ~ 4.5e-5, far below every threshold


@pytest.fixture
def cfg():
    return load_config("tiny")  # tasks [car], [pedestrian, cyclist]; BEV 16 x 16 cells of 1.6 m from -12.8 m


def blank_preds(cfg, batch=1, vel=True):
    h, w = cfg.bev_shape
    preds = []
    for names in cfg.head.tasks:
        p = {
            "reg": torch.full((batch, 2, h, w), 0.5),
            "height": torch.zeros(batch, 1, h, w),
            "dim": torch.zeros(batch, 3, h, w),
            "rot": torch.cat([torch.zeros(batch, 1, h, w), -torch.ones(batch, 1, h, w)], dim=1),  # yaw 0
            "hm": torch.full((batch, len(names), h, w), LOW),
        }
        if vel:
            p["vel"] = torch.zeros(batch, 2, h, w)
        preds.append(p)
    return preds


def put(preds, task, cls, i, j, logit, reg=(0.5, 0.5), z=0.0, dims=(1.0, 1.0, 1.0), yaw=0.0, vel=(0.0, 0.0), b=0):
    p = preds[task]
    p["hm"][b, cls, i, j] = logit
    p["reg"][b, :, i, j] = torch.tensor(reg)
    p["height"][b, 0, i, j] = z
    p["dim"][b, :, i, j] = torch.log(torch.tensor(dims))
    p["rot"][b, :, i, j] = torch.tensor([math.sin(yaw), -math.cos(yaw)])  # det3d's (sin, cos) of -yaw - pi
    if "vel" in p:
        p["vel"][b, :, i, j] = torch.tensor(vel)


def cell_xy(cfg, i, j, reg=(0.5, 0.5)):
    stride, voxel, rng = cfg.head.out_size_factor, cfg.voxel.voxel_size, cfg.voxel.point_cloud_range
    return (j + reg[0]) * stride * voxel[0] + rng[0], (i + reg[1]) * stride * voxel[1] + rng[1]


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


# ---------------------------------------------------------------------------------------------------------
# Known peaks


def test_known_peaks_decode_exactly(cfg):
    assert cfg.bev_shape == [16, 16] and cfg.class_names == ["car", "pedestrian", "cyclist"]
    preds = blank_preds(cfg)
    put(preds, 0, 0, 3, 5, 2.0, reg=(0.25, 0.75), z=-0.8, dims=(1.9, 4.5, 1.6), yaw=0.6, vel=(3.0, -1.5))
    put(preds, 1, 1, 12, 2, 1.0, reg=(0.1, 0.9), z=0.4, dims=(0.6, 1.7, 1.2), yaw=-2.5, vel=(-0.5, 0.25))
    put(preds, 1, 0, 8, 8, 0.5, dims=(0.7, 0.7, 1.8), yaw=math.pi)
    preds[1]["hm"][0, 1, 8, 8] = 0.2  # a weaker second class at the same cell: the class is the argmax
    (det,) = decode(preds, cfg)
    assert isinstance(det, Detections) and len(det) == 3
    assert det.boxes.dtype == torch.float32 and det.scores.dtype == torch.float32 and det.labels.dtype == torch.long
    assert det.names == ["car", "cyclist", "pedestrian"]  # task order, then descending score within a task
    assert det.labels.tolist() == [0, 2, 1]

    x, y = cell_xy(cfg, 3, 5, (0.25, 0.75))
    assert (x, y) == pytest.approx(((5 + 0.25) * 1.6 - 12.8, (3 + 0.75) * 1.6 - 12.8))
    want = [
        [x, y, -0.8, 1.9, 4.5, 1.6, 0.6, 3.0, -1.5],
        [*cell_xy(cfg, 12, 2, (0.1, 0.9)), 0.4, 0.6, 1.7, 1.2, -2.5, -0.5, 0.25],
        [*cell_xy(cfg, 8, 8), 0.0, 0.7, 0.7, 1.8, math.pi, 0.0, 0.0],
    ]
    assert torch.allclose(det.boxes, torch.tensor(want), atol=1e-5)
    assert det.scores.tolist() == pytest.approx([sigmoid(2.0), sigmoid(1.0), sigmoid(0.5)], abs=1e-6)


def test_json_list_format_and_round_trip(cfg):
    preds = blank_preds(cfg)
    put(preds, 0, 0, 3, 5, 2.0, dims=(2.0, 4.0, 1.5), vel=(1.0, 2.0))
    put(preds, 1, 1, 10, 10, 1.0)
    (det,) = decode(preds, cfg)
    items = det.to_json_list()
    text = json.dumps({"frame_000": items})  # plain JSON types only
    items = json.loads(text)["frame_000"]
    assert [sorted(d) for d in items] == [["box", "name", "score"]] * 2
    assert [d["name"] for d in items] == ["car", "cyclist"]
    assert all(len(d["box"]) == 9 and all(isinstance(v, float) for v in d["box"]) for d in items)
    assert items[0]["box"][7:] == pytest.approx([1.0, 2.0]) and items[0]["score"] == pytest.approx(sigmoid(2.0))
    back = Detections.from_json_list(items, cfg.class_names)
    assert torch.equal(back.boxes, det.boxes) and torch.equal(back.scores, det.scores)
    assert torch.equal(back.labels, det.labels)
    with pytest.raises(ValueError, match="unknown class"):
        Detections.from_json_list([{"box": [0.0] * 9, "score": 0.5, "name": "bus"}], cfg.class_names)
    assert len(Detections.from_json_list([], cfg.class_names)) == 0


def test_score_threshold_is_strict(cfg):
    preds = blank_preds(cfg)
    put(preds, 0, 0, 2, 2, math.log(0.11 / 0.89))  # score 0.11: kept
    put(preds, 0, 0, 6, 6, math.log(0.09 / 0.91))  # score 0.09: dropped
    (det,) = decode(preds, cfg)
    assert len(det) == 1 and det.scores.item() == pytest.approx(0.11, abs=1e-6)
    cfg.post.score_threshold = det.scores.item()  # det3d keeps score > threshold
    assert len(decode(preds, cfg)[0]) == 0


def test_post_center_range_filters_x_y_and_z(cfg):
    assert cfg.post.post_center_range == [-15.0, -15.0, -10.0, 15.0, 15.0, 10.0]
    preds = blank_preds(cfg)
    put(preds, 0, 0, 2, 2, 3.0)  # inside
    put(preds, 0, 0, 2, 15, 3.0, reg=(2.0, 0.5))  # x = 17 * 1.6 - 12.8 = 14.4: inside
    put(preds, 0, 0, 6, 15, 3.0, reg=(3.0, 0.5))  # x = 16.0: outside
    put(preds, 0, 0, 10, 0, 3.0, reg=(0.5, -2.0))  # y stays inside, x = -12.0
    put(preds, 0, 0, 0, 8, 3.0, reg=(0.5, -1.6))  # y = -15.36: outside
    put(preds, 0, 0, 12, 12, 3.0, z=10.5)  # z outside
    put(preds, 0, 0, 14, 4, 3.0, z=-9.9)  # z inside
    (det,) = decode(preds, cfg)
    xs = sorted(round(v, 4) for v in det.boxes[:, 0].tolist())
    assert len(det) == 4
    assert xs == sorted(round(v, 4) for v in [cell_xy(cfg, 2, 2)[0], 14.4, -12.0, cell_xy(cfg, 14, 4)[0]])


def test_rotate_nms_removes_overlapping_neighbour_per_task(cfg):
    preds = blank_preds(cfg)
    put(preds, 0, 0, 5, 5, 3.0, dims=(3.0, 3.0, 1.5))
    put(preds, 0, 0, 5, 6, 2.0, dims=(3.0, 3.0, 1.5))  # 1.6 m away, IoU 1.4 / 4.6 > 0.2: suppressed
    put(preds, 0, 0, 5, 9, 1.0, dims=(3.0, 3.0, 1.5))  # 6.4 m away: kept
    put(preds, 1, 0, 5, 6, 2.5, dims=(3.0, 3.0, 1.5))  # another task at the suppressed cell: kept
    (det,) = decode(preds, cfg)
    assert det.names == ["car", "car", "pedestrian"]
    assert det.scores.tolist() == pytest.approx([sigmoid(3.0), sigmoid(1.0), sigmoid(2.5)], abs=1e-6)
    assert det.boxes[:, 0].tolist() == pytest.approx([cell_xy(cfg, 5, c)[0] for c in (5, 9, 6)], abs=1e-5)
    cfg.post.nms_iou_threshold = 0.4  # 1.4 / 4.6 = 0.30 no longer suppresses
    assert len(decode(preds, cfg)[0]) == 4


def test_circle_nms_uses_det3d_squared_radius(cfg):
    cfg.post.nms_type = "circle"
    assert cfg.post.circle_radius == [4.0, 0.85]
    preds = blank_preds(cfg)
    put(preds, 0, 0, 5, 5, 3.0)
    put(preds, 0, 0, 5, 6, 2.0)  # 1.6 m: 2.56 <= 4 -> suppressed
    put(preds, 0, 0, 5, 7, 1.0)  # 3.2 m from the kept one: 10.24 > 4 -> kept (det3d's min_radius is squared)
    put(preds, 1, 0, 9, 9, 2.0)
    put(preds, 1, 1, 9, 10, 1.0)  # 1.6 m: 2.56 > 0.85 -> kept
    (det,) = decode(preds, cfg)
    assert det.scores.tolist() == pytest.approx([sigmoid(v) for v in (3.0, 1.0, 2.0, 1.0)], abs=1e-6)
    assert det.names == ["car", "car", "pedestrian", "cyclist"]


def test_pre_and_post_max(cfg):
    preds = blank_preds(cfg)
    for n, logit in enumerate([4.0, 3.0, 2.0, 1.0]):
        put(preds, 0, 0, 2 + 3 * n, 2, logit)
    cfg.post.nms_post_max = 3
    assert decode(preds, cfg)[0].scores.tolist() == pytest.approx([sigmoid(v) for v in (4.0, 3.0, 2.0)], abs=1e-6)
    cfg.post.nms_pre_max = 2
    assert len(decode(preds, cfg)[0]) == 2


def test_batch_missing_vel_empty_frame_and_ties(cfg):
    preds = blank_preds(cfg, batch=3, vel=False)
    put(preds, 0, 0, 4, 4, 2.0, b=0)
    put(preds, 1, 1, 7, 3, 1.0, b=2)
    preds[1]["hm"][2, 0, 7, 3] = 1.0  # a tie between pedestrian and cyclist: the first class wins
    dets = decode(preds, cfg)
    assert len(dets) == 3
    assert dets[0].names == ["car"] and dets[2].names == ["pedestrian"]
    assert dets[0].boxes[0, 7:].tolist() == [0.0, 0.0]
    empty = dets[1]
    assert len(empty) == 0 and empty.names == [] and empty.to_json_list() == []
    assert empty.boxes.shape == (0, 9) and empty.scores.shape == (0,) and empty.labels.shape == (0,)
    assert empty.boxes.dtype == torch.float32 and empty.labels.dtype == torch.long


def test_half_precision_outputs(cfg):
    preds = blank_preds(cfg)
    put(preds, 0, 0, 3, 5, 2.0, dims=(1.9, 4.5, 1.6))
    (ref,) = decode(preds, cfg)
    (half,) = decode([{k: v.half() for k, v in p.items()} for p in preds], cfg)
    assert half.boxes.dtype == torch.float32 and torch.allclose(half.boxes, ref.boxes, atol=1e-2)


def test_bad_inputs_are_reported(cfg):
    preds = blank_preds(cfg)
    with pytest.raises(ValueError, match="2 tasks"):
        decode(preds[:1], cfg)
    preds[1]["hm"] = preds[1]["hm"][:, :1]
    with pytest.raises(ValueError, match="hm must be"):
        decode(preds, cfg)


# ---------------------------------------------------------------------------------------------------------
# Random outputs against an independent loop implementation


def _ref_corners(b):
    c, s = math.cos(b[6]), math.sin(b[6])
    half_w, half_l = b[3] / 2, b[4] / 2
    corners = ((half_w, half_l), (-half_w, half_l), (-half_w, -half_l), (half_w, -half_l))
    return [(b[0] + c * u - s * v, b[1] + s * u + c * v) for u, v in corners]


def _ref_iou(a, b):
    """Polygon clipping (Sutherland-Hodgman), written out in loops."""
    poly = _ref_corners(a)
    clip = _ref_corners(b)
    for k in range(4):
        (ax, ay), (bx, by) = clip[k], clip[(k + 1) % 4]
        side = [(bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) for p in poly]
        new = []
        for m in range(len(poly)):
            p, q, sp, sq = poly[m - 1], poly[m], side[m - 1], side[m]
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                new.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
            if sq >= 0:
                new.append(q)
        poly = new
        if not poly:
            break
    inter = 0.0
    for m in range(len(poly)):
        inter += poly[m - 1][0] * poly[m][1] - poly[m][0] * poly[m - 1][1]
    inter = abs(inter) / 2
    return inter / (a[3] * a[4] + b[3] * b[4] - inter)


def ref_decode(preds, cfg):
    """Cell-by-cell decode with Python floats, a sort with index tie-break and a greedy NMS loop."""
    post = cfg.post
    batch = preds[0]["hm"].shape[0]
    out, stats = [], []
    for b in range(batch):
        frame = []
        offset = 0
        for t, p in enumerate(preds):
            ncls, h, w = p["hm"].shape[1:]
            hm = p["hm"][b].double().tolist()
            reg, hei, dim, rot = (p[k][b].double().tolist() for k in ("reg", "height", "dim", "rot"))
            vel = p["vel"][b].double().tolist() if "vel" in p else None
            cands = []
            for i in range(h):
                for j in range(w):
                    probs = [sigmoid(hm[c][i][j]) for c in range(ncls)]
                    score = max(probs)
                    label = probs.index(score)
                    stride, origin = cfg.head.out_size_factor, cfg.voxel.point_cloud_range
                    x = (j + reg[0][i][j]) * stride * cfg.voxel.voxel_size[0] + origin[0]
                    y = (i + reg[1][i][j]) * stride * cfg.voxel.voxel_size[1] + origin[1]
                    z = hei[0][i][j]
                    lo, hi = post.post_center_range[:3], post.post_center_range[3:]
                    if score <= post.score_threshold or not all(lo[k] <= v <= hi[k] for k, v in enumerate((x, y, z))):
                        continue
                    yaw = math.atan2(rot[0][i][j], -rot[1][i][j])
                    box = [x, y, z, *(math.exp(dim[k][i][j]) for k in range(3)), yaw]
                    box += [vel[0][i][j], vel[1][i][j]] if vel else [0.0, 0.0]
                    cands.append((score, i * w + j, box, label + offset))
            cands.sort(key=lambda c: (-c[0], c[1]))
            cands = cands[: post.nms_pre_max]
            stats.append(len(cands))
            keep = []
            for c in cands:
                if len(keep) >= post.nms_post_max:
                    break
                if post.nms_type == "circle":
                    ok = all((k[2][0] - c[2][0]) ** 2 + (k[2][1] - c[2][1]) ** 2 > post.circle_radius[t] for k in keep)
                else:
                    ok = all(_ref_iou(k[2], c[2]) <= post.nms_iou_threshold for k in keep)
                if ok:
                    keep.append(c)
            frame += keep
            offset += ncls
        out.append(frame)
    return out, stats  # stats: candidates entering NMS, per frame and task


@pytest.mark.parametrize("nms_type", ["rotate", "circle"])
def test_decode_matches_loop_reference_on_random_outputs(cfg, nms_type):
    cfg.post.nms_type = nms_type
    cfg.post.nms_pre_max = 80  # binds for the two-class task (~100 candidates)
    cfg.post.nms_post_max = 45  # binds after NMS for the two-class task only
    gen = torch.Generator().manual_seed(1234)
    h, w = cfg.bev_shape
    preds = []
    for names in cfg.head.tasks:
        p = {
            "reg": torch.rand(2, 2, h, w, generator=gen),
            "height": torch.randn(2, 1, h, w, generator=gen) * 4,  # some z outside +-10
            "dim": torch.randn(2, 3, h, w, generator=gen) * 0.4 + 0.3,
            "rot": torch.randn(2, 2, h, w, generator=gen),
            "vel": torch.randn(2, 2, h, w, generator=gen),
            "hm": torch.randn(2, len(names), h, w, generator=gen) - 3.0,  # ~20 % of cells above 0.1
        }
        p["reg"][:, :, :, -1] += 2.0 * (torch.rand(2, 2, h, generator=gen) > 0.5)  # push some past the range
        preds.append(p)
    dets = decode(preds, cfg)
    want, entering = ref_decode(preds, cfg)
    assert 80 in entering and min(entering) > 25
    for det, frame in zip(dets, want):
        assert 25 < len(det) == len(frame) < sum(entering) / 2  # NMS and the caps removed some
        assert det.labels.tolist() == [c[3] for c in frame]
        assert det.scores.tolist() == pytest.approx([c[0] for c in frame], abs=1e-6)
        assert torch.allclose(det.boxes.double(), torch.tensor([c[2] for c in frame], dtype=torch.float64), atol=1e-4)
        assert det.names == [cfg.class_names[c[3]] for c in frame]
    assert len(dets[0]) != len(dets[1]) or not torch.equal(dets[0].scores, dets[1].scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_cpu(cfg):
    preds = blank_preds(cfg, batch=2)
    rng = random.Random(0)
    for _ in range(30):
        put(preds, rng.randrange(2), 0, rng.randrange(16), rng.randrange(16), rng.uniform(-1, 3), dims=(2.0, 2.0, 1.0),
            b=rng.randrange(2))
    cpu = decode(preds, cfg)
    gpu = decode([{k: v.cuda() for k, v in p.items()} for p in preds], cfg)
    for c, g in zip(cpu, gpu):
        assert g.boxes.device.type == "cuda"
        assert g.labels.cpu().tolist() == c.labels.tolist()
        assert torch.allclose(g.boxes.cpu(), c.boxes, atol=1e-5)


def test_equal_scores_keep_row_major_cell_order():
    cfg = load_config("tiny")  # 256 equal scores: an unstable sort reorders them (torch 2.13 CPU)
    cfg.post.nms_pre_max, cfg.post.nms_post_max = 100, 40
    h, w = cfg.bev_shape
    preds = blank_preds(cfg)
    preds[0]["hm"].fill_(1.0)
    preds[0]["dim"].fill_(math.log(0.1))  # tiny boxes: nothing overlaps
    (det,) = decode(preds, cfg)
    cells = [divmod(k, w) for k in range(40)]  # the first 40 cells in row-major order
    want = [cell_xy(cfg, i, j) for i, j in cells]
    assert det.boxes[:, :2].tolist() == [pytest.approx(list(xy), abs=1e-4) for xy in want]


@pytest.mark.parametrize("theta", [0.0, 0.3, math.pi / 2, 2.5, -2.0, math.pi - 1e-3])
def test_det3d_rot_maps_decode_to_the_devkit_box(cfg, theta):
    """A det3d checkpoint regresses (sin, cos) of det3d's label yaw, which det3d's nuScenes converter writes as
    `-heading - pi/2` (heading from the devkit's quaternion). Decoding must give the devkit box's footprint and
    heading: the reference is nuscenes-devkit's own `Box.corners()`."""
    pyquaternion = pytest.importorskip("pyquaternion")
    data_classes = pytest.importorskip("nuscenes.utils.data_classes")
    from trt_centerpoint.data.synth.dataset import boxes_to_corners

    preds = blank_preds(cfg)
    put(preds, 0, 0, 5, 7, 5.0, dims=(1.9, 4.6, 1.7))
    yaw_det3d = -theta - math.pi / 2
    preds[0]["rot"][0, :, 5, 7] = torch.tensor([math.sin(yaw_det3d), math.cos(yaw_det3d)])
    box = decode(preds, cfg)[0].boxes[0].double().numpy()

    ref = data_classes.Box(box[:3].tolist(), [1.9, 4.6, 1.7], pyquaternion.Quaternion(axis=[0, 0, 1], angle=theta))
    ref_bottom = ref.bottom_corners()[:2].T  # [4, 2]
    ours = boxes_to_corners(box[None])[0]
    dist = ((ours[:, None, :] - ref_bottom[None, :, :]) ** 2).sum(-1) ** 0.5
    assert dist.min(axis=1).max() < 1e-5  # the same four corners, in any order
    heading = box[6] + math.pi / 2
    assert abs(math.remainder(heading - theta, 2 * math.pi)) < 1e-5  # the direction of travel, not only the footprint
