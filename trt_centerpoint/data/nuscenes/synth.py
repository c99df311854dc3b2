"""A synthetic nuScenes dataroot: the generator's scenes (`data.synth`) written in the devkit's format.

`trt-centerpoint synth --format nuscenes` makes a folder the nuScenes devkit loads like the real thing, so the
whole nuScenes path (on-the-fly reading, `convert nuscenes`, the devkit's evaluation) runs without the real
data set. Per scene (`scene_plan`, deterministic per (seed, scene index)):

- one street layout of the generator, lived through over time: the ego drives (constant speed and yaw rate),
  objects move at constant velocity along their heading;
- 20 Hz LIDAR_TOP sweeps (`prev` / `next` chain), each cast from the sensor pose at its own time and stored in
  its own sensor frame as `*.pcd.bin` float32 x 5 (x, y, z, intensity 0..255, ring index 0..31 = the beam,
  lowest first), like real nuScenes; key frames (samples) at 2 Hz, with a lead-in of 9 sweeps before the
  first one so that every sample stacks 10 sweeps (`lead_in` fewer: a scene's first samples have a short
  history, as at the start of a real scene); `ego_returns` > 0 adds that many returns of the ego vehicle's
  roof to every sweep, within 1 m of the sensor (what a close-range cut removes);
- frames: the LiDAR frame is nuScenes' (x right, y forward, z up); the ego frame has x forward, the sensor
  0.943 m ahead of its origin and `sensor.height` above the ground; the global frame is the generator's world
  frame (the last sweep's sensor frame) turned and shifted per scene, so no pose is the identity;
- annotations (global frame) of every object whose centre lies in the scene's `point_cloud_range` around the
  sensor at a sample: size [w, l, h], rotation about z by the heading, `num_lidar_pts` = returns of that
  sample's key-frame sweep inside the box, `num_radar_pts` 0, visibility not simulated ("4"), one attribute;
  each object is one instance whose annotations form a `prev` / `next` chain (the devkit's `box_velocity`);
- classes: car -> vehicle.car, truck -> vehicle.truck, pedestrian -> human.pedestrian.adult, cyclist ->
  vehicle.bicycle (attribute cycle.with_rider); vehicles are vehicle.moving / vehicle.parked and pedestrians
  pedestrian.moving / pedestrian.standing by their speed;
- scene names are real ones of the devkit's split lists (the version's validation split first, then its
  training split), so the devkit's splits and evaluation work unchanged; one blank map PNG (for every log)
  satisfies the devkit's loader.

Tokens are hashes of (seed, what, index), so a seed always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trt_centerpoint._compat.nuscenes import devkit
from trt_centerpoint.data.nuscenes.reader import CHANNEL
from trt_centerpoint.data.nuscenes.selection import SPLITS
from trt_centerpoint.data.synth.dataset import GENERATOR_VERSION, points_in_boxes
from trt_centerpoint.data.synth.scene import CLASSES, Layout, SceneConfig, sample_layout
from trt_centerpoint.data.synth.sensor import SensorConfig, cast_sweep
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_dir, check_replaceable_dir

__all__ = ["CATEGORIES", "DEFAULT_SAMPLES_PER_SCENE", "DEFAULT_SCENES", "LIDAR_TO_EGO", "ScenePlan",
           "scene_names", "scene_plan", "write_nuscenes"]

DEFAULT_SCENES = 2
DEFAULT_SAMPLES_PER_SCENE = 3
SWEEPS_PER_SAMPLE = 10  # 20 Hz sweeps, 2 Hz samples
LIDAR_TO_EGO = (0.943, 0.0)  # sensor position in the ego frame (x forward, y left); z is the sensor height
LIDAR_YAW_IN_EGO = -np.pi / 2  # the LiDAR's x axis points to the ego's right, as in nuScenes
CATEGORIES = {"car": "vehicle.car", "truck": "vehicle.truck", "pedestrian": "human.pedestrian.adult",
              "cyclist": "vehicle.bicycle"}
ATTRIBUTES = ("vehicle.moving", "vehicle.parked", "pedestrian.moving", "pedestrian.standing", "cycle.with_rider")
VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
FIRST_TIMESTAMP = 1_533_151_600_000_000  # microseconds, as nuScenes; scenes start 100 s apart
MIN_EGO_SPEED = 1.0  # m/s: layouts with a slower ego are redrawn (the ego drives)
_VALIDATION_FIRST = {"v1.0-mini": ("mini_val", "mini_train"), "v1.0-trainval": ("val", "train"),
                     "v1.0-test": ("test",)}


def scene_names(version: str) -> list[str]:
    """Scene names the devkit's split lists give `version`, validation split first."""
    if version not in SPLITS:
        raise UserError(f"unknown nuScenes version {version!r} (known: {', '.join(SPLITS)})")
    splits = devkit("nuscenes.utils.splits").create_splits_scenes()
    return [name for split in _VALIDATION_FIRST[version] for name in splits[split]]


