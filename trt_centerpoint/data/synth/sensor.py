"""The simulated spinning LiDAR: beam layout, one sweep's ray cast, noise, dropout and intensity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trt_centerpoint.data.synth import scene as sc
from trt_centerpoint.data.synth.raycast import Primitives, RayGrid, cast_primitives, intersect_ground
from trt_centerpoint.errors import UserError


@dataclass
class SensorConfig:
    """A 32-beam spinning LiDAR (HDL-32E-like) on the ego roof.

    Beam elevations are evenly spaced over [fov_down_deg, fov_up_deg]. Each sweep fires `360 /
    azimuth_resolution_deg` columns starting at a random azimuth phase. A return is dropped at random
    with probability `dropout`, and when closer than `min_range` (the ego body) or beyond `max_range`.
    Range noise is Gaussian along the ray. Sweeps come every 1 / `rate_hz` seconds; a frame stacks the
    latest `num_sweeps` of them (time lags 0, 1/rate_hz, ...).
    """

    beams: int = 32
    fov_up_deg: float = 10.0
    fov_down_deg: float = -30.0
    azimuth_resolution_deg: float = 1.0 / 3.0
    max_range: float = 70.0
    min_range: float = 1.0
    range_noise: float = 0.02  # metres, 1 sigma
    dropout: float = 0.05
    height: float = 1.8  # sensor above the ground under the ego vehicle
    rate_hz: float = 20.0
    num_sweeps: int = 3

    def validate(self) -> None:
        if self.beams < 1 or self.num_sweeps < 1 or self.rate_hz <= 0:
            raise UserError(f"synthetic sensor: beams, num_sweeps and rate_hz must be positive: {self}")
        if not self.fov_down_deg < self.fov_up_deg or not 0 < self.azimuth_resolution_deg <= 10:
            raise UserError(f"synthetic sensor: bad field of view or azimuth resolution: {self}")
        if not 0 <= self.dropout < 1 or self.range_noise < 0 or not 0 <= self.min_range < self.max_range:
            raise UserError(f"synthetic sensor: bad dropout / noise / range limits: {self}")
        if self.height <= 0.5:
            raise UserError(f"synthetic sensor: height must be above 0.5 m, got {self.height}")

    @property
    def elevations(self) -> np.ndarray:
        """Beam elevations in radians, ascending."""
        if self.beams == 1:
            return np.radians(np.array([0.5 * (self.fov_up_deg + self.fov_down_deg)]))
        return np.radians(np.linspace(self.fov_down_deg, self.fov_up_deg, self.beams))

    @property
    def n_azimuth(self) -> int:
        return int(round(360.0 / self.azimuth_resolution_deg))

    @property
    def sweep_lags(self) -> np.ndarray:
        """Time lag of each sweep in seconds (float32, as stored in the points), latest first."""
        return (np.arange(self.num_sweeps) / self.rate_hz).astype(np.float32)


@dataclass
class Sweep:
    """One sweep's returns, in the world (= current LiDAR) frame."""

    xyz: np.ndarray  # (n, 3) float64
    intensity: np.ndarray  # (n,) 0..255
    owner: np.ndarray  # object index per point, -1 for ground / clutter
    material: np.ndarray
    origin: np.ndarray  # sensor position (world)
    yaw: float  # sensor yaw (world)
    pairs: int  # ray-primitive pairs tested (for profiling)


def _intensity(rng, material, refl, cos_inc, axis, local, half):
    """nuScenes-like intensity in 0..255 (integers stored as float): reflectivity x incidence x noise.

    Asphalt is dark (~4-12), sidewalks and lane markings brighter, car paint 10-60 with bright
    retro-reflective licence plates and lamps on the front/back faces, road signs 150-250.
    """
    base = refl.copy()
    retro = material == sc.SIGN
    car = material == sc.CAR_BODY
    if car.any():
        on_end = car & (axis == 0)  # front / back face of the body box
        plate = on_end & (np.abs(local[:, 1]) < 0.27) & (local[:, 2] < -half[:, 2] + 0.22)
        lamp = on_end & (np.abs(local[:, 1]) > half[:, 1] - 0.3) & (local[:, 2] > half[:, 2] - 0.2)
        base = np.where(plate, rng.uniform(160, 255, len(base)), base)
        base = np.where(lamp, rng.uniform(90, 200, len(base)), base)
        retro = retro | plate | lamp
    shade = np.where(retro, 0.85 + 0.15 * cos_inc, 0.3 + 0.7 * cos_inc)
    value = base * shade * rng.lognormal(0.0, 0.15, len(base))
    return np.clip(np.round(value), 0, 255)


def cast_sweep(layout: "sc.Layout", sensor: SensorConfig, tau: float, rng: np.random.Generator) -> Sweep:
    """Cast one full revolution taken `tau` seconds before the current sweep."""
    origin, yaw = layout.ego_pose(tau)
    prims = Primitives.concat([layout.static, layout.object_primitives(tau)])
    local_prims = prims.to_frame(origin, yaw)
    grid = RayGrid(sensor.elevations, float(rng.uniform(0.0, np.radians(sensor.azimuth_resolution_deg))),
                   sensor.n_azimuth)
    dirs = grid.directions()
    hit = cast_primitives(local_prims, grid, dirs, sensor.max_range, rng)
    c, s = np.cos(yaw), np.sin(yaw)
    dirs_w = np.stack([c * dirs[:, 0] - s * dirs[:, 1], s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], axis=1)
    t_ground = intersect_ground(layout.ground, origin, dirs_w, np.minimum(hit.t, sensor.max_range))

    use_ground = t_ground < hit.t
    t = np.where(use_ground, t_ground, hit.t)
    keep = np.isfinite(t) & (t >= sensor.min_range) & (t <= sensor.max_range)
    keep &= rng.random(len(t)) >= sensor.dropout
    idx = np.flatnonzero(keep)
    t = t[idx] + rng.normal(0.0, sensor.range_noise, idx.size)
    xyz = origin + dirs_w[idx] * t[:, None]
    g = use_ground[idx]
    gi, oi = np.flatnonzero(g), np.flatnonzero(~g)
    prim = hit.prim[idx[oi]]

    material = np.zeros(idx.size, np.int16)
    refl = np.zeros(idx.size)
    cos_inc = np.zeros(idx.size)
    axis = np.full(idx.size, -1, np.int8)
    half = np.ones((idx.size, 3))
    local = np.zeros((idx.size, 3))
    owner = np.full(idx.size, -1, np.int64)
    material[oi] = local_prims.material[prim]
    refl[oi] = local_prims.refl[prim]
    cos_inc[oi] = hit.cos_inc[idx[oi]]
    axis[oi] = hit.axis[idx[oi]]
    half[oi] = local_prims.half[prim]
    local[oi] = hit.local[idx[oi]]
    owner[oi] = local_prims.owner[prim]
    gm = layout.ground_material(xyz[gi, 0], xyz[gi, 1])
    table = np.zeros(max(layout.surface_refl) + 1)
    for key, value in layout.surface_refl.items():
        table[key] = value
    material[gi] = gm
    refl[gi] = table[gm]
    n = layout.ground.normal(xyz[gi, 0], xyz[gi, 1])
    cos_inc[gi] = np.abs((n * dirs_w[idx[gi]]).sum(1))
    intensity = _intensity(rng, material, refl, cos_inc, axis, local, half)
    return Sweep(xyz, intensity, owner, material, origin, float(yaw), hit.pairs)
