"""Vectorised ray casting for the synthetic LiDAR (see `trt_centerpoint.data.synth.dataset` for the conventions).

Geometry handled here:
  * `Ground`: a height field z = g(x, y) (a plane plus a few low-frequency sinusoids); rays are
    intersected with it by a safeguarded Newton iteration run on all rays at once.
  * `Primitives`: a struct of arrays of solid oriented boxes, solid vertical cylinders and
    semi-transparent ellipsoid volumes (vegetation). A ray that crosses a volume stops inside it at an
    exponentially distributed depth (extinction `density` per metre) or passes through.

Rays all start at the sensor (the origin of the frame the primitives are given in) and lie on a grid of
beams (sorted elevations) x azimuth columns. Each primitive is culled to the beams and columns its
bounding box can reach, which gives a flat list of (ray, primitive) pairs that is intersected in one go;
every ray then keeps only its nearest hit (first-hit occlusion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, VOLUME = 0, 1, 2


def wrap_angle(a):
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


@dataclass
class Ground:
    """Height field g(x, y) = base + sx*x + sy*y + sum_k amp_k * (sin(kx_k x + ky_k y + ph_k) - sin(ph_k)).

    The sinusoid terms vanish at the origin, so g(0, 0) = base.
    """

    base: float
    slope: tuple[float, float]
    amp: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray

    def height(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        h = self.base + self.slope[0] * x + self.slope[1] * y
        for a, kx, ky, ph in zip(self.amp, self.kx, self.ky, self.phase):
            h = h + a * (np.sin(kx * x + ky * y + ph) - np.sin(ph))
        return h

    def gradient(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        gx = np.full(x.shape, float(self.slope[0]))
        gy = np.full(x.shape, float(self.slope[1]))
        for a, kx, ky, ph in zip(self.amp, self.kx, self.ky, self.phase):
            c = a * np.cos(kx * x + ky * y + ph)
            gx += c * kx
            gy += c * ky
        return gx, gy

    def normal(self, x, y):
        gx, gy = self.gradient(x, y)
        n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
        return n / np.linalg.norm(n, axis=-1, keepdims=True)


def intersect_ground(ground: Ground, origin, dirs: np.ndarray, t_max, samples: int = 5, iters: int = 3):
    """Distance along each unit ray `origin + t * dirs` (world frame) to its first ground crossing, inf
    where there is none before `t_max` (scalar or per ray). The origin must lie above the ground.

    Along a ray the height above the ground is f(t) = c0 + c1 t - sum_k amp_k sin(a_k + b_k t), and the
    waves can change f by at most W = 2 sum |amp_k|, so the first crossing lies in
    [(f(0) - W) / -c1, (f(0) + W) / -c1]. That bracket is sampled at `samples` points, the first sign
    change is kept, and Newton steps started from the secant guess (falling back to bisection whenever a
    step leaves the sub-bracket) refine it. A dip below the ground shorter than one sample step (only
    possible for grazing rays) is missed.
    """
    ox, oy, oz = (float(v) for v in origin)
    n = len(dirs)
    t = np.full(n, np.inf)
    t_max = np.broadcast_to(np.asarray(t_max, np.float64), (n,))
    f0 = oz - float(ground.height(ox, oy))
    if f0 <= 0:
        raise ValueError("intersect_ground: the ray origin is below the ground")
    W = 2.0 * float(np.abs(ground.amp).sum())
    c1 = dirs[:, 2] - ground.slope[0] * dirs[:, 0] - ground.slope[1] * dirs[:, 1]
    with np.errstate(divide="ignore"):
        t_lo = np.maximum((f0 - W) / -c1, 0.0)
        t_hi = np.minimum((f0 + W) / -c1, t_max)
    idx = np.flatnonzero((c1 < -1e-9) & (t_lo < t_hi))
    if idx.size == 0:
        return t
    c1, t_lo, t_hi = c1[idx], t_lo[idx], t_hi[idx]
    waves = [(amp, kx * ox + ky * oy + ph, kx * dirs[idx, 0] + ky * dirs[idx, 1])
             for amp, kx, ky, ph in zip(ground.amp, ground.kx, ground.ky, ground.phase)]
    # f(t) = f0 + c1 t - sum_k amp_k (sin(a_k + b_k t) - sin(a_k))
    c0 = f0 + sum(amp * np.sin(a) for amp, a, _ in waves)

    def f(tt, sel=slice(None)):
        val = c0 + c1[sel] * tt if tt.ndim == 1 else c0 + c1[sel, None] * tt
        for amp, a, b in waves:
            bb = b[sel] if tt.ndim == 1 else b[sel, None]
            val = val - amp * np.sin(a + bb * tt)
        return val

    grid = t_lo[:, None] + (t_hi - t_lo)[:, None] * np.linspace(0.0, 1.0, samples)[None, :]
    F = f(grid)
    neg = F < 0.0
    has = neg[:, 1:].any(1)
    sel = np.flatnonzero(has)
    if sel.size == 0:
        return t
    j = 1 + np.argmax(neg[sel, 1:], axis=1)
    lo, hi = grid[sel, j - 1], grid[sel, j]
    f_lo, f_hi = F[sel, j - 1], F[sel, j]
    cur = lo + (hi - lo) * f_lo / np.maximum(f_lo - f_hi, 1e-12)
    for _ in range(iters):
        val = f(cur, sel)
        deriv = c1[sel].copy()
        for amp, a, b in waves:
            deriv -= amp * b[sel] * np.cos(a + b[sel] * cur)
        above = val > 0.0
        lo = np.where(above, cur, lo)
        hi = np.where(above, hi, cur)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = cur - val / deriv
        ok = np.isfinite(step) & (step >= lo) & (step <= hi)
        cur = np.where(ok, step, 0.5 * (lo + hi))
    t[idx[sel]] = cur
    return t


@dataclass
class Primitives:
    """Struct of arrays describing P primitives in one frame.

    kind: BOX / CYLINDER / VOLUME. center: box centre, cylinder axis midpoint, ellipsoid centre.
    half: box half extents along its local (x, y, z) axes (x = rotated by `yaw`); cylinder (r, r, half
    height); ellipsoid radii (r_xy, r_xy, r_z). yaw: box heading (ignored for the others).
    owner: object index or -1 for static clutter. material: surface id. refl: base reflectivity (0..255).
    density: extinction per metre of a VOLUME.
    """

    kind: np.ndarray
    center: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    owner: np.ndarray
    material: np.ndarray
    refl: np.ndarray
    density: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @staticmethod
    def from_rows(rows: list[tuple]) -> "Primitives":
        """rows: (kind, (cx, cy, cz), (hx, hy, hz), yaw, owner, material, refl, density)."""
        if not rows:
            return Primitives.concat([])
        kind, center, half, yaw, owner, material, refl, density = zip(*rows)
        return Primitives(
            np.asarray(kind, np.int8),
            np.asarray(center, np.float64).reshape(-1, 3),
            np.asarray(half, np.float64).reshape(-1, 3),
            np.asarray(yaw, np.float64),
            np.asarray(owner, np.int32),
            np.asarray(material, np.int16),
            np.asarray(refl, np.float64),
            np.asarray(density, np.float64),
        )

    @staticmethod
    def concat(items: list["Primitives"]) -> "Primitives":
        if not items:
            return Primitives(
                np.zeros(0, np.int8), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0),
                np.zeros(0, np.int32), np.zeros(0, np.int16), np.zeros(0), np.zeros(0),
            )
        return Primitives(*(np.concatenate([getattr(p, name) for p in items]) for name in _FIELDS))

    def to_frame(self, origin, yaw: float) -> "Primitives":
        """Express the primitives in a frame at `origin` (world) rotated by `yaw` about z."""
        c, s = np.cos(yaw), np.sin(yaw)
        d = self.center - np.asarray(origin, np.float64)
        center = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
        return Primitives(self.kind, center, self.half, self.yaw - yaw, self.owner, self.material,
                          self.refl, self.density)


_FIELDS = ("kind", "center", "half", "yaw", "owner", "material", "refl", "density")


@dataclass
class RayGrid:
    """Rays from the origin: beam b (ascending elevations) x column c (azimuth az0 + c * res)."""

    elevations: np.ndarray
    az0: float
    n_az: int

    @property
    def res(self) -> float:
        return 2.0 * np.pi / self.n_az

    def directions(self) -> np.ndarray:
        """Unit directions [beams * n_az, 3], ray index = beam * n_az + column."""
        az = self.az0 + np.arange(self.n_az) * self.res
        ce, se = np.cos(self.elevations)[:, None], np.sin(self.elevations)[:, None]
        d = np.empty((len(self.elevations), self.n_az, 3))
        d[..., 0] = ce * np.cos(az)[None, :]
        d[..., 1] = ce * np.sin(az)[None, :]
        d[..., 2] = se
        return d.reshape(-1, 3)


def _candidate_pairs(prims: Primitives, grid: RayGrid, max_range: float):
    """(ray index, primitive index) pairs for every ray that can reach each primitive's bounding box."""
    P = len(prims)
    if P == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    box = prims.kind == BOX
    c, s = np.cos(prims.yaw), np.sin(prims.yaw)
    # Footprint used for culling: the box itself, or the axis-aligned square around a circle.
    c = np.where(box, c, 1.0)
    s = np.where(box, s, 0.0)
    hx, hy, hz = prims.half[:, 0], prims.half[:, 1], prims.half[:, 2]
    cx, cy, cz = prims.center[:, 0], prims.center[:, 1], prims.center[:, 2]
    # Distance from the sensor to the footprint (0 when the sensor stands inside it).
    lx = np.abs(c * cx + s * cy)
    ly = np.abs(-s * cx + c * cy)
    r_min = np.hypot(np.maximum(lx - hx, 0.0), np.maximum(ly - hy, 0.0))
    sx = np.array([1, 1, -1, -1])[None, :]
    sy = np.array([1, -1, 1, -1])[None, :]
    kx = cx[:, None] + c[:, None] * sx * hx[:, None] - s[:, None] * sy * hy[:, None]
    ky = cy[:, None] + s[:, None] * sx * hx[:, None] + c[:, None] * sy * hy[:, None]
    r_max = np.hypot(kx, ky).max(1)
    z_top, z_bot = cz + hz, cz - hz
    el_max = np.where(z_top >= 0, np.arctan2(z_top, r_min), np.arctan2(z_top, r_max))
    el_min = np.where(z_bot < 0, np.arctan2(z_bot, r_min), np.arctan2(z_bot, r_max))
    b_lo = np.searchsorted(grid.elevations, el_min - 1e-9, side="left")
    b_hi = np.searchsorted(grid.elevations, el_max + 1e-9, side="right")
    n_b = np.maximum(b_hi - b_lo, 0)
    a_c = np.arctan2(cy, cx)
    delta = wrap_angle(np.arctan2(ky, kx) - a_c[:, None])
    res = grid.res
    c_lo = np.floor((a_c + delta.min(1) - grid.az0) / res).astype(np.int64)
    c_hi = np.ceil((a_c + delta.max(1) - grid.az0) / res).astype(np.int64)
    n_c = np.minimum(c_hi - c_lo + 1, grid.n_az)
    inside = r_min < 1e-6
    c_lo = np.where(inside, 0, c_lo)
    n_c = np.where(inside, grid.n_az, n_c)
    n_b = np.where(r_min > max_range, 0, n_b)
    counts = (n_b * n_c).astype(np.int64)
    total = int(counts.sum())
    pid = np.repeat(np.arange(P), counts)
    start = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - start[pid]
    nc = n_c[pid]
    beam = b_lo[pid] + k // nc
    col = (c_lo[pid] + k % nc) % grid.n_az
    return beam * grid.n_az + col, pid


