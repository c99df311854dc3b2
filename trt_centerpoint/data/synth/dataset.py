"""Labelled synthetic LiDAR benchmark: a simulated spinning LiDAR in random street scenes.

No real dataset can be downloaded here, so this module makes one: `generate_frame(seed, index)` returns
the points and labels of one frame, `write_dataset(out_dir, frames, seed)` writes a folder of them.

Frames (nuScenes-like)
  * Coordinates: the current LiDAR frame. The sensor is at the origin (0, 0, 0), x points along the ego
    vehicle's heading, y to its left, z up; the ground under the ego vehicle is at z = -sensor height
    (1.8 m by default). The sensor is kept level (no roll / pitch, the ground is gentle).
  * Points: float32 [N, 5] = (x, y, z, intensity, time lag). Intensity is nuScenes-like, 0..255 (whole
    numbers): asphalt ~4-12, sidewalk ~20-35, lane markings ~50-110, car paint 10-60 with bright
    licence plates / lamps, poles 30-90, road signs 150-250, vegetation 5-30. The time lag is
    (current sweep time - sweep time) in seconds: 0 for the latest sweep, k / rate_hz for the k-th
    earlier one. Earlier sweeps are cast from the sensor's pose at that time with the objects where
    they were then, and transformed into the current frame (like nuScenes' multi-sweep stacking), so
    static structure lines up and moving objects leave trails behind them. Points are ordered by sweep
    (latest first), then beam, then azimuth. Every sweep is cast at one instant (no rolling shutter).
  * The LiDAR: `SensorConfig` (default 32 beams over -30..+10 deg, 0.333 deg azimuth steps = 1080
    columns, 70 m range, 2 cm range noise, 5 % dropout, 20 Hz, 3 sweeps). Each ray returns only its
    nearest hit (first-hit occlusion) on the ground (a plane with up to 2 % slope plus low-frequency
    waves), labelled objects (built from a few boxes each: body/cabin/wheels, legs/torso/head, bike and
    rider), walls, poles, signs, tree trunks, clutter boxes, and semi-transparent vegetation volumes
    (tree crowns, bushes: a ray stops inside at an exponentially distributed depth or passes through).

Labels (must match the project's decode / NMS)
  `{"boxes": [[x, y, z, w, l, h, yaw, vx, vy], ...], "names": [...]}` in the current LiDAR frame:
  * (x, y, z) is the box centre (z = ground under the centre + h / 2: boxes stand on the ground);
  * footprint corners = (x, y) + R(yaw) @ (+-w/2, +-l/2), R the counter-clockwise rotation, so at
    yaw = 0 the w side spans the x axis and the l side the y axis. An object of physical width W, length
    L and heading theta (the direction it drives, counter-clockwise from +x) is labelled
    w = W, l = L, yaw = theta - pi/2 wrapped to [-pi, pi);
  * (vx, vy) in m/s: the object's velocity over the ground (ego motion compensated), expressed in the
    current LiDAR frame; exactly 0 for static objects. Objects move at constant velocity along their
    heading (vehicles up to 15 m/s, cyclists 2.5-7, pedestrians 0.8-1.8; about a third are static).
  * Classes: car, truck, pedestrian, cyclist. A label is kept when its centre lies inside the scene's
    `point_cloud_range` and at least `min_points` (default 5) returns of that object, summed over all
    sweeps, lie inside the (current) label box. Points outside the range are kept in the frame.
  * Every object's solid parts lie inside its label box shrunk by 4 cm (top and sides), so up to range
    noise every return of an object in the latest sweep lies inside its label box.
  * Written label files also hold `"num_lidar_pts"`: per label, the returns of its object in the latest
    sweep inside its box (nuScenes' count: the key-frame sweep; evaluation drops boxes without points).

Determinism: everything in a frame is drawn from `numpy.random.default_rng([seed, index])`; the same
(seed, index, sensor, scene) always gives the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trt_centerpoint.data.synth.scene import CLASSES, Layout, SceneConfig, sample_layout
from trt_centerpoint.data.synth.sensor import SensorConfig, Sweep, cast_sweep
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_dir, atomic_write_bytes, check_replaceable_dir

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "SceneConfig",
    "SensorConfig",
    "SynthFrame",
    "boxes_to_corners",
    "generate_frame",
    "points_in_boxes",
    "read_labels",
    "scene_for_config",
    "simulate_frame",
    "unknown_classes",
    "write_dataset",
]

GENERATOR_VERSION = "trt_centerpoint.synth/1"
POINT_FEATURES = ["x", "y", "z", "intensity", "time_lag"]


@dataclass
class SynthFrame:
    """A frame with the simulator's bookkeeping (for tests and debugging)."""

    points: np.ndarray  # float32 [N, 5]
    labels: dict
    owner: np.ndarray  # per point: object index (into layout.objects) or -1
    sweep: np.ndarray  # per point: sweep index (0 = latest)
    layout: Layout
    sweeps: list[Sweep]
    label_objects: np.ndarray  # object index of each kept label
    label_points: np.ndarray  # returns of each kept label's object inside its box (all sweeps)
    all_boxes: np.ndarray = field(repr=False)  # (n_objects, 9) boxes of every placed object


