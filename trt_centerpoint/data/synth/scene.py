"""Scene sampling for the synthetic LiDAR benchmark: ground, roads, static clutter and labelled objects.

Everything is expressed in the *world* frame, which is the current (latest-sweep) LiDAR frame: the sensor
sits at the origin, x points along the ego vehicle's heading, z up, and the ground under the sensor is at
z = -sensor_height. Objects move at constant velocity along their heading; `Layout.object_primitives(tau)`
gives their shapes `tau` seconds before the current sweep, and `Layout.ego_pose(tau)` the sensor pose then.

Objects are built from a few boxes each (a car is body + cabin + 4 wheels; a truck cab + cargo box +
chassis + wheels; a pedestrian legs + torso + head; a cyclist bike + rider) and are inset a few
centimetres inside their label box, so a label box encloses every point of its object up to range noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trt_centerpoint.data.synth.raycast import BOX, CYLINDER, VOLUME, Ground, Primitives, wrap_angle
from trt_centerpoint.errors import UserError

CLASSES = ("car", "truck", "pedestrian", "cyclist")

# Surface materials (intensity model in synth_sensor).
ROAD, SIDEWALK, TERRAIN, LANE_MARK = 0, 1, 2, 3
CAR_BODY, GLASS, TRUCK_BODY, TIRE, PERSON, BIKE = 4, 5, 6, 7, 8, 9
WALL, POLE, SIGN, VEGETATION, CLUTTER = 10, 11, 12, 13, 14

_INSET = 0.04  # solid parts stay this far inside the label box (horizontal faces and top)


@dataclass
class SceneConfig:
    """What a frame contains. Counts are (min, max) inclusive, drawn uniformly, before the visibility
    filter (labels need `min_points` LiDAR returns inside the box, summed over all sweeps, and a centre
    inside `point_cloud_range`)."""

    point_cloud_range: list[float] = field(default_factory=lambda: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    min_points: int = 5
    counts: dict[str, list[int]] = field(
        default_factory=lambda: {"car": [5, 25], "truck": [0, 4], "pedestrian": [0, 15], "cyclist": [0, 6]}
    )
    placement_radius: float = 58.0  # labelled objects are placed within this distance of the sensor
    clutter_radius: float = 58.0  # poles, trees, bushes, clutter within this distance (walls a bit beyond)
    max_vehicle_speed: float = 15.0  # m/s
    ego_max_speed: float = 12.0  # m/s
    cross_road_prob: float = 0.5

    def validate(self) -> None:
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise UserError(f"synthetic scenes: unsupported class(es) {unknown} (generator knows {list(CLASSES)})")
        if len(self.point_cloud_range) != 6:
            raise UserError(f"synthetic scenes: point_cloud_range needs 6 values, got {self.point_cloud_range}")
        for name, (lo, hi) in self.counts.items():
            if name not in CLASSES or not 0 <= lo <= hi:
                raise UserError(f"synthetic scenes: bad count range {name}: {[lo, hi]}")


@dataclass
class Road:
    origin: np.ndarray  # a point on the centre line (2,)
    angle: float  # direction of the centre line
    lanes: int  # lanes per direction
    lane_width: float
    parking: float  # parking strip width on each side (0 = none)
    sidewalk: float

    @property
    def u(self) -> np.ndarray:
        return np.array([np.cos(self.angle), np.sin(self.angle)])

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_width + self.parking

    def coords(self, x, y):
        """(along, lateral) of world points; lateral > 0 on the left of the direction `u`."""
        dx, dy = np.asarray(x) - self.origin[0], np.asarray(y) - self.origin[1]
        c, s = np.cos(self.angle), np.sin(self.angle)
        return c * dx + s * dy, c * dy - s * dx

    def point(self, along, lateral) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.origin + np.array([c * along - s * lateral, s * along + c * lateral])


@dataclass
class Objects:
    """N labelled objects at the current time. dims = (length along heading, width, height)."""

    cls: np.ndarray  # int index into CLASSES
    xy: np.ndarray  # (N, 2)
    heading: np.ndarray
    speed: np.ndarray
    dims: np.ndarray  # (N, 3)

    @property
    def velocity(self) -> np.ndarray:
        return self.speed[:, None] * np.stack([np.cos(self.heading), np.sin(self.heading)], axis=1)

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class Layout:
    ground: Ground
    roads: list[Road]
    static: Primitives  # world frame, time-invariant
    objects: Objects
    part_owner: np.ndarray  # (Q,) object index of each part
    part_center: np.ndarray  # (Q, 3) in the object frame (x along heading, z up from the box bottom)
    part_half: np.ndarray  # (Q, 3)
    part_material: np.ndarray
    part_refl: np.ndarray
    ego_speed: float
    ego_yaw_rate: float
    sensor_height: float
    surface_refl: dict[int, float]  # ground materials -> reflectivity of this frame

    def ego_pose(self, tau: float):
        """Sensor position (x, y, z) and yaw `tau` seconds before the current sweep (world frame)."""
        v, w = self.ego_speed, self.ego_yaw_rate
        if abs(w) < 1e-9:
            x, y = -v * tau, 0.0
        else:
            x, y = -(v / w) * np.sin(w * tau), (v / w) * (1.0 - np.cos(w * tau))
        z = float(self.ground.height(x, y)) + self.sensor_height
        return np.array([x, y, z]), -w * tau

    def object_xy(self, tau: float) -> np.ndarray:
        return self.objects.xy - self.objects.velocity * tau

    def object_primitives(self, tau: float) -> Primitives:
        """Object parts (all boxes) at time -tau in the world frame."""
        obj = self.objects
        xy = self.object_xy(tau)
        zb = self.ground.height(xy[:, 0], xy[:, 1])
        o = self.part_owner
        c, s = np.cos(obj.heading[o]), np.sin(obj.heading[o])
        lc = self.part_center
        center = np.stack(
            [xy[o, 0] + c * lc[:, 0] - s * lc[:, 1], xy[o, 1] + s * lc[:, 0] + c * lc[:, 1], zb[o] + lc[:, 2]],
            axis=1,
        )
        n = len(o)
        return Primitives(np.full(n, BOX, np.int8), center, self.part_half.copy(), obj.heading[o].copy(),
                          o.astype(np.int32), self.part_material.astype(np.int16), self.part_refl.copy(),
                          np.zeros(n))

    def label_boxes(self) -> np.ndarray:
        """(N, 9) boxes [x, y, z, w, l, h, yaw, vx, vy] at the current time (see synth docstring)."""
        obj = self.objects
        zb = self.ground.height(obj.xy[:, 0], obj.xy[:, 1])
        L, W, H = obj.dims[:, 0], obj.dims[:, 1], obj.dims[:, 2]
        v = obj.velocity
        yaw = wrap_angle(obj.heading - np.pi / 2)
        return np.stack([obj.xy[:, 0], obj.xy[:, 1], zb + H / 2, W, L, H, yaw, v[:, 0], v[:, 1]], axis=1)

    def ground_material(self, x, y) -> np.ndarray:
        """ROAD / LANE_MARK / SIDEWALK / TERRAIN for world points."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        coords = [r.coords(x, y) for r in self.roads]
        on = [np.abs(lat) < r.half_width for r, (_, lat) in zip(self.roads, coords)]
        near = [np.abs(lat) < r.half_width + r.sidewalk for r, (_, lat) in zip(self.roads, coords)]
        on_any = np.logical_or.reduce(on)
        mat = np.where(np.logical_or.reduce(near), SIDEWALK, TERRAIN)
        mat = np.where(on_any, ROAD, mat)
        for i, (r, (along, lat)) in enumerate(zip(self.roads, coords)):
            j = np.round(lat / r.lane_width)
            dist = np.abs(lat - j * r.lane_width)
            dashed = np.mod(along, 9.0) < 3.0
            line = (dist < 0.075) & (np.abs(j) <= r.lanes) & ((j == 0) | (np.abs(j) == r.lanes) | dashed)
            others = np.ones_like(line)
            for k, o in enumerate(on):
                if k != i:
                    others &= ~o
            mat = np.where(on[i] & line & others, LANE_MARK, mat)
        return mat