def _token(*parts) -> str:
    """A 32-hex-digit token (the length of nuScenes' own), fixed by `parts`."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _quaternion(yaw: float) -> list[float]:
    """[w, x, y, z] of a rotation by `yaw` about z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _rotate(xy: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], axis=-1)


def _wrap(angle):
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


@dataclass
class ScenePlan:
    """One scene's layout and timeline. Sweep j happens `taus[j]` seconds before the last one (world frame =
    the last sweep's sensor frame); samples are the sweeps `keys`; global = world turned by `global_yaw` and
    shifted by `global_offset`."""

    layout: Layout
    sensor: SensorConfig
    scene: SceneConfig
    taus: np.ndarray  # seconds before the last sweep, per sweep
    timestamps: list[int]  # microseconds, per sweep
    keys: list[int]  # sweep index of each sample
    global_yaw: float
    global_offset: np.ndarray  # (3,)

    def world_boxes(self, tau: float) -> np.ndarray:
        """(N, 9) boxes [x, y, z, w, l, h, yaw, vx, vy] of every object `tau` seconds before the last sweep, in
        the world frame (`Layout.label_boxes` at any time)."""
        obj = self.layout.objects
        xy = self.layout.object_xy(tau)
        zb = self.layout.ground.height(xy[:, 0], xy[:, 1])
        length, width, height = obj.dims[:, 0], obj.dims[:, 1], obj.dims[:, 2]
        v = obj.velocity
        return np.stack([xy[:, 0], xy[:, 1], zb + height / 2, width, length, height, _wrap(obj.heading - np.pi / 2),
                         v[:, 0], v[:, 1]], axis=1).reshape(-1, 9)

    def to_global(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.asarray(xyz, np.float64)
        out = np.empty_like(xyz)
        out[..., :2] = _rotate(xyz[..., :2], self.global_yaw) + self.global_offset[:2]
        out[..., 2] = xyz[..., 2] + self.global_offset[2]
        return out

    def ego_pose(self, tau: float) -> tuple[list[float], list[float]]:
        """(translation, rotation [w, x, y, z]) of the ego frame in the global frame at `tau`."""
        origin, yaw = self.layout.ego_pose(tau)
        ego = origin - np.array([*_rotate(np.array(LIDAR_TO_EGO), yaw), self.sensor.height])
        return [float(v) for v in self.to_global(ego)], _quaternion(self.global_yaw + yaw)

    def in_range(self, boxes: np.ndarray, tau: float) -> np.ndarray:
        """Objects whose centre lies in the scene's point_cloud_range around the sensor at `tau`."""
        origin, yaw = self.layout.ego_pose(tau)
        local = _rotate(boxes[:, :2] - origin[:2], -yaw)
        z = boxes[:, 2] - origin[2]
        r = self.scene.point_cloud_range
        return ((local[:, 0] >= r[0]) & (local[:, 0] < r[3]) & (local[:, 1] >= r[1]) & (local[:, 1] < r[4])
                & (z >= r[2]) & (z < r[5]))


def scene_plan(seed: int, index: int, samples: int, sensor: SensorConfig | None = None,
               scene: SceneConfig | None = None, lead_in: int = SWEEPS_PER_SAMPLE - 1) -> ScenePlan:
    """The layout and timeline of scene `index` of generator `seed` with `samples` samples, `lead_in` sweeps
    before the first one (deterministic)."""
    sensor, scene = sensor or SensorConfig(), scene or SceneConfig()
    sensor.validate()
    scene.validate()
    count = lead_in + 1 + SWEEPS_PER_SAMPLE * (samples - 1)  # the lead-in, then SWEEPS_PER_SAMPLE per sample
    step_us = int(round(1e6 / sensor.rate_hz))
    taus = (count - 1 - np.arange(count)) * step_us * 1e-6
    for attempt in range(100):
        rng = np.random.default_rng([int(seed), int(index), attempt])
        layout = sample_layout(rng, scene, sensor.height, float(taus[0]))
        if layout.ego_speed >= MIN_EGO_SPEED:
            break
    start = FIRST_TIMESTAMP + index * 100_000_000
    return ScenePlan(layout, sensor, scene, taus, [start + j * step_us for j in range(count)],
                     [lead_in + SWEEPS_PER_SAMPLE * k for k in range(samples)],
                     float(rng.uniform(-np.pi, np.pi)), np.array([*rng.uniform(300.0, 2000.0, 2), 0.0]))


def _sweep_points(plan: ScenePlan, j: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, 5] points of sweep j in its own LiDAR frame, the same points' world xyz)."""
    tau = float(plan.taus[j])
    sweep = cast_sweep(plan.layout, plan.sensor, tau, rng)
    origin, yaw = plan.layout.ego_pose(tau)
    d = sweep.xyz - origin
    sensor_xy = _rotate(d[:, :2], -yaw)  # x forward, y left
    lidar_xy = _rotate(sensor_xy, -LIDAR_YAW_IN_EGO)  # x right, y forward
    elevation = np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))  # range noise runs along the ray: exact beam
    ring = np.abs(elevation[:, None] - plan.sensor.elevations[None, :]).argmin(axis=1)
    points = np.empty((len(d), 5), np.float32)
    points[:, :2] = lidar_xy
    points[:, 2] = d[:, 2]
    points[:, 3] = sweep.intensity
    points[:, 4] = ring
    return points, sweep.xyz