def points_in_boxes(xyz: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Boolean [N, M]: point n inside box m (label convention, boxes upright), each side grown by margin."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, np.shape(xyz)[-1])
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None] if boxes.size else boxes.reshape(0, 9)
    if len(boxes) == 0:
        return np.zeros((len(xyz), 0), bool)
    d = xyz[:, None, :3] - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    lx = c * d[..., 0] + s * d[..., 1]  # along the w side
    ly = -s * d[..., 0] + c * d[..., 1]  # along the l side
    return ((np.abs(lx) <= boxes[:, 3] / 2 + margin) & (np.abs(ly) <= boxes[:, 4] / 2 + margin)
            & (np.abs(d[..., 2]) <= boxes[:, 5] / 2 + margin))


def boxes_to_corners(boxes: np.ndarray) -> np.ndarray:
    """BEV footprint corners [M, 4, 2] of label boxes: centre + R(yaw) @ (+-w/2, +-l/2)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    sx = np.array([1, 1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1]) * 0.5
    ox = sx[None] * boxes[:, 3:4]
    oy = sy[None] * boxes[:, 4:5]
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    return np.stack([boxes[:, 0:1] + c * ox - s * oy, boxes[:, 1:2] + s * ox + c * oy], axis=-1)


def simulate_frame(seed: int, index: int, sensor: SensorConfig | None = None,
                   scene: SceneConfig | None = None) -> SynthFrame:
    sensor = sensor or SensorConfig()
    scene = scene or SceneConfig()
    sensor.validate()
    scene.validate()
    rng = np.random.default_rng([int(seed), int(index)])
    lags = sensor.sweep_lags
    layout = sample_layout(rng, scene, sensor.height, float(lags[-1]))
    sweeps = [cast_sweep(layout, sensor, float(lag), rng) for lag in lags]

    xyz = np.concatenate([s.xyz for s in sweeps])
    owner = np.concatenate([s.owner for s in sweeps])
    sweep_id = np.concatenate([np.full(len(s.xyz), k, np.int16) for k, s in enumerate(sweeps)])
    points = np.empty((len(xyz), 5), np.float32)
    points[:, :3] = xyz
    points[:, 3] = np.concatenate([s.intensity for s in sweeps])
    points[:, 4] = lags[sweep_id]

    boxes = layout.label_boxes()
    n_obj = len(boxes)
    counts = np.zeros(n_obj, np.int64)
    mine = np.flatnonzero(owner >= 0)
    if mine.size:
        o = owner[mine]
        inside = points_in_boxes(points[mine, :3], boxes)[np.arange(mine.size), o]
        counts = np.bincount(o[inside], minlength=n_obj)
    r = scene.point_cloud_range
    in_range = np.ones(n_obj, bool)
    for k in range(3):
        in_range &= (boxes[:, k] >= r[k]) & (boxes[:, k] < r[k + 3])
    keep = np.flatnonzero(in_range & (counts >= scene.min_points))
    labels = {
        "boxes": [[round(float(v), 5) + 0.0 for v in b] for b in boxes[keep]],  # + 0.0: no "-0.0"
        "names": [CLASSES[c] for c in layout.objects.cls[keep]],
    }
    return SynthFrame(points, labels, owner, sweep_id, layout, sweeps, keep, counts[keep], boxes)


def generate_frame(seed: int, index: int, sensor: SensorConfig | None = None,
                   scene: SceneConfig | None = None, counts: bool = False) -> tuple[np.ndarray, dict]:
    """Points float32 [N, 5] (x, y, z, intensity 0..255, time lag s) and labels
    {"boxes": [[x, y, z, w, l, h, yaw, vx, vy], ...], "names": [...]} of frame (seed, index); with `counts`
    also "num_lidar_pts": per label, its object's returns of the latest sweep inside its box."""
    frame = simulate_frame(seed, index, sensor, scene)
    if not counts:
        return frame.points, frame.labels
    mine = np.flatnonzero((frame.owner >= 0) & (frame.sweep == 0))
    owner = frame.owner[mine]
    inside = points_in_boxes(frame.points[mine, :3], frame.all_boxes)[np.arange(mine.size), owner]
    per_object = np.bincount(owner[inside], minlength=len(frame.all_boxes))
    return frame.points, {**frame.labels, "num_lidar_pts": [int(per_object[o]) for o in frame.label_objects]}


