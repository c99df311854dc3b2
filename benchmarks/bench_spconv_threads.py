"""Time the nuScenes-size sparse backbone on CPU at 2 torch threads vs 1, with the spconv CPU fixes.

spconv 2.3.8's CPU scatter-add races with more than one thread; trt_centerpoint._compat.spconv replaces it
with torch.index_add_. This script checks that the fixed backbone is repeatable at 2 threads, agrees with the
1-thread result, and shows what the second thread buys.

    python benchmarks/bench_spconv_threads.py --voxels 60000 --repeats 3

Input: a synthetic spinning 32-beam LiDAR (elevations -30..+10 deg, 360 deg azimuth, several sweeps with ego
motion) hitting a ground plane at z = -1.8 m, a few dozen parked/driving cars and some walls, voxelized at the
config's voxel size (voxel feature = mean of its points: x, y, z, intensity, time lag), then subsampled or
topped up to --voxels.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from trt_centerpoint._compat.spconv import apply_spconv_cpu_fixes
from trt_centerpoint.config import load_config


def _boxes(rng: np.random.Generator, num_cars: int, num_walls: int) -> np.ndarray:
    """Upright boxes [cx, cy, cz, length, width, height, yaw] standing on the ground (z = -1.8)."""
    boxes = []
    for _ in range(num_cars):
        r, a = rng.uniform(4.0, 45.0), rng.uniform(-np.pi, np.pi)
        length, width, height = rng.uniform(3.8, 5.2), rng.uniform(1.7, 2.1), rng.uniform(1.4, 1.9)
        yaw = a + rng.choice([0.0, np.pi / 2]) + rng.normal(0.0, 0.1)  # along or across the road
        boxes.append([r * np.cos(a), r * np.sin(a), -1.8 + height / 2, length, width, height, yaw])
    for _ in range(num_walls):
        r, a = rng.uniform(15.0, 50.0), rng.uniform(-np.pi, np.pi)
        length, height = rng.uniform(10.0, 40.0), rng.uniform(2.0, 6.0)
        boxes.append([r * np.cos(a), r * np.sin(a), -1.8 + height / 2, length, 0.3, height, a + np.pi / 2])
    return np.asarray(boxes, dtype=np.float64)


def _ray_hits(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray, max_range: float) -> np.ndarray:
    """Distance along each unit ray to the first hit (ground or box), inf for none."""
    t_hit = np.full(len(dirs), np.inf)
    down = dirs[:, 2] < -1e-6
    t_hit[down] = (-1.8 - origin[2]) / dirs[down, 2]
    for cx, cy, cz, length, width, height, yaw in boxes:
        c, s = np.cos(yaw), np.sin(yaw)
        # ray in the box frame (slab test)
        o = origin - np.array([cx, cy, cz])
        o_local = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]])
        d_local = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], 1)
        half = np.array([length, width, height]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o_local) / d_local
            t2 = (half - o_local) / d_local
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (t_near <= t_far) & (t_near > 0.5)
        t_hit = np.where(hit & (t_near < t_hit), t_near, t_hit)
    t_hit[t_hit > max_range] = np.inf
    return t_hit


def lidar_points(rng: np.random.Generator, sweeps: int = 10, beams: int = 32, azimuth_steps: int = 1800) -> np.ndarray:
    """[P, 5] points (x, y, z, intensity, time lag) from `sweeps` revolutions of a moving 32-beam LiDAR."""
    boxes = _boxes(rng, num_cars=40, num_walls=8)
    elevation = np.deg2rad(np.linspace(-30.0, 10.0, beams))
    points = []
    for sweep in range(sweeps):
        origin = np.array([-0.5 * sweep, 0.0, 0.0])  # ego drives ~10 m/s, sweeps 0.05 s apart
        azimuth = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False) + rng.uniform(0, 2 * np.pi / azimuth_steps)
        el, az = np.meshgrid(elevation, azimuth, indexing="ij")
        dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
        t = _ray_hits(origin, dirs, boxes, max_range=70.0)
        ok = np.isfinite(t)
        xyz = origin + dirs[ok] * (t[ok, None] + rng.normal(0.0, 0.02, (ok.sum(), 1)))
        intensity = rng.uniform(0.0, 1.0, (len(xyz), 1))
        lag = np.full((len(xyz), 1), 0.05 * sweep)
        points.append(np.concatenate([xyz, intensity, lag], 1))
    return np.concatenate(points).astype(np.float32)


def voxelize(points: np.ndarray, pc_range, voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """Mean point feature per voxel and (batch=0, z, y, x) int32 coordinates."""
    lo, hi, size = np.asarray(pc_range[:3]), np.asarray(pc_range[3:]), np.asarray(voxel_size)
    inside = np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)
    points = points[inside]
    grid = np.round((hi - lo) / size).astype(np.int64)
    ijk = np.minimum(np.floor((points[:, :3] - lo) / size).astype(np.int64), grid - 1)  # x, y, z
    keys = (ijk[:, 2] * grid[1] + ijk[:, 1]) * grid[0] + ijk[:, 0]
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    feats = np.zeros((len(uniq), points.shape[1]), dtype=np.float64)
    np.add.at(feats, inverse, points)
    feats /= counts[:, None]
    z, rem = np.divmod(uniq, grid[0] * grid[1])
    y, x = np.divmod(rem, grid[0])
    coords = np.stack([np.zeros_like(z), z, y, x], 1).astype(np.int32)
    return feats.astype(np.float32), coords


def resize_voxels(rng, feats, coords, target: int, grid_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Subsample to `target` voxels, or top up with copies shifted by one voxel in x/y (kept unique)."""
    if len(feats) >= target:
        keep = np.sort(rng.choice(len(feats), target, replace=False))
        return feats[keep], coords[keep]
    key = lambda c: (c[:, 1].astype(np.int64) * grid_zyx[1] + c[:, 2]) * grid_zyx[2] + c[:, 3]  # noqa: E731
    seen = set(key(coords).tolist())
    all_f, all_c = [feats], [coords]
    total = len(feats)
    while total < target:
        shift = rng.integers(-2, 3, size=(len(coords), 2))
        c = coords.copy()
        c[:, 2:] = np.clip(c[:, 2:] + shift, 0, [grid_zyx[1] - 1, grid_zyx[2] - 1])
        fresh = []
        for i, k in enumerate(key(c).tolist()):
            if k not in seen:
                seen.add(k)
                fresh.append(i)
                if total + len(fresh) >= target:
                    break
        all_f.append(feats[fresh])
        all_c.append(c[fresh])
        total += len(fresh)
    return np.concatenate(all_f), np.concatenate(all_c)