def _hit_boxes(prims, pid, d):
    """Slab test in each box's frame. Returns t (inf = miss), face axis, local hit point."""
    c, s = np.cos(prims.yaw[pid]), np.sin(prims.yaw[pid])
    cen = prims.center[pid]
    o = np.stack([-(c * cen[:, 0] + s * cen[:, 1]), -(-s * cen[:, 0] + c * cen[:, 1]), -cen[:, 2]], axis=1)
    dl = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    h = prims.half[pid]
    t1 = (-h - o) / dl
    t2 = (h - o) / dl
    tmin = np.minimum(t1, t2)
    tnear = tmin.max(1)
    tfar = np.maximum(t1, t2).min(1)
    hit = (tnear <= tfar) & (tnear > 0.0)
    t = np.where(hit, tnear, np.inf)
    axis = tmin.argmax(1).astype(np.int8)
    local = o + np.where(hit, tnear, 0.0)[:, None] * dl
    cos_inc = np.abs(np.take_along_axis(dl, axis[:, None].astype(np.int64), 1)[:, 0])
    return t, axis, local, cos_inc


def _hit_cylinders(prims, pid, d):
    cen = prims.center[pid]
    r, hh = prims.half[pid, 0], prims.half[pid, 2]
    ox, oy, oz = -cen[:, 0], -cen[:, 1], -cen[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2.0 * (ox * d[:, 0] + oy * d[:, 1])
    cc = ox**2 + oy**2 - r**2
    disc = b * b - 4.0 * a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2.0 * a)
        z_side = oz + t_side * d[:, 2]
        side_ok = (disc >= 0) & (a > 1e-12) & (t_side > 0) & (np.abs(z_side) <= hh)
        t_top = (hh - oz) / d[:, 2]
        tx, ty = ox + t_top * d[:, 0], oy + t_top * d[:, 1]
        top_ok = (d[:, 2] < 0) & (oz > hh) & (t_top > 0) & (tx**2 + ty**2 <= r**2)
    t = np.full(len(pid), np.inf)
    t = np.where(side_ok, t_side, t)
    use_top = top_ok & (t_top < t)
    t = np.where(use_top, t_top, t)
    axis = np.where(use_top, 2, 0).astype(np.int8)
    tt = np.where(np.isfinite(t), t, 0.0)
    local = np.stack([ox + tt * d[:, 0], oy + tt * d[:, 1], oz + tt * d[:, 2]], axis=1)
    radial = np.abs(local[:, 0] * d[:, 0] + local[:, 1] * d[:, 1]) / np.maximum(r, 1e-9)
    cos_inc = np.where(use_top, np.abs(d[:, 2]), np.clip(radial, 0.0, 1.0))
    return t, axis, local, cos_inc