def unknown_classes(config) -> list[str]:
    """The classes of a model config that the generator cannot make."""
    return [] if config is None else [n for n in config.class_names if n not in CLASSES]


def scene_for_config(config, scene: SceneConfig | None = None, partial: bool = False) -> SceneConfig:
    """The scene config for a model config: its point-cloud range and its classes (which the generator
    must know; with `partial`, those it knows, at least one). Objects are placed up to 6 m beyond the range (at
    most the default placement radius), so a smaller range gets the same object counts, more densely."""
    scene = scene or SceneConfig()
    if config is None:
        return scene
    names = list(config.class_names)
    unknown = unknown_classes(config)
    if unknown and (not partial or len(unknown) == len(names)):
        raise UserError(f"config {config.name}: the synthetic generator cannot make class(es) {unknown} "
                        f"(it knows {list(CLASSES)})")
    r = [float(v) for v in config.voxel.point_cloud_range]
    reach = max(abs(r[0]), abs(r[1]), abs(r[3]), abs(r[4])) + 6.0
    return replace(scene, point_cloud_range=r, classes=[c for c in CLASSES if c in names],
                   placement_radius=min(scene.placement_radius, reach))


def _labels_json(labels: dict) -> bytes:
    return (json.dumps({"boxes": labels["boxes"], "names": labels["names"],
                        "num_lidar_pts": labels["num_lidar_pts"]}) + "\n").encode()


def write_dataset(out_dir, frames: int, seed: int, config=None, progress: bool = True, *,
                  sensor: SensorConfig | None = None, scene: SceneConfig | None = None,
                  start_index: int = 0, force: bool = False) -> dict:
    """Write `frames` frames of generator `seed` to `out_dir`:

    points/<stem>.bin (raw float32 N x F), labels/<stem>.json, meta.json and README.md, with
    stem = f"{seed:04d}_{index:06d}". F = 5 (x, y, z, intensity, time lag), or 4 when `config` asks for
    4 point features (then a single sweep is simulated unless `sensor` says otherwise). With a config,
    labels are limited to its point-cloud range and classes (those the generator knows: meta.json lists the
    others under "classes_not_generated"). Returns the metadata written to meta.json.

    The data set appears whole or not at all: it is written into a temporary sibling folder and renamed into
    place, so a killed run leaves no half data set and no stale frames mix with new ones. A non-empty
    `out_dir` is refused unless `force` (then it is replaced).
    """
    if frames < 0 or seed < 0:
        raise UserError(f"write_dataset: frames and seed must be >= 0, got frames={frames}, seed={seed}")
    out = check_replaceable_dir(out_dir, force, "a data set")
    with atomic_dir(out, replace=force) as tmp:
        return _write_frames(tmp, frames, seed, config, progress, sensor, scene, start_index)