def _ego_returns(rng: np.random.Generator, count: int) -> np.ndarray:
    """float32 [count, 5] returns of the ego vehicle's roof under the sensor: |x|, |y| < 0.9 m, ring 0."""
    points = np.zeros((count, 5), np.float32)
    points[:, :2] = rng.uniform(-0.9, 0.9, (count, 2))
    points[:, 2] = rng.uniform(-0.6, -0.2, count)
    points[:, 3] = rng.uniform(0.0, 30.0, count)
    return points


def _attribute(cls: str, speed: float) -> str:
    if cls == "cyclist":
        return "cycle.with_rider"
    if cls == "pedestrian":
        return "pedestrian.moving" if speed > 0 else "pedestrian.standing"
    return "vehicle.moving" if speed > 0 else "vehicle.parked"


def _png(size: int = 8) -> bytes:
    """A blank grayscale PNG (the devkit opens a map mask per log record; nothing here reads its pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(size) for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _link(records: list[dict]) -> None:
    for a, b in zip(records, records[1:]):
        a["next"], b["prev"] = b["token"], a["token"]


class _Tables:
    """The 13 tables of one dataroot version, filled scene by scene."""

    def __init__(self, seed: int, sensor: SensorConfig):
        self.seed = seed
        self.attribute = [{"token": _token("attribute", n), "name": n, "description": n} for n in ATTRIBUTES]
        self.category = [{"token": _token("category", n), "name": n, "description": n} for n in CATEGORIES.values()]
        self.visibility = [{"token": t, "level": level, "description": f"visibility {level} % (not simulated)"}
                           for t, level in VISIBILITY]
        self.sensor = [{"token": _token("sensor", CHANNEL), "channel": CHANNEL, "modality": "lidar"}]
        self.calibrated_sensor = [{"token": _token(seed, "calibrated_sensor"), "sensor_token": self.sensor[0]["token"],
                                   "translation": [*LIDAR_TO_EGO, float(sensor.height)],
                                   "rotation": _quaternion(LIDAR_YAW_IN_EGO), "camera_intrinsic": []}]
        self.map = [{"token": _token(seed, "map"), "log_tokens": [], "category": "semantic_prior",
                     "filename": f"maps/{_token(seed, 'map')}.png"}]
        self.ego_pose, self.log, self.scene, self.sample, self.sample_data = [], [], [], [], []
        self.instance, self.sample_annotation = [], []

    def tables(self) -> dict[str, list[dict]]:
        names = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
                 "sample_annotation", "sample_data", "scene", "sensor", "visibility")
        return {name: getattr(self, name) for name in names}


def _write_scene(root: Path, tables: _Tables, plan: ScenePlan, index: int, name: str, bar: tqdm,
                 ego_returns: int = 0) -> None:
    seed = tables.seed
    log = {"token": _token(seed, "log", index), "logfile": f"synth-{seed:04d}-{name}", "vehicle": "synth",
           "date_captured": "2018-08-01", "location": "boston-seaport"}
    tables.log.append(log)
    tables.map[0]["log_tokens"].append(log["token"])
    scene_token = _token(seed, "scene", index)
    samples = [{"token": _token(seed, "sample", index, k), "timestamp": plan.timestamps[j], "prev": "", "next": "",
                "scene_token": scene_token} for k, j in enumerate(plan.keys)]
    _link(samples)
    sample_of = {}  # sweep index -> the sample it belongs to (the next key frame, as in nuScenes)
    for k, j in enumerate(plan.keys):
        for i in range(max(0, j - SWEEPS_PER_SAMPLE + 1), j + 1):
            sample_of[i] = samples[k]["token"]
    sweeps, chains = [], {}  # chains: object index -> its annotations in time order
    rng = np.random.default_rng([seed, index, 1 << 20])  # the sweeps' noise, apart from the layout's draws
    ego_rng = np.random.default_rng([seed, index, 1 << 21])
    classes = [CLASSES[c] for c in plan.layout.objects.cls]
    for j, tau in enumerate(plan.taus):
        key = j in plan.keys
        points, world = _sweep_points(plan, j, rng)
        if ego_returns:  # not inside any box: `world` (for num_lidar_pts) need not hold them
            points = np.concatenate([points, _ego_returns(ego_rng, ego_returns)])
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/{CHANNEL}/{log['logfile']}__{CHANNEL}__{plan.timestamps[j]}.pcd.bin"
        (root / filename).write_bytes(points.tobytes())
        token = _token(seed, "sample_data", index, j)
        translation, rotation = plan.ego_pose(float(tau))
        tables.ego_pose.append({"token": token, "timestamp": plan.timestamps[j], "rotation": rotation,
                                "translation": translation})
        sweeps.append({"token": token, "sample_token": sample_of[j], "ego_pose_token": token,
                       "calibrated_sensor_token": tables.calibrated_sensor[0]["token"],
                       "timestamp": plan.timestamps[j], "fileformat": "pcd", "is_key_frame": key, "height": 0,
                       "width": 0, "filename": filename, "prev": "", "next": ""})
        if key:
            _annotate(tables, plan, index, sample_of[j], float(tau), world, classes, chains)
        bar.update(1)
    _link(sweeps)
    tables.sample_data.extend(sweeps)
    tables.sample.extend(samples)
    category = {c["name"]: c["token"] for c in tables.category}
    for obj, anns in chains.items():
        _link(anns)
        tables.sample_annotation.extend(anns)
        tables.instance.append({"token": anns[0]["instance_token"],
                                "category_token": category[CATEGORIES[classes[obj]]], "nbr_annotations": len(anns),
                                "first_annotation_token": anns[0]["token"], "last_annotation_token": anns[-1]["token"]})
    tables.scene.append({"token": scene_token, "log_token": log["token"], "nbr_samples": len(samples),
                         "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"],
                         "name": name, "description": f"synthetic ({GENERATOR_VERSION}, seed {seed}, scene {index})"})


def _annotate(tables: _Tables, plan: ScenePlan, scene: int, sample: str, tau: float, world: np.ndarray,
              classes: list[str], chains: dict[int, list[dict]]) -> None:
    """The sample's annotations (global frame) of the objects in range, appended to their instance chains."""
    boxes = plan.world_boxes(tau)
    inside = points_in_boxes(world, boxes).sum(axis=0)
    attribute = {a["name"]: a["token"] for a in tables.attribute}
    speed = plan.layout.objects.speed
    for obj in np.flatnonzero(plan.in_range(boxes, tau)):
        box = boxes[obj]
        heading = float(plan.layout.objects.heading[obj])
        chains.setdefault(int(obj), []).append({
            "token": _token(tables.seed, "sample_annotation", sample, int(obj)),
            "sample_token": sample,
            "instance_token": _token(tables.seed, "instance", scene, int(obj)),
            "visibility_token": "4",
            "attribute_tokens": [attribute[_attribute(classes[obj], float(speed[obj]))]],
            "translation": [float(v) for v in plan.to_global(box[:3])],
            "size": [float(box[3]), float(box[4]), float(box[5])],
            "rotation": _quaternion(heading + plan.global_yaw),
            "prev": "", "next": "",
            "num_lidar_pts": int(inside[obj]), "num_radar_pts": 0,
        })