def _hit_volumes(prims, pid, d, rng):
    cen = prims.center[pid]
    rad = prims.half[pid]
    o = -cen / rad
    ds = d / rad
    a = (ds * ds).sum(1)
    b = 2.0 * (o * ds).sum(1)
    cc = (o * o).sum(1) - 1.0
    disc = b * b - 4.0 * a * cc
    sq = np.sqrt(np.maximum(disc, 0.0))
    t_in = np.maximum((-b - sq) / (2.0 * a), 0.0)
    t_out = (-b + sq) / (2.0 * a)
    depth = rng.exponential(1.0, len(pid)) / prims.density[pid]
    t_hit = t_in + depth
    hit = (disc > 0) & (t_out > t_in) & (t_hit < t_out)
    t = np.where(hit, t_hit, np.inf)
    local = -cen + np.where(hit, t_hit, 0.0)[:, None] * d
    cos_inc = rng.uniform(0.3, 1.0, len(pid))
    axis = np.full(len(pid), -1, np.int8)
    return t, axis, local, cos_inc


@dataclass
class CastResult:
    """Per ray: distance t (inf = no primitive hit), primitive index (-1), face axis, primitive-local hit
    point and |cos| of the incidence angle."""

    t: np.ndarray
    prim: np.ndarray
    axis: np.ndarray
    local: np.ndarray
    cos_inc: np.ndarray
    pairs: int


