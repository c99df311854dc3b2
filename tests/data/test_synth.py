"""Synthetic LiDAR benchmark: determinism, sensor geometry, occlusion, labels, motion, dataset IO."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth import scene as sc
from trt_centerpoint.data.synth.dataset import (
    CLASSES,
    SceneConfig,
    SensorConfig,
    boxes_to_corners,
    generate_frame,
    points_in_boxes,
    read_labels,
    scene_for_config,
    simulate_frame,
    write_dataset,
)
from trt_centerpoint.data.synth.raycast import BOX, CYLINDER, Ground, intersect_ground
from trt_centerpoint.errors import UserError

SENSOR = SensorConfig()
NOISE = 5 * SENSOR.range_noise  # generous bound on range noise


@pytest.fixture(scope="module")
def frames():
    return [simulate_frame(11, i) for i in range(3)]


def _latest(frame):
    return np.flatnonzero(frame.sweep == 0)


def _ground_material(frame):
    mats = np.concatenate([s.material for s in frame.sweeps])
    return np.isin(mats, [sc.ROAD, sc.SIDEWALK, sc.TERRAIN, sc.LANE_MARK]), mats


def test_same_seed_same_bytes_other_seed_differs():
    p1, l1 = generate_frame(5, 3)
    p2, l2 = generate_frame(5, 3)
    assert p1.tobytes() == p2.tobytes()
    assert json.dumps(l1) == json.dumps(l2) and not re.search(r"-0\.0[,\]]", json.dumps(l1))
    p3, _ = generate_frame(6, 3)
    p4, _ = generate_frame(5, 4)
    assert p3.tobytes() != p1.tobytes() and p4.tobytes() != p1.tobytes()


def test_point_layout_and_frame_size(frames):
    lags = SENSOR.sweep_lags
    for f in frames:
        p = f.points
        assert p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 5 and p.flags.c_contiguous
        assert 20_000 <= len(p) <= 150_000
        assert np.isfinite(p).all()
        assert p[:, 3].min() >= 0 and p[:, 3].max() <= 255 and np.all(p[:, 3] == np.round(p[:, 3]))
        assert set(np.unique(p[:, 4]).tolist()) == set(lags.tolist())
        assert np.all(np.diff(f.sweep) >= 0) and f.sweep[0] == 0  # latest sweep first
        assert np.array_equal(p[:, 4], lags[f.sweep])


def test_latest_sweep_points_lie_on_beams_from_the_origin(frames):
    beams = SENSOR.elevations
    for f in frames:
        p = f.points[_latest(f), :3].astype(np.float64)
        r = np.linalg.norm(p, axis=1)
        elev = np.arcsin(p[:, 2] / r)
        assert np.abs(elev[:, None] - beams[None, :]).min(1).max() < 2e-5
        assert r.min() >= SENSOR.min_range - NOISE and r.max() <= SENSOR.max_range + NOISE
        # the ground under the sensor is at -height
        assert abs(float(f.layout.ground.height(0.0, 0.0)) + SENSOR.height) < 1e-9


def test_earlier_sweeps_lie_on_beams_from_their_own_pose(frames):
    beams = SENSOR.elevations
    for f in frames:
        for k, sw in enumerate(f.sweeps[1:], start=1):
            p = f.points[f.sweep == k, :3].astype(np.float64) - sw.origin
            c, s = np.cos(sw.yaw), np.sin(sw.yaw)
            local = np.stack([c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1], p[:, 2]], axis=1)
            elev = np.arcsin(local[:, 2] / np.linalg.norm(local, axis=1))
            assert np.abs(elev[:, None] - beams[None, :]).min(1).max() < 1e-4
        if f.layout.ego_speed > 0:
            assert np.linalg.norm(f.sweeps[-1].origin[:2]) > 0.0


def _segment_hits(points, prims, margin, stop):
    """Does the segment from the origin to `stop` metres before each point cross any (shrunk) solid?"""
    r = np.linalg.norm(points, axis=1)
    end = points * ((r - stop) / r)[:, None]
    hit = np.zeros(len(points), bool)
    for i in range(len(prims)):
        kind, cen, half, yaw = prims.kind[i], prims.center[i], prims.half[i].copy(), prims.yaw[i]
        if kind == CYLINDER:
            half[:2] = half[0] / np.sqrt(2.0)  # the inscribed square prism
            yaw = 0.0
        elif kind != BOX:
            continue
        half = half - margin
        if (half <= 0).any():
            continue
        c, s = np.cos(yaw), np.sin(yaw)
        o = np.array([-(c * cen[0] + s * cen[1]), -(-s * cen[0] + c * cen[1]), -cen[2]])
        d = np.stack([c * end[:, 0] + s * end[:, 1], -s * end[:, 0] + c * end[:, 1], end[:, 2]], axis=1)
        d = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t1, t2 = (-half - o) / d, (half - o) / d
        tn = np.maximum(np.minimum(t1, t2).max(1), 0.0)
        tf = np.minimum(np.maximum(t1, t2).min(1), 1.0)
        hit |= tn <= tf
    return hit


def test_no_return_behind_the_first_hit(frames):
    rng = np.random.default_rng(0)
    for f in frames:
        idx = _latest(f)
        # all object returns plus a random sample of the rest
        mine = idx[f.owner[idx] >= 0]
        pick = np.union1d(mine, rng.choice(idx, 3000, replace=False))
        p = f.points[pick, :3].astype(np.float64)
        prims = sc.Primitives.concat([f.layout.static, f.layout.object_primitives(0.0)])
        assert not _segment_hits(p, prims, margin=0.03, stop=NOISE + 0.03).any()
        # nor behind the ground: the segment stays above it, and no return lies below it
        g = f.layout.ground
        frac = np.linspace(0.05, 0.97, 24)
        seg = p[:, None, :] * frac[None, :, None]
        assert (seg[..., 2] - g.height(seg[..., 0], seg[..., 1]) > -NOISE).all()
        all_p = f.points[idx, :3].astype(np.float64)
        assert (all_p[:, 2] - g.height(all_p[:, 0], all_p[:, 1]) > -NOISE).all()


def test_ground_returns_lie_on_the_ground(frames):
    for f in frames:
        is_ground, _ = _ground_material(f)
        sel = np.flatnonzero(is_ground & (f.sweep == 0))
        p = f.points[sel, :3].astype(np.float64)
        assert len(sel) > 5_000
        assert np.abs(p[:, 2] - f.layout.ground.height(p[:, 0], p[:, 1])).max() < NOISE


def test_ground_intersection_against_fine_search():
    g = Ground(-1.8, (0.012, -0.008), np.array([0.1, 0.05, 0.08]), np.array([0.2, -0.1, 0.05]),
               np.array([0.1, 0.3, -0.12]), np.array([0.3, 1.0, -2.0]))
    o = np.array([2.0, -3.0, float(g.height(2.0, -3.0)) + 1.8])
    rng = np.random.default_rng(1)
    az = rng.uniform(-np.pi, np.pi, 200)
    el = rng.uniform(np.radians(-30), np.radians(2), 200)
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
    t = intersect_ground(g, o, d, 70.0)
    ts = np.linspace(0, 70, 7001)  # 1 cm steps
    pts = o[None, None] + d[:, None] * ts[None, :, None]
    below = pts[..., 2] < g.height(pts[..., 0], pts[..., 1])
    first = np.where(below.any(1), ts[np.argmax(below, 1)], np.inf)
    assert np.array_equal(np.isfinite(t), np.isfinite(first))
    fin = np.isfinite(t)
    assert fin.sum() > 100 and np.abs(t[fin] - first[fin]).max() <= 1.1e-2


def test_labels_inside_range_with_enough_points(frames):
    rng = SceneConfig().point_cloud_range
    for f in frames:
        boxes = np.array(f.labels["boxes"])
        assert boxes.shape[1] == 9 and len(f.labels["names"]) == len(boxes) > 0
        assert set(f.labels["names"]) <= set(CLASSES)
        for k in range(3):
            assert ((boxes[:, k] >= rng[k]) & (boxes[:, k] < rng[k + 3])).all()
        counts = points_in_boxes(f.points[:, :3], boxes).sum(0)
        assert (counts >= SceneConfig().min_points).all()
        assert (f.label_points >= SceneConfig().min_points).all()


def test_objects_per_frame_and_sizes(frames):
    scene = SceneConfig()
    for f in frames:
        cls = f.layout.objects.cls
        for k, name in enumerate(CLASSES):
            assert (cls == k).sum() <= scene.counts[name][1]
    boxes = np.concatenate([np.array(f.labels["boxes"]) for f in frames])
    names = np.concatenate([f.labels["names"] for f in frames])
    expect = {"car": ((1.6, 2.2), (3.6, 5.6), (1.35, 2.1)), "truck": ((2.2, 2.8), (6.5, 10.5), (2.5, 3.8)),
              "pedestrian": ((0.5, 0.9), (0.5, 1.0), (1.45, 2.0)), "cyclist": ((0.5, 0.85), (1.5, 2.1), (1.45, 1.95))}
    for name, ranges in expect.items():
        sel = boxes[names == name]
        for j, (lo, hi) in enumerate(ranges):
            assert ((sel[:, 3 + j] >= lo) & (sel[:, 3 + j] <= hi)).all(), name
    assert (names == "car").sum() >= 5


def test_label_box_convention_matches_heading(frames):
    for f in frames:
        obj = f.layout.objects
        boxes = np.array(f.labels["boxes"])
        for b, o in zip(boxes, f.label_objects):
            theta = obj.heading[o]
            L, W, H = obj.dims[o]
            assert b[3] == pytest.approx(W, abs=1e-4) and b[4] == pytest.approx(L, abs=1e-4)
            assert b[5] == pytest.approx(H, abs=1e-4) and -np.pi <= b[6] < np.pi
            # R(yaw) @ (0, 1) is the heading direction: l runs along it, w across it
            c, s = np.cos(b[6]), np.sin(b[6])
            assert np.allclose([-s, c], [np.cos(theta), np.sin(theta)], atol=1e-4)
            u = np.array([np.cos(theta), np.sin(theta)])
            n = np.array([-u[1], u[0]])
            expect = [obj.xy[o] + a * L / 2 * u + e * W / 2 * n for a in (-1, 1) for e in (-1, 1)]
            corners = boxes_to_corners(b)[0]
            for q in expect:
                assert np.linalg.norm(corners - q, axis=1).min() < 1e-3
        # every solid part of every labelled object lies inside its label box
        prims = f.layout.object_primitives(0.0)
        for i, o in enumerate(f.label_objects):
            sel = np.flatnonzero(prims.owner == o)
            c, s = np.cos(prims.yaw[sel]), np.sin(prims.yaw[sel])
            pts = []
            for sx in (-1, 1):
                for sy in (-1, 1):
                    for sz in (-1, 1):
                        hx, hy, hz = prims.half[sel].T
                        pts.append(prims.center[sel] + np.stack(
                            [c * sx * hx - s * sy * hy, s * sx * hx + c * sy * hy, sz * hz], 1))
            assert points_in_boxes(np.concatenate(pts), boxes[i][None], margin=1e-4).all()  # labels: 5 decimals


def test_object_points_in_own_box_and_no_foreign_points(frames):
    for f in frames:
        idx = _latest(f)
        boxes = np.array(f.labels["boxes"])
        p = f.points[idx, :3]
        own = f.owner[idx]
        inside = points_in_boxes(p, boxes, margin=NOISE)
        for i, o in enumerate(f.label_objects):
            assert inside[own == o, i].all()
        is_ground, _ = _ground_material(f)
        foreign = points_in_boxes(p, boxes, margin=-NOISE)
        foreign &= own[:, None] != f.label_objects[None, :]
        foreign &= ~is_ground[idx][:, None]
        assert not foreign.any()


def test_bev_boxes_do_not_overlap(frames):
    for f in frames:
        corners = boxes_to_corners(f.all_boxes)
        for i in range(len(corners)):
            for j in range(i + 1, len(corners)):
                separated = False
                for poly in (corners[i], corners[j]):
                    for k in range(4):
                        e = poly[(k + 1) % 4] - poly[k]
                        n = np.array([-e[1], e[0]])
                        a, b = corners[i] @ n, corners[j] @ n
                        if a.max() < b.min() or b.max() < a.min():
                            separated = True
                assert separated, (i, j)


def test_velocity_labels_and_motion_of_returns(frames):
    seen_moving = seen_static = 0
    err_raw = err_shifted = 0.0
    for f in frames:
        obj = f.layout.objects
        boxes = np.array(f.labels["boxes"])
        for b, o, name in zip(boxes, f.label_objects, f.labels["names"]):
            speed = np.hypot(b[7], b[8])
            assert speed == pytest.approx(obj.speed[o], abs=1e-4)
            limit = {"car": 15.0, "truck": 15.0, "pedestrian": 1.8, "cyclist": 7.0}[name]
            assert speed <= limit + 1e-6
            if obj.speed[o] == 0:
                assert b[7] == 0 and b[8] == 0
                seen_static += 1
            else:
                seen_moving += 1
                heading = np.array([-np.sin(b[6]), np.cos(b[6])])
                assert np.allclose(b[7:9] / speed, heading, atol=1e-3)
        # returns of earlier sweeps, moved forward by velocity * lag, fall in the current box
        # (static ones without moving: the ego motion is compensated)
        lag = f.points[:, 4].astype(np.float64)
        for b, o in zip(boxes, f.label_objects):
            sel = np.flatnonzero((f.owner == o) & (f.sweep > 0))
            if sel.size == 0:
                continue
            p = f.points[sel, :3].astype(np.float64)
            moved = p.copy()
            moved[:, :2] += lag[sel, None] * b[None, 7:9]
            assert points_in_boxes(moved, b[None], margin=0.1).all()
            last = np.flatnonzero((f.owner == o) & (f.sweep == f.sweep.max()))
            now = np.flatnonzero((f.owner == o) & (f.sweep == 0))
            if np.hypot(b[7], b[8]) * lag[last[:1]].sum() > 0.5 and len(last) >= 10 and len(now) >= 10:
                # fast objects: the centroid of the oldest sweep's returns lags behind by velocity * lag
                axis = np.array([-np.sin(b[6]), np.cos(b[6])])
                ref = f.points[now, :2].astype(np.float64).mean(0) @ axis
                old = f.points[last, :2].astype(np.float64).mean(0)
                shift = lag[last[0]] * b[7:9]
                err_raw += abs(old @ axis - ref)
                err_shifted += abs((old + shift) @ axis - ref)
    assert seen_moving > 0 and seen_static > 0
    assert err_raw > 0 and err_shifted < 0.5 * err_raw  # (visibility changes between sweeps blur this)


def test_intensity_depends_on_surface(frames):
    f = frames[0]
    _, mats = _ground_material(f)
    inten = f.points[:, 3]
    road = np.median(inten[mats == sc.ROAD])
    walk = np.median(inten[np.isin(mats, [sc.SIDEWALK])])
    assert road < 15 and road < walk
    lane = inten[mats == sc.LANE_MARK]
    if lane.size > 20:
        assert np.median(lane) > 2 * road


def test_write_dataset_and_read_back(tmp_path):
    cfg = load_config("synthetic_small")
    meta = write_dataset(tmp_path / "ds", 2, 42, cfg, progress=False)
    root = tmp_path / "ds"
    stems = ["0042_000000", "0042_000001"]
    assert meta["stems"] == stems and meta["seed"] == 42 and meta["frames"] == 2
    on_disk = json.loads((root / "meta.json").read_text())
    assert on_disk["generator"] == meta["generator"] and on_disk["classes"] == list(CLASSES)
    assert on_disk["sensor"]["beams"] == 32 and (root / "README.md").is_file()
    scene = scene_for_config(cfg)
    for i, stem in enumerate(stems):
        points, labels = generate_frame(42, i, scene=scene, counts=True)
        raw = (root / "points" / f"{stem}.bin").read_bytes()
        assert raw == points.tobytes()
        assert read_labels(root / "labels" / f"{stem}.json") == labels
    leftovers = [p.name for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (root / "points" / f"{stems[0]}.bin", root / "meta.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_scene_for_config_refuses_unknown_classes():
    with pytest.raises(UserError, match="cannot make"):
        scene_for_config(load_config("nuscenes_voxel0075"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "'boxes' and 'names'"),
        ('{"boxes": [[1, 2, 3]], "names": ["car"]}', "9 finite numbers"),
        ('{"boxes": [[1, 2, 3, 4, 5, 6, 7, 8, NaN]], "names": ["car"]}', "9 finite numbers"),
        ('{"boxes": [[1, 2, 3, 4, 5, 6, 7, 8, "9"]], "names": ["car"]}', "9 finite numbers"),
        ('{"boxes": [], "names": ["car"]}', "0 boxes but 1 names"),
        ('{"boxes": [[1, 2, 3, 4, 5, 6, 7, 8, 9]], "names": [3]}', "non-empty string"),
        ('{"boxes": {}, "names": []}', "must be lists"),
    ],
)
def test_read_labels_rejects_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_labels(path)
    assert str(path) in str(err.value)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such label file"):
        read_labels(tmp_path / "nope.json")


def test_configs_are_validated():
    with pytest.raises(UserError):
        generate_frame(0, 0, sensor=SensorConfig(num_sweeps=0))
    with pytest.raises(UserError):
        generate_frame(0, 0, scene=SceneConfig(classes=["bus"]))
    pts, labels = generate_frame(0, 0, sensor=SensorConfig(num_sweeps=1), scene=SceneConfig(classes=[]))
    assert labels == {"boxes": [], "names": []} and len(pts) > 20_000


def test_single_sweep_and_class_subset():
    pts, labels = generate_frame(9, 0, sensor=SensorConfig(num_sweeps=1),
                                 scene=SceneConfig(classes=["car", "pedestrian"]))
    assert (pts[:, 4] == 0).all() and set(labels["names"]) <= {"car", "pedestrian"}


def test_a_data_set_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import trt_centerpoint.data.synth.dataset as synth_dataset

    real, calls = synth_dataset.generate_frame, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a killed run looks like from inside
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_dataset, "generate_frame", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "ds", frames=5, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half data set, no temporary folder


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path):
    from trt_centerpoint.data.dataset import LabeledFrames
    from trt_centerpoint.errors import UserError

    write_dataset(tmp_path / "ds", frames=3, seed=0, progress=False)
    with pytest.raises(UserError, match=r"ds: exists and is not empty; give --force"):
        write_dataset(tmp_path / "ds", frames=2, seed=1, progress=False)
    meta = write_dataset(tmp_path / "ds", frames=2, seed=1, progress=False, force=True)
    assert sorted(p.stem for p in (tmp_path / "ds" / "points").iterdir()) == meta["stems"]  # no stale frames
    assert len(LabeledFrames(tmp_path / "ds", 5)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


def test_readers_refuse_frames_that_disagree_with_meta(tmp_path):
    import shutil

    from trt_centerpoint.config import load_config
    from trt_centerpoint.data.dataset import LabeledFrames
    from trt_centerpoint.data.frames import load_frames
    from trt_centerpoint.errors import UserError

    write_dataset(tmp_path / "ds", frames=2, seed=0, progress=False)
    stray = tmp_path / "ds" / "points" / "0000_000099.bin"
    shutil.copy(tmp_path / "ds" / "points" / "0000_000000.bin", stray)
    shutil.copy(tmp_path / "ds" / "labels" / "0000_000000.json", tmp_path / "ds" / "labels" / "0000_000099.json")
    with pytest.raises(UserError, match=r"frames disagree with its meta.json \(2 frames\): 1 not listed "
                                        r"\(e\.g\. 0000_000099\)"):
        LabeledFrames(tmp_path / "ds", 5)
    shutil.rmtree(tmp_path / "ds" / "labels")
    stray.unlink()
    (tmp_path / "ds" / "points" / "0000_000001.bin").unlink()
    with pytest.raises(UserError, match=r"1 listed but missing \(e\.g\. 0000_000001\)"):
        load_frames(tmp_path / "ds", load_config("synthetic_small"))