def timed_forwards(model, feats, coords, thread_counts, repeats: int):
    """Interleaved timing (2, 1, 2, 1, ...) so a change in machine load hits both thread counts alike.

    Returns {threads: (seconds per forward, first output, all outputs bit-identical)}.
    """
    times = {n: [] for n in thread_counts}
    first, repeatable = {}, {n: True for n in thread_counts}
    with torch.no_grad():
        for threads in thread_counts:  # warm-up: allocations, thread pool, pair generation code paths
            torch.set_num_threads(threads)
            first[threads] = model(feats, coords, 1)
        for _ in range(repeats):
            for threads in thread_counts:
                torch.set_num_threads(threads)
                start = time.perf_counter()
                out = model(feats, coords, 1)
                times[threads].append(time.perf_counter() - start)
                repeatable[threads] &= torch.equal(out, first[threads])
    return {n: (times[n], first[n], repeatable[n]) for n in thread_counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=60000, help="number of active voxels (default 60000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per thread count (default 3)")
    parser.add_argument("--config", default="nuscenes_voxel0075")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    status = apply_spconv_cpu_fixes()
    from trt_centerpoint.model.backbone import SpMiddleResNetFHD

    cfg = load_config(args.config)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    points = lidar_points(rng)
    feats, coords = voxelize(points, cfg.voxel.point_cloud_range, cfg.voxel.voxel_size)
    raw = len(feats)
    grid_zyx = cfg.voxel.sparse_shape
    feats, coords = resize_voxels(rng, feats, coords, args.voxels, grid_zyx)
    print(f"spconv fixes: {status}")
    print(f"input: {len(points)} points -> {raw} voxels -> {len(feats)} voxels on {grid_zyx} "
          f"({time.perf_counter() - t0:.1f} s to generate)")

    torch.manual_seed(args.seed)
    model = SpMiddleResNetFHD(cfg).eval()
    feats_t, coords_t = torch.from_numpy(feats), torch.from_numpy(coords)

    old_threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    results = timed_forwards(model, feats_t, coords_t, (2, 1), args.repeats)
    load_after = os.getloadavg()[0]
    torch.set_num_threads(old_threads)

    print(f"\n{'threads':>7} | {'min s':>7} | {'median s':>8} | {'mean s':>7} | repeatable")
    for threads, (times, _, repeatable) in results.items():
        print(f"{threads:>7} | {min(times):7.3f} | {np.median(times):8.3f} | {np.mean(times):7.3f} | {repeatable}")
    out2, out1 = results[2][1], results[1][1]
    diff = (out2 - out1).abs().max().item()
    scale = out1.abs().max().item()
    best = {n: min(results[n][0]) for n in results}
    median = {n: float(np.median(results[n][0])) for n in results}
    print(f"\n1-thread / 2-thread time: {best[1] / best[2]:.2f}x on the best run, "
          f"{median[1] / median[2]:.2f}x on the median (> 1: the second thread helps)")
    print(f"max |out(2 threads) - out(1 thread)|: {diff:.3g} (max |out| {scale:.3g}, output {tuple(out1.shape)})")
    print(f"1-min load average: {load_before:.1f} before, {load_after:.1f} after on {os.cpu_count()} CPUs "
          "(2-thread timings are only meaningful on otherwise idle cores)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