def cast_primitives(prims: Primitives, grid: RayGrid, dirs: np.ndarray, max_range: float,
                    rng: np.random.Generator) -> CastResult:
    """Nearest primitive hit of every ray of `grid` (`dirs` = grid.directions()); prims in sensor frame."""
    R = len(dirs)
    ray, pid = _candidate_pairs(prims, grid, max_range)
    t = np.full(len(ray), np.inf)
    axis = np.zeros(len(ray), np.int8)
    local = np.zeros((len(ray), 3))
    cos_inc = np.zeros(len(ray))
    kinds = prims.kind[pid]
    for kind, fn in ((BOX, _hit_boxes), (CYLINDER, _hit_cylinders), (VOLUME, _hit_volumes)):
        sel = np.flatnonzero(kinds == kind)
        if sel.size == 0:
            continue
        args = (prims, pid[sel], dirs[ray[sel]]) + ((rng,) if kind == VOLUME else ())
        t[sel], axis[sel], local[sel], cos_inc[sel] = fn(*args)
    best = np.full(R, np.inf)
    np.minimum.at(best, ray, t)
    win = np.flatnonzero(np.isfinite(t) & (t == best[ray]))
    rays_w, first = np.unique(ray[win], return_index=True)
    win = win[first]
    out_prim = np.full(R, -1, np.int64)
    out_axis = np.full(R, -1, np.int8)
    out_local = np.zeros((R, 3))
    out_cos = np.zeros(R)
    out_prim[rays_w] = pid[win]
    out_axis[rays_w] = axis[win]
    out_local[rays_w] = local[win]
    out_cos[rays_w] = cos_inc[win]
    return CastResult(best, out_prim, out_axis, out_local, out_cos, len(ray))