def write_nuscenes(out: str | Path, version: str = "v1.0-mini", scenes: int = DEFAULT_SCENES,
                   samples_per_scene: int = DEFAULT_SAMPLES_PER_SCENE, seed: int = 0, progress: bool = True,
                   force: bool = False, sensor: SensorConfig | None = None, scene: SceneConfig | None = None,
                   lead_in: int = SWEEPS_PER_SAMPLE - 1, ego_returns: int = 0) -> dict:
    """Write a synthetic nuScenes dataroot to `out` (whole, or not at all; a non-empty `out` only with `force`);
    returns a summary: version, scene names, counts. `lead_in`: sweeps before each scene's first sample;
    `ego_returns`: returns within 1 m of the sensor per sweep (module docstring)."""
    names = scene_names(version)
    if not 1 <= scenes <= len(names):
        raise UserError(f"--scenes must be 1 .. {len(names)} for {version} (its split lists have {len(names)} "
                        f"scenes), got {scenes}")
    if samples_per_scene < 1 or seed < 0:
        raise UserError(f"--samples-per-scene must be >= 1 and --seed >= 0, got {samples_per_scene}, {seed}")
    if lead_in < 0 or ego_returns < 0:
        raise UserError(f"lead_in and ego_returns must be >= 0, got {lead_in}, {ego_returns}")
    root = check_replaceable_dir(out, force, "a dataroot")
    plans = [scene_plan(seed, i, samples_per_scene, sensor, scene, lead_in) for i in range(scenes)]
    tables = _Tables(seed, plans[0].sensor)
    with atomic_dir(root, replace=force) as tmp:
        for folder in ("samples", "sweeps"):
            (tmp / folder / CHANNEL).mkdir(parents=True)
        (tmp / "maps").mkdir()
        (tmp / tables.map[0]["filename"]).write_bytes(_png())
        with tqdm(total=sum(len(p.taus) for p in plans), desc="synth sweeps", unit="sweep",
                  disable=not progress) as bar:
            for i, plan in enumerate(plans):
                _write_scene(tmp, tables, plan, i, names[i], bar, ego_returns)
        (tmp / version).mkdir()
        for name, records in tables.tables().items():
            (tmp / version / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
        (tmp / "README.md").write_text(_readme(version, seed, names[:scenes], samples_per_scene))
    return {"version": version, "seed": seed, "scenes": names[:scenes], "samples": len(tables.sample),
            "sweeps": len(tables.sample_data), "annotations": len(tables.sample_annotation),
            "instances": len(tables.instance)}


def _readme(version: str, seed: int, names: list[str], samples: int) -> str:
    return (f"# Synthetic nuScenes dataroot ({GENERATOR_VERSION}, seed {seed})\n\n"
            f"Not real nuScenes data: {len(names)} generated scene(s) ({', '.join(names)}; real names of the "
            f"devkit's {version} split lists), {samples} samples each, written by "
            "`trt-centerpoint synth --format nuscenes` in the nuScenes devkit's format (LIDAR_TOP only).\n")
