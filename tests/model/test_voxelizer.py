"""Voxelizer vs a brute-force reference: a plain Python loop over points (det3d points_to_voxel)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.voxelizer import VoxelBatch, Voxelizer, VoxelOverflowWarning, VoxelStats, collate


def reference(points: np.ndarray, vcfg, training: bool = False):
    """One point at a time, insertion-ordered dict voxel key -> list of points, float32 coordinates."""
    lo = np.asarray(vcfg.point_cloud_range[:3], dtype=np.float32)
    size = np.asarray(vcfg.voxel_size, dtype=np.float32)
    grid = vcfg.grid_size
    max_voxels = vcfg.max_voxels_train if training else vcfg.max_voxels
    voxels: dict[tuple[int, int, int], list[np.ndarray]] = {}
    nonfinite = outside = 0
    for p in points.astype(np.float32):
        if not np.all(np.isfinite(p)):
            nonfinite += 1
            continue
        c = np.floor((p[:3] - lo) / size)
        if any(c[i] < 0 or c[i] >= grid[i] for i in range(3)):
            outside += 1
            continue
        key = (int(c[2]), int(c[1]), int(c[0]))
        voxels.setdefault(key, []).append(p)
    items = list(voxels.items())
    kept, dropped = items[:max_voxels], items[max_voxels:]
    feats, coords, nums, abs_means = [], [], [], []
    full = 0
    for key, pts in kept:
        use = pts[: vcfg.max_points_per_voxel]
        full += len(pts) - len(use)
        feats.append(np.mean(np.stack(use).astype(np.float64), axis=0))
        abs_means.append(np.mean(np.abs(np.stack(use).astype(np.float64)), axis=0))
        coords.append((0,) + key)
        nums.append(len(use))
    f = points.shape[1]
    stats = VoxelStats(
        points_in=len(points),
        points_nonfinite=nonfinite,
        points_out_of_range=outside,
        points_voxel_full=full,
        voxels_dropped=len(dropped),
        points_in_dropped_voxels=sum(len(p) for _, p in dropped),
        num_voxels=len(kept),
        points_kept=sum(nums),
    )
    return (
        np.asarray(feats, dtype=np.float64).reshape(-1, f),
        np.asarray(coords, dtype=np.int64).reshape(-1, 4),
        np.asarray(nums, dtype=np.int64),
        stats,
        np.asarray(abs_means, dtype=np.float64).reshape(-1, f),  # for the float32 error bound
    )


def make_points(vcfg, n: int, seed: int, num_hot: int = 300) -> np.ndarray:
    """Points clustered in `num_hot` voxels (many duplicates, some over max_points), plus strays, out-of-range
    points, boundary points and NaN / Inf rows, shuffled."""
    rng = np.random.default_rng(seed)
    lo = np.asarray(vcfg.point_cloud_range[:3])
    hi = np.asarray(vcfg.point_cloud_range[3:])
    size = np.asarray(vcfg.voxel_size)
    grid = np.asarray(vcfg.grid_size)
    f = vcfg.num_point_features
    hot = rng.integers(0, grid, size=(num_hot, 3))
    which = rng.integers(0, num_hot, size=n)
    xyz_hot = lo + (hot[which] + rng.random((n, 3))) * size
    xyz_any = lo + rng.random((n // 4, 3)) * (hi - lo)
    xyz_out = lo - 2.0 + rng.random((n // 10, 3)) * (hi - lo + 4.0)
    edges = np.array(
        [lo, hi, [hi[0], 0, 0], [0, hi[1], 0], [0, 0, hi[2]], [lo[0], 0, 0], [0, lo[1], lo[2]],
         np.nextafter(hi.astype(np.float32), -np.inf)]
    )
    xyz = np.concatenate([xyz_hot, xyz_any, xyz_out, edges])
    extra = rng.random((len(xyz), f - 3)) * 100.0
    pts = np.concatenate([xyz, extra], axis=1).astype(np.float32)
    pts = pts[rng.permutation(len(pts))]
    bad = rng.choice(len(pts), size=7, replace=False)
    pts[bad[:3], 0] = np.nan
    pts[bad[3:5], 4 if f > 4 else 3] = np.inf
    pts[bad[5:], 2] = -np.inf
    return pts


def assert_matches(out: VoxelBatch, points: np.ndarray, vcfg, training: bool = False):
    feats, coords, nums, stats, abs_mean = reference(points, vcfg, training)
    assert (
        out.features.dtype == torch.float32 and out.coords.dtype == torch.int32 and out.num_points.dtype == torch.int32
    )
    assert out.features.shape == feats.shape and out.coords.shape == coords.shape
    np.testing.assert_array_equal(out.coords.numpy(), coords)
    np.testing.assert_array_equal(out.num_points.numpy(), nums)
    # a float32 sum of K = max_points_per_voxel terms (padded zeros included), then a division by the count: off
    # by at most (K - 1 + 1) u x mean |x| (u = eps / 2) from the float64 mean, whatever order the CPU sums in;
    # K eps is twice that
    bound = vcfg.max_points_per_voxel * np.finfo(np.float32).eps * abs_mean
    assert (np.abs(out.features.numpy().astype(np.float64) - feats) <= bound).all()
    assert out.stats == stats
    s = out.stats
    assert s.points_in == (
        s.points_nonfinite + s.points_out_of_range + s.points_voxel_full + s.points_in_dropped_voxels + s.points_kept
    )
    return stats


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny").voxel


@pytest.fixture(scope="module")
def nusc():
    return load_config("nuscenes_voxel0075").voxel


@pytest.mark.parametrize("name", ["tiny", "nuscenes_voxel0075"])
def test_matches_reference(name):
    vcfg = load_config(name).voxel
    pts = make_points(vcfg, 3000, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VoxelOverflowWarning)  # nothing dropped here
        out = Voxelizer(vcfg)(torch.from_numpy(pts))
    stats = assert_matches(out, pts, vcfg)
    # The data exercises every path: duplicates beyond max_points, out of range, NaN / Inf.
    assert stats.points_voxel_full > 0 and stats.points_out_of_range > 0 and stats.points_nonfinite == 7
    assert (out.num_points == vcfg.max_points_per_voxel).any() and (out.num_points == 1).any()
    assert out.stats.voxels_dropped == 0
    sz, sy, sx = vcfg.sparse_shape
    c = out.coords
    assert (c[:, 0] == 0).all() and (c[:, 1] < sz - 1).all() and (c[:, 2] < sy).all() and (c[:, 3] < sx).all()


def test_max_points_truncation_keeps_first_points(tiny):
    vcfg = dataclasses.replace(tiny, max_points_per_voxel=3)
    base = np.array([0.05, 0.05, 0.1, 0.0, 0.0], dtype=np.float32)
    pts = np.stack([base + np.array([0, 0, 0, i, 10 * i], dtype=np.float32) for i in range(6)])
    out = Voxelizer(vcfg)(torch.from_numpy(pts))
    assert out.num_voxels == 1 and out.num_points.tolist() == [3]
    np.testing.assert_allclose(out.features[0, 3:].numpy(), [1.0, 10.0])  # mean of 0, 1, 2 (not 3, 4, 5)
    assert out.stats.points_voxel_full == 3 and out.stats.points_kept == 3
    assert_matches(out, pts, vcfg)


@pytest.mark.parametrize("training", [False, True])
def test_max_voxels_truncation(tiny, training):
    vcfg = dataclasses.replace(tiny, max_voxels=80, max_voxels_train=40)
    pts = make_points(vcfg, 2000, seed=2)
    with pytest.warns(VoxelOverflowWarning, match="max_voxels_train" if training else "max_voxels is 80") as rec:
        out = Voxelizer(vcfg)(torch.from_numpy(pts), training=training)
    assert len([w for w in rec if issubclass(w.category, VoxelOverflowWarning)]) == 1
    assert out.num_voxels == (40 if training else 80)
    stats = assert_matches(out, pts, vcfg, training)
    assert stats.voxels_dropped > 0 and stats.points_in_dropped_voxels >= stats.voxels_dropped
    assert str(stats.voxels_dropped) in str(rec[0].message)


def test_the_model_voxelizes_with_its_mode_s_cap_unless_told(tiny):
    """QAT that trains only the ranges voxelizes with the deployed cap in train mode (`voxelize(training=False)`)."""
    cfg = load_config("tiny")
    cfg = dataclasses.replace(cfg, voxel=dataclasses.replace(cfg.voxel, max_voxels=80, max_voxels_train=40))
    model = CenterPoint(cfg)
    pts = torch.from_numpy(make_points(cfg.voxel, 2000, seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VoxelOverflowWarning)
        assert model.train().voxelize([pts]).num_voxels == 40
        assert model.train().voxelize([pts], training=False).num_voxels == 80
        assert model.eval().voxelize([pts]).num_voxels == 80
        assert model.eval().voxelize([pts], training=True).num_voxels == 40


def test_voxel_order_is_first_appearance(tiny):
    size = np.asarray(tiny.voxel_size, dtype=np.float32)
    lo = np.asarray(tiny.point_cloud_range[:3], dtype=np.float32)
    cells = [(5, 1, 2), (0, 0, 0), (5, 1, 2), (127, 127, 31), (0, 0, 0), (3, 9, 4)]  # (x, y, z)
    xyz = lo + (np.asarray(cells, dtype=np.float32) + 0.5) * size
    pts = np.concatenate([xyz, np.zeros((len(cells), 2), np.float32)], axis=1)
    out = Voxelizer(tiny)(pts)  # a numpy array works too
    assert out.coords.tolist() == [[0, 2, 1, 5], [0, 0, 0, 0], [0, 31, 127, 127], [0, 4, 9, 3]]
    assert out.num_points.tolist() == [2, 2, 1, 1]


def test_boundaries(nusc):
    lo = nusc.point_cloud_range[:3]
    hi = nusc.point_cloud_range[3:]
    pts = np.array(
        [
            [lo[0], lo[1], lo[2], 1, 0],  # exactly at range min: voxel (0, 0, 0)
            [hi[0], 0, 0, 1, 0],  # exactly at range max on x: outside
            [0, hi[1], 0, 1, 0],
            [0, 0, hi[2], 1, 0],
            [np.nextafter(np.float32(lo[0]), np.float32(-np.inf)), 0, 0, 1, 0],  # just below min: outside
        ],
        dtype=np.float32,
    )
    out = Voxelizer(nusc)(pts)
    assert out.coords.tolist() == [[0, 0, 0, 0]]
    assert out.stats.points_out_of_range == 4
    assert_matches(out, pts, nusc)


def test_empty_frames(tiny):
    vox = Voxelizer(tiny)
    f = tiny.num_point_features
    cases = {
        "no points": np.zeros((0, f), np.float32),
        "all outside": np.full((10, f), 1000.0, np.float32),
        "all nan": np.full((4, f), np.nan, np.float32),
    }
    for what, pts in cases.items():
        out = vox(torch.from_numpy(pts))
        assert out.features.shape == (0, f) and out.features.dtype == torch.float32, what
        assert out.coords.shape == (0, 4) and out.coords.dtype == torch.int32, what
        assert out.num_points.shape == (0,) and out.num_points.dtype == torch.int32, what
        assert out.stats.points_in == len(pts) and out.stats.num_voxels == 0, what
    assert vox(torch.from_numpy(cases["all outside"])).stats.points_out_of_range == 10
    assert vox(torch.from_numpy(cases["all nan"])).stats.points_nonfinite == 4


def test_deterministic_and_dtype_independent(nusc):
    pts = make_points(nusc, 3000, seed=3, num_hot=50)
    vox = Voxelizer(nusc)
    a = vox(torch.from_numpy(pts))
    b = vox(torch.from_numpy(pts.copy()))
    c = vox(torch.from_numpy(pts).double())  # converted to float32 first
    for other in (b, c):
        assert torch.equal(a.features, other.features)
        assert torch.equal(a.coords, other.coords)
        assert torch.equal(a.num_points, other.num_points)


def test_collate(tiny):
    vox = Voxelizer(tiny)
    frames = [make_points(tiny, 500, seed=s) for s in (4, 5)]
    outs = [vox(torch.from_numpy(p)) for p in frames]
    empty = vox(torch.zeros((0, tiny.num_point_features)))
    batch = collate([outs[0], empty, outs[1]])
    assert batch.batch_size == 3
    n0, n1 = outs[0].num_voxels, outs[1].num_voxels
    assert batch.num_voxels == n0 + n1
    assert (batch.coords[:n0, 0] == 0).all() and (batch.coords[n0:, 0] == 2).all()
    assert torch.equal(batch.coords[n0:, 1:], outs[1].coords[:, 1:])
    assert torch.equal(batch.features[:n0], outs[0].features)
    assert batch.stats.points_in == sum(len(p) for p in frames)
    assert batch.stats.num_voxels == n0 + n1
    assert (outs[0].coords[:, 0] == 0).all()  # inputs untouched
    nested = collate([batch, outs[0]])
    assert nested.batch_size == 4 and (nested.coords[-n0:, 0] == 3).all()


def test_bad_input(tiny):
    vox = Voxelizer(tiny)
    with pytest.raises(UserError, match="4 features but the config expects 5"):
        vox(torch.zeros((3, 4)))
    with pytest.raises(UserError, match="shape"):
        vox(torch.zeros(5))
    with pytest.raises(ValueError):
        collate([])