# ----------------------------------------------------------------------------------------------------
# Sampling


def _sample_ground(rng, sensor_height: float) -> Ground:
    slope_dir = rng.uniform(-np.pi, np.pi)
    slope = rng.uniform(0.0, 0.02)
    k = 3
    wavelength = rng.uniform(15.0, 80.0, k)
    direction = rng.uniform(-np.pi, np.pi, k)
    kk = 2 * np.pi / wavelength
    return Ground(
        base=-sensor_height,
        slope=(slope * np.cos(slope_dir), slope * np.sin(slope_dir)),
        amp=rng.uniform(0.02, 0.12, k) * np.minimum(1.0, wavelength / 30.0),
        kx=kk * np.cos(direction),
        ky=kk * np.sin(direction),
        phase=rng.uniform(-np.pi, np.pi, k),
    )


class _Footprints:
    """Occupied BEV rectangles; new ones are accepted only when they overlap none (separating axes)."""

    def __init__(self):
        self.c: list[np.ndarray] = []
        self.h: list[tuple[float, float]] = []
        self.a: list[float] = []

    def add(self, c, h, a) -> None:
        self.c.append(np.asarray(c, np.float64))
        self.h.append((float(h[0]), float(h[1])))
        self.a.append(float(a))

    def free(self, c, h, a) -> bool:
        if not self.c:
            return True
        C, H, A = np.array(self.c), np.array(self.h), np.array(self.a)
        u0 = np.array([np.cos(a), np.sin(a)])
        u1 = np.array([-np.sin(a), np.cos(a)])
        U0 = np.stack([np.cos(A), np.sin(A)], 1)
        U1 = np.stack([-np.sin(A), np.cos(A)], 1)
        d = C - np.asarray(c)
        separated = np.zeros(len(C), bool)
        for n in (np.broadcast_to(u0, C.shape), np.broadcast_to(u1, C.shape), U0, U1):
            own = h[0] * np.abs(n @ u0) + h[1] * np.abs(n @ u1)
            other = H[:, 0] * np.abs((n * U0).sum(1)) + H[:, 1] * np.abs((n * U1).sum(1))
            separated |= np.abs((d * n).sum(1)) > own + other
        return bool(separated.all())

    def try_add(self, c, h, a) -> bool:
        if self.free(c, h, a):
            self.add(c, h, a)
            return True
        return False