def _write_frames(out: Path, frames: int, seed: int, config, progress: bool, sensor: SensorConfig | None,
                  scene: SceneConfig | None, start_index: int) -> dict:
    """The frames, meta.json and README.md of `write_dataset`, into the (new, empty) folder `out`."""
    features = 5
    if config is not None:
        features = int(config.voxel.num_point_features)
        if features == 4 and sensor is None:
            sensor = SensorConfig(num_sweeps=1)
    sensor = sensor or SensorConfig()
    scene = scene_for_config(config, scene, partial=True)
    sensor.validate()
    scene.validate()
    (out / "points").mkdir()
    (out / "labels").mkdir()

    n_points, per_class, stems = [], {c: 0 for c in scene.classes}, []
    t0 = time.perf_counter()
    for index in tqdm(range(start_index, start_index + frames), disable=not progress, desc="synth frames",
                      unit="frame"):
        points, labels = generate_frame(seed, index, sensor, scene, counts=True)
        stem = f"{seed:04d}_{index:06d}"
        atomic_write_bytes(out / "points" / f"{stem}.bin", np.ascontiguousarray(points[:, :features]).tobytes())
        atomic_write_bytes(out / "labels" / f"{stem}.json", _labels_json(labels))
        n_points.append(len(points))
        for name in labels["names"]:
            per_class[name] = per_class.get(name, 0) + 1
        stems.append(stem)
    seconds = time.perf_counter() - t0
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "frames": frames,
        "first_index": start_index,
        "stems": stems,
        "point_features": POINT_FEATURES[:features],
        "point_dtype": "float32",
        "classes": list(scene.classes),
        "box_format": ["x", "y", "z", "w", "l", "h", "yaw", "vx", "vy"],
        "box_convention": "centre (x, y, z); corners = (x, y) + R(yaw) @ (+-w/2, +-l/2); yaw = heading - pi/2; "
                          "velocity over ground in the current LiDAR frame (m/s)",
        "frame": "current LiDAR frame: sensor at the origin, x forward, z up, ground at z = -sensor.height",
        "intensity_range": [0, 255],
        "sensor": asdict(sensor),
        "scene": asdict(scene),
        "model_config": getattr(config, "name", None),
        **({"classes_not_generated": unknown_classes(config)} if unknown_classes(config) else {}),
        "stats": {
            "labels_per_class": per_class,
            "mean_points_per_frame": float(np.mean(n_points)) if n_points else 0.0,
            "seconds": round(seconds, 3),
        },
    }
    atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    readme = (
        f"# Synthetic LiDAR frames ({GENERATOR_VERSION})\n\n"
        f"{frames} frames from seed {seed}, made by `trt_centerpoint.data.synth.dataset`.\n\n"
        f"- `points/<stem>.bin`: raw float32, {features} values per point ({', '.join(POINT_FEATURES[:features])});"
        " intensity 0..255, time lag in seconds.\n"
        "- `labels/<stem>.json`: `{\"boxes\": [[x, y, z, w, l, h, yaw, vx, vy], ...], \"names\": [...], "
        "\"num_lidar_pts\": [...]}` in the current LiDAR frame; yaw = heading - pi/2 (w spans x at yaw 0); velocity "
        "over ground in m/s; num_lidar_pts = the object's returns of the latest sweep inside its box.\n"
        "- `meta.json`: generator version, seed, sensor and scene settings, classes, label counts.\n"
    )
    atomic_write_bytes(out / "README.md", readme.encode())
    return meta


def read_labels(path) -> dict:
    """Read a label JSON written by `write_dataset`: {"boxes": list of 9-float lists, "names": list[str]}, and
    "num_lidar_pts" (list of ints >= 0) when the file has it.

    Raises UserError naming the file for anything malformed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such label file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read label file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict) or "boxes" not in data or "names" not in data:
        raise UserError(f"{path}: labels must be an object with 'boxes' and 'names'")
    boxes, names = data["boxes"], data["names"]
    if not isinstance(boxes, list) or not isinstance(names, list):
        raise UserError(f"{path}: 'boxes' and 'names' must be lists")
    if len(boxes) != len(names):
        raise UserError(f"{path}: {len(boxes)} boxes but {len(names)} names")
    out_boxes = []
    for i, box in enumerate(boxes):
        if (not isinstance(box, list) or len(box) != 9
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise UserError(f"{path}: box {i} must be 9 finite numbers [x, y, z, w, l, h, yaw, vx, vy], got {box!r}")
        out_boxes.append([float(v) for v in box])
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise UserError(f"{path}: name {i} must be a non-empty string, got {name!r}")
    out = {"boxes": out_boxes, "names": list(names)}
    if "num_lidar_pts" in data:
        counts = data["num_lidar_pts"]
        if (not isinstance(counts, list) or len(counts) != len(boxes)
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
            raise UserError(f"{path}: 'num_lidar_pts' must be {len(boxes)} integers >= 0, one per box")
        out["num_lidar_pts"] = list(counts)
    return out