def _sample_roads(rng) -> list[Road]:
    lanes = int(rng.integers(1, 3))
    lane_w = rng.uniform(3.2, 3.7)
    angle = rng.normal(0.0, 0.02)
    k = int(rng.integers(0, lanes))
    main = Road(np.zeros(2), angle, lanes, lane_w, float(rng.choice([0.0, 2.3])), rng.uniform(2.0, 4.5))
    # Put the ego vehicle (origin) in lane k of the right-hand side: lateral = -(k + 0.5) * lane width.
    lat = -(k + 0.5) * lane_w
    main.origin = -lat * np.array([-np.sin(angle), np.cos(angle)])
    return [main]


def _road_clear(roads: list[Road], xy: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """True where points are off every road's carriageway and sidewalk (plus margin)."""
    ok = np.ones(len(xy), bool)
    for r in roads:
        _, lat = r.coords(xy[:, 0], xy[:, 1])
        ok &= np.abs(lat) >= r.half_width + r.sidewalk + margin
    return ok


def _on_no_road(roads: list[Road], xy: np.ndarray) -> np.ndarray:
    ok = np.ones(len(xy), bool)
    for r in roads:
        _, lat = r.coords(xy[:, 0], xy[:, 1])
        ok &= np.abs(lat) >= r.half_width
    return ok


def _segment_points(p0, p1, step=1.0):
    n = max(2, int(np.linalg.norm(p1 - p0) / step) + 1)
    f = np.linspace(0, 1, n)[:, None]
    return p0 + f * (p1 - p0)


def _sample_static(rng, roads: list[Road], ground: Ground, fp: _Footprints, fp_tall: _Footprints,
                   radius: float) -> Primitives:
    """Walls, poles, signs, trees, bushes and clutter. Their footprints go to `fp`; overhanging parts
    at least 2.2 m above the ground (tree crowns, signs) go to `fp_tall`, which only trucks must avoid."""
    rows: list[tuple] = []

    def gz(x, y):
        return float(ground.height(x, y))

    for ri, road in enumerate(roads):
        others = [r for k, r in enumerate(roads) if k != ri]
        edge = road.half_width + road.sidewalk
        for side in (-1.0, 1.0):
            # Building facades: wall segments behind the sidewalk, with gaps.
            setback = edge + rng.uniform(0.5, 8.0)
            s = -radius - 15.0 + rng.uniform(0, 10)
            while s < radius + 15.0:
                length = rng.uniform(6.0, 30.0)
                lat = side * (setback + rng.uniform(0.0, 3.0))
                p0, p1 = road.point(s, lat), road.point(s + length, lat)
                mid = 0.5 * (p0 + p1)
                pts = _segment_points(p0, p1)
                if (np.linalg.norm(mid) < radius + 20.0 and (not others or _road_clear(others, pts, 1.0).all())
                        and rng.random() < 0.85):
                    height = rng.uniform(3.0, 12.0)
                    fp.add(mid, (length / 2, 0.3), road.angle)
                    # sunk 0.8 m so the undulating ground never shows a gap under it
                    rows.append((BOX, (mid[0], mid[1], gz(*mid) + (height - 0.8) / 2),
                                 (length / 2, 0.15, (height + 0.8) / 2), road.angle, -1, WALL, rng.uniform(15, 70),
                                 0.0))
                s += length + rng.uniform(2.0, 15.0)
            # Poles (street lights, signs) at the kerb.
            s = -radius + rng.uniform(0, 15)
            while s < radius:
                p = road.point(s, side * (road.half_width + 0.5))
                if np.linalg.norm(p) < radius and (not others or _road_clear(others, p[None], 0.3).all()):
                    r, h = rng.uniform(0.06, 0.15), rng.uniform(3.0, 8.0)
                    if fp.try_add(p, (r + 0.05, r + 0.05), 0.0):
                        z0 = gz(*p)
                        rows.append((CYLINDER, (p[0], p[1], z0 + h / 2 - 0.1), (r, r, h / 2 + 0.1), 0.0, -1, POLE,
                                     rng.uniform(30, 90), 0.0))
                        if rng.random() < 0.35:
                            q = p - side * 0.35 * np.array([-np.sin(road.angle), np.cos(road.angle)])
                            rows.append((BOX, (q[0], q[1], z0 + h - 0.4), (0.03, 0.35, 0.3), road.angle, -1, SIGN,
                                         rng.uniform(150, 250), 0.0))
                            fp_tall.add(q, (0.1, 0.4), road.angle)
                s += rng.uniform(10.0, 25.0)
            # Street trees on the sidewalk.
            if rng.random() < 0.6:
                s = -radius + rng.uniform(0, 10)
                while s < radius:
                    p = road.point(s, side * (road.half_width + road.sidewalk - 0.8))
                    if np.linalg.norm(p) < radius and (not others or _road_clear(others, p[None], 0.5).all()):
                        r, h = rng.uniform(0.12, 0.3), rng.uniform(2.2, 3.5)
                        if fp.try_add(p, (r + 0.05, r + 0.05), 0.0):
                            z0 = gz(*p)
                            rows.append((CYLINDER, (p[0], p[1], z0 + h / 2 - 0.1), (r, r, h / 2 + 0.1), 0.0, -1,
                                         VEGETATION, rng.uniform(10, 35), 0.0))
                            rxy, rz = rng.uniform(1.2, 2.8), rng.uniform(1.0, 2.5)
                            rows.append((VOLUME, (p[0], p[1], z0 + h + rz), (rxy, rxy, rz), 0.0, -1,
                                         VEGETATION, rng.uniform(5, 30), rng.uniform(0.6, 2.0)))
                            fp_tall.add(p, (rxy, rxy), 0.0)
                    s += rng.uniform(8.0, 20.0)
    # Bushes and clutter (bins, boxes, kiosks) away from the carriageway.
    for kind in ("bush", "clutter"):
        n = int(rng.integers(5, 21)) if kind == "bush" else int(rng.integers(0, 11))
        for _ in range(n):
            for _attempt in range(10):
                p = rng.uniform(-radius, radius, 2)
                if kind == "bush" and not _road_clear(roads, p[None], 0.0).all():
                    continue
                if kind == "clutter" and not _on_no_road(roads, p[None]).all():
                    continue
                if kind == "bush":
                    r, rz = rng.uniform(0.4, 1.5), rng.uniform(0.3, 1.0)
                    if fp.try_add(p, (r, r), 0.0):
                        rows.append((VOLUME, (p[0], p[1], gz(*p) + 0.4 * rz), (r, r, rz), 0.0, -1, VEGETATION,
                                     rng.uniform(5, 30), rng.uniform(2.0, 5.0)))
                        break
                else:
                    hx, hy, hz = rng.uniform(0.2, 1.0), rng.uniform(0.2, 0.6), rng.uniform(0.25, 0.75)
                    a = rng.uniform(-np.pi, np.pi)
                    if fp.try_add(p, (hx + 0.1, hy + 0.1), a):
                        rows.append((BOX, (p[0], p[1], gz(*p) + hz - 0.05), (hx, hy, hz + 0.05), a, -1, CLUTTER,
                                     rng.uniform(10, 60), 0.0))
                        break
    return Primitives.from_rows(rows)


def _sample_dims(rng, name: str) -> np.ndarray:
    """(length, width, height) in metres."""
    if name == "car":
        return np.array([np.clip(rng.normal(4.6, 0.35), 3.6, 5.6), np.clip(rng.normal(1.92, 0.12), 1.6, 2.2),
                         np.clip(rng.normal(1.65, 0.18), 1.35, 2.1)])
    if name == "truck":
        return np.array([rng.uniform(6.5, 10.5), np.clip(rng.normal(2.5, 0.12), 2.2, 2.8),
                         np.clip(rng.normal(3.1, 0.3), 2.5, 3.8)])
    if name == "pedestrian":
        return np.array([np.clip(rng.normal(0.72, 0.1), 0.5, 1.0), np.clip(rng.normal(0.67, 0.08), 0.5, 0.9),
                         np.clip(rng.normal(1.75, 0.1), 1.45, 2.0)])
    return np.array([np.clip(rng.normal(1.8, 0.12), 1.5, 2.1), np.clip(rng.normal(0.65, 0.08), 0.5, 0.85),
                     np.clip(rng.normal(1.7, 0.1), 1.45, 1.95)])


def _parts(rng, name: str, dims: np.ndarray, moving: bool) -> list[tuple]:
    """Boxes (x0, x1, y0, y1, z0, z1, material, refl) in the object frame (x forward, y left, z up from the
    bottom of the label box), all within the label box shrunk by _INSET."""
    L, W, H = dims
    m = _INSET
    xl, yl, zt = L / 2 - m, W / 2 - m, H - m
    out = []
    if name == "car":
        paint = rng.uniform(10, 60)
        rw = min(0.33, 0.3 * H)
        out.append((-xl, xl, -yl + 0.04, yl - 0.04, 0.3, 0.58 * H, CAR_BODY, paint))
        front = rng.uniform(0.15, 0.3) * L
        out.append((-xl + 0.12 * L, L / 2 - front, -yl + 0.15, yl - 0.15, 0.58 * H, zt, GLASS, rng.uniform(4, 12)))
        for sx in (-1, 1):
            for sy in (-1, 1):
                xc = sx * (L / 2 - 0.2 * L)
                y0, y1 = (yl - 0.3, yl) if sy > 0 else (-yl, -yl + 0.3)
                out.append((xc - rw, xc + rw, y0, y1, 0.0, 2 * rw, TIRE, rng.uniform(3, 10)))
    elif name == "truck":
        paint = rng.uniform(15, 80)
        cab = rng.uniform(1.9, 2.4)
        rw = 0.5
        out.append((xl - cab, xl, -yl, yl, 0.55, 0.8 * H, TRUCK_BODY, paint))
        out.append((xl - cab + 0.6, xl - 0.05, -yl + 0.1, yl - 0.1, 0.8 * H, 0.88 * H, GLASS, rng.uniform(4, 12)))
        out.append((-xl, xl - cab - 0.15, -yl, yl, 1.05, zt, TRUCK_BODY, rng.uniform(15, 80)))
        out.append((-xl + 0.4, xl - cab, -0.6, 0.6, 0.5, 1.05, TRUCK_BODY, rng.uniform(5, 20)))
        for xc in (xl - cab / 2, -xl + 1.2, -xl + 2.4):
            for sy in (-1, 1):
                y0, y1 = (yl - 0.35, yl) if sy > 0 else (-yl, -yl + 0.35)
                out.append((xc - rw, xc + rw, y0, y1, 0.0, 2 * rw, TIRE, rng.uniform(3, 10)))
    elif name == "pedestrian":
        cloth = rng.uniform(8, 40)
        stride = 0.85 if moving else 0.5
        out.append((-stride * xl, stride * xl, -0.6 * yl, 0.6 * yl, 0.0, 0.48 * H, PERSON, cloth))
        out.append((-0.55 * xl, 0.55 * xl, -yl, yl, 0.48 * H, 0.82 * H, PERSON, cloth * rng.uniform(0.7, 1.3)))
        out.append((-0.11, 0.11, -0.1, 0.1, 0.82 * H, zt, PERSON, rng.uniform(10, 30)))
    else:  # cyclist
        bike = rng.uniform(20, 80)
        wr = 0.34
        out.append((xl - 2 * wr, xl, -0.04, 0.04, 0.0, 2 * wr, BIKE, bike))
        out.append((-xl, -xl + 2 * wr, -0.04, 0.04, 0.0, 2 * wr, BIKE, bike))
        out.append((-xl + wr, xl - wr, -0.05, 0.05, wr, 2 * wr + 0.25, BIKE, bike))
        out.append((xl - wr - 0.15, xl - wr + 0.05, -yl, yl, 2 * wr + 0.3, 2 * wr + 0.38, BIKE, bike))
        cloth = rng.uniform(8, 40)
        hip = 2 * wr + 0.3
        out.append((-0.25, 0.2, -0.17, 0.17, hip - 0.45, hip + 0.05, PERSON, cloth))
        out.append((-0.3, 0.15, -min(0.22, yl), min(0.22, yl), hip + 0.05, zt - 0.24, PERSON, cloth))
        out.append((-0.15, 0.05, -0.1, 0.1, zt - 0.24, zt, PERSON, rng.uniform(10, 30)))
    return out


def _sample_object_pose(rng, name: str, dims, roads: list[Road], scene: SceneConfig):
    """(xy, heading, speed) for a new object, or None when the drawn spot is unusable."""
    L, W, _ = dims
    road = roads[0] if len(roads) == 1 or rng.random() < 0.7 else roads[int(rng.integers(1, len(roads)))]
    R = scene.placement_radius
    along = rng.uniform(-R, R)
    if name in ("car", "truck"):
        mode = rng.choice(["lane", "parked", "lot"], p=[0.6, 0.3, 0.1] if name == "car" else [0.7, 0.3, 0.0])
        if mode == "lot":
            xy = rng.uniform(-R, R, 2)
            if not _road_clear(roads, xy[None], 0.5).all():
                return None
            return xy, rng.uniform(-np.pi, np.pi), 0.0
        side = rng.choice([-1.0, 1.0])
        if mode == "lane":
            lane = int(rng.integers(0, road.lanes))
            lat = side * (lane + 0.5) * road.lane_width + rng.normal(0.0, 0.25)
            top = scene.max_vehicle_speed if name == "car" else min(12.0, scene.max_vehicle_speed)
            speed = rng.uniform(2.0, top) if rng.random() < 0.65 else 0.0
        else:
            lat = side * (road.half_width - W / 2 - rng.uniform(0.15, 0.4))
            speed = 0.0
        heading = road.angle + (0.0 if lat < 0 else np.pi) + rng.normal(0.0, 0.04)
        if mode == "parked" and rng.random() < 0.2:
            heading += np.pi
        return road.point(along, lat), float(wrap_angle(heading)), speed
    if name == "pedestrian":
        u = rng.random()
        if u < 0.75:
            side = rng.choice([-1.0, 1.0])
            lat = side * rng.uniform(road.half_width + 0.4, road.half_width + road.sidewalk - 0.3)
            xy = road.point(along, lat)
            heading = rng.uniform(-np.pi, np.pi)
        elif u < 0.9:  # crossing the road
            lat = rng.uniform(-road.half_width, road.half_width)
            xy = road.point(along, lat)
            heading = road.angle + rng.choice([-1.0, 1.0]) * np.pi / 2 + rng.normal(0, 0.2)
        else:
            xy = rng.uniform(-R, R, 2)
            heading = rng.uniform(-np.pi, np.pi)
        speed = rng.uniform(0.8, 1.8) if rng.random() < 0.6 else 0.0
        return xy, float(wrap_angle(heading)), speed
    # cyclist: at the right edge of the carriageway, riding with the traffic.
    side = rng.choice([-1.0, 1.0])
    lat = side * (road.lanes * road.lane_width - rng.uniform(0.6, 1.2))
    heading = road.angle + (0.0 if lat < 0 else np.pi) + rng.normal(0.0, 0.06)
    speed = rng.uniform(2.5, 7.0) if rng.random() < 0.8 else 0.0
    return road.point(along, lat), float(wrap_angle(heading)), speed


def sample_layout(rng: np.random.Generator, scene: SceneConfig, sensor_height: float, window: float) -> Layout:
    """A random scene. `window` = time span of the sweeps (objects must not collide within it)."""
    ground = _sample_ground(rng, sensor_height)
    roads = _sample_roads(rng)
    if rng.random() < scene.cross_road_prob:
        main = roads[0]
        s_c = rng.uniform(-40.0, 40.0)
        angle = main.angle + rng.choice([-1.0, 1.0]) * rng.uniform(np.radians(70), np.radians(110))
        roads.append(Road(main.point(s_c, 0.0), float(wrap_angle(angle)), int(rng.integers(1, 3)),
                          rng.uniform(3.2, 3.7), float(rng.choice([0.0, 2.3])), rng.uniform(2.0, 4.5)))
    fp = _Footprints()
    ego_speed = rng.uniform(0.0, scene.ego_max_speed) if rng.random() < 0.7 else 0.0
    ego_yaw_rate = float(np.clip(rng.normal(0.0, 0.05), -0.15, 0.15))
    # The ego vehicle, swept back over the sweep window.
    back = ego_speed * window
    fp.add((-back / 2, 0.0), (2.4 + back / 2 + 0.3, 1.0 + 0.3), 0.0)
    fp_tall = _Footprints()
    static = _sample_static(rng, roads, ground, fp, fp_tall, scene.clutter_radius)

    cls, xy, heading, speed, dims = [], [], [], [], []
    parts_rows: list[tuple] = []
    order = [name for name in CLASSES if name in scene.classes]
    for name in order:
        lo, hi = scene.counts.get(name, [0, 0])
        for _ in range(int(rng.integers(lo, hi + 1))):
            d = _sample_dims(rng, name)
            for _attempt in range(20):
                pose = _sample_object_pose(rng, name, d, roads, scene)
                if pose is None:
                    continue
                p, h, v = pose
                if np.linalg.norm(p) > scene.placement_radius:
                    continue
                margin = 0.15 if name in ("pedestrian", "cyclist") else 0.3
                sweep = v * window
                u = np.array([np.cos(h), np.sin(h)])
                c = p - u * sweep / 2
                half = (d[0] / 2 + sweep / 2 + margin, d[1] / 2 + margin)
                if name == "truck" and not fp_tall.free(c, half, h):
                    continue
                if fp.try_add(c, half, h):
                    idx = len(cls)
                    cls.append(CLASSES.index(name))
                    xy.append(p)
                    heading.append(h)
                    speed.append(v)
                    dims.append(d)
                    for x0, x1, y0, y1, z0, z1, mat, refl in _parts(rng, name, d, v > 0):
                        parts_rows.append((idx, ((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2),
                                           ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2), mat, refl))
                    break
    objects = Objects(np.asarray(cls, np.int64), np.asarray(xy, np.float64).reshape(-1, 2),
                      np.asarray(heading, np.float64), np.asarray(speed, np.float64),
                      np.asarray(dims, np.float64).reshape(-1, 3))
    if parts_rows:
        owner, pc, ph, pm, pr = zip(*parts_rows)
    else:
        owner, pc, ph, pm, pr = (), (), (), (), ()
    surface = {ROAD: rng.uniform(4, 12), SIDEWALK: rng.uniform(18, 35), TERRAIN: rng.uniform(8, 25),
               LANE_MARK: rng.uniform(50, 110)}
    return Layout(
        ground=ground, roads=roads, static=static, objects=objects,
        part_owner=np.asarray(owner, np.int64), part_center=np.asarray(pc, np.float64).reshape(-1, 3),
        part_half=np.asarray(ph, np.float64).reshape(-1, 3), part_material=np.asarray(pm, np.int16),
        part_refl=np.asarray(pr, np.float64), ego_speed=float(ego_speed), ego_yaw_rate=ego_yaw_rate,
        sensor_height=sensor_height, surface_refl=surface,
    )
