"""One nuScenes sample through the devkit's tables: its stacked LIDAR_TOP sweeps, its boxes, its poses.

Points, float32 [N, 5] = x, y, z, intensity, time lag (key-frame time - sweep time, seconds), the key frame
first, then the earlier sweeps along `prev`, each moved into the key frame's LiDAR frame through its ego pose
(sweep sensor -> ego -> global -> key ego -> key sensor). Two sources of the same sweeps:

- "det3d" (the default): what tianweiy/CenterPoint (det3d) trains and evaluates its nuScenes models on
  (`nusc_common._fill_trainval_infos`, `pipelines/loading.py`). The key frame's points are taken as they are
  (no close-range cut, no transform); each earlier sweep loses the points with |x| < 1 m and |y| < 1 m in its
  own sensor frame (the ego vehicle's returns) before it is moved. A history shorter than `sweeps` is padded:
  by repeating the oldest earlier sweep, or, with none (a scene's first sample), the key frame itself (cut,
  not moved, time lag 0). det3d stacks the sweeps in a random order; here they stay in time order.
- "devkit": the nuScenes devkit's `LidarPointCloud.from_file_multisweep`: every sweep, the key frame
  included, is cut and moved, and a short history stops (fewer sweeps, no padding).

Rows with a NaN / Inf are dropped and counted, as for point files.

Boxes: `nusc.get_sample_data(lidar token)` gives the annotations already in the key frame's LiDAR frame. A
devkit box (centre, wlh, heading theta = `orientation.yaw_pitch_roll[0]`, the direction of its length) becomes
`[x, y, z, w, l, h, yaw, vx, vy]` with yaw = theta - pi/2 wrapped to [-pi, pi) (the project's convention: the
l side points along yaw + pi/2). The velocity is `nusc.box_velocity` (global frame, NaN when the instance has
a single annotation -> 0) rotated into the LiDAR frame. Categories map to detection classes with the devkit's
`category_to_detection_name`; annotations of no detection class are dropped. `num_lidar_pts` is kept so that
consumers can drop boxes without points, as the devkit's evaluation does.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path

import numpy as np

from trt_centerpoint._compat.nuscenes import devkit
from trt_centerpoint.errors import UserError

CHANNEL = "LIDAR_TOP"
SWEEP_COLUMNS = 5  # a LIDAR_TOP file: float32 x, y, z, intensity, ring index
POINT_SOURCES = ("det3d", "devkit")
DEFAULT_POINT_SOURCE = "det3d"
CLOSE_RANGE = 1.0  # m: returns with |x| and |y| below it are the ego vehicle's (cut: det3d earlier sweeps, devkit all)

__all__ = ["CHANNEL", "DEFAULT_POINT_SOURCE", "POINT_SOURCES", "sample_labels", "sample_points", "sample_pose",
           "sweep_files"]


def _lidar_record(nusc, token: str) -> dict:
    try:
        sample = nusc.get("sample", token)
        return nusc.get("sample_data", sample["data"][CHANNEL])
    except KeyError:
        raise UserError(f"{nusc.dataroot}/{nusc.version}: sample {token} has no {CHANNEL} sample data") from None


def _sweep_records(nusc, token: str, sweeps: int) -> list[dict]:
    """The LIDAR_TOP sample_data records of sample `token`: the key frame, then up to `sweeps` - 1 earlier
    sweeps along `prev`, each file checked first so that a missing or truncated one is one line naming it."""
    record, records = _lidar_record(nusc, token), []
    for k in range(sweeps):
        path = Path(nusc.dataroot) / record["filename"]
        if not path.is_file():
            raise UserError(f"{path}: missing {CHANNEL} sweep file (sweep {k + 1} of {sweeps} of sample {token})")
        size = path.stat().st_size
        if size % (4 * SWEEP_COLUMNS):
            raise UserError(f"{path}: {size} bytes is not a whole number of {CHANNEL} points (float32 x "
                            f"{SWEEP_COLUMNS}: x, y, z, intensity, ring index)")
        records.append(record)
        if not record["prev"]:
            break
        record = nusc.get("sample_data", record["prev"])
    return records


def sweep_files(nusc, token: str, sweeps: int) -> list[Path]:
    """The distinct files read for sample `token` (the key frame, then earlier sweeps along `prev`)."""
    return [Path(nusc.dataroot) / r["filename"] for r in _sweep_records(nusc, token, sweeps)]


def _read_sweep(nusc, record: dict) -> np.ndarray:
    """float32 [4, N]: x, y, z, intensity of one LIDAR_TOP file (its fifth column, the ring index, unused)."""
    scan = np.fromfile(Path(nusc.dataroot) / record["filename"], dtype=np.float32)
    return scan.reshape(-1, SWEEP_COLUMNS)[:, :4].T


def _remove_close(points: np.ndarray) -> np.ndarray:
    close = (np.abs(points[0]) < CLOSE_RANGE) & (np.abs(points[1]) < CLOSE_RANGE)
    return points[:, ~close]


def _pose_matrix(rec: dict, inverse: bool) -> np.ndarray:
    """4 x 4 homogeneous matrix of a calibrated_sensor / ego_pose record (its inverse with `inverse`)."""
    transform = devkit("nuscenes.utils.geometry_utils").transform_matrix
    return transform(rec["translation"], devkit("pyquaternion").Quaternion(rec["rotation"]), inverse=inverse)


def _det3d_points(nusc, records: list[dict], sweeps: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [4, N] points, float64 [N] time lags) as det3d stacks them (module docstring)."""
    key = records[0]
    ref_time = 1e-6 * key["timestamp"]
    ref_from_car = _pose_matrix(nusc.get("calibrated_sensor", key["calibrated_sensor_token"]), inverse=True)
    car_from_global = _pose_matrix(nusc.get("ego_pose", key["ego_pose_token"]), inverse=True)
    earlier = records[1:] or [key]  # with no earlier sweep, det3d pads with the key frame itself
    earlier += [earlier[-1]] * (sweeps - 1 - len(earlier))  # then repeats the oldest
    key_cloud = _read_sweep(nusc, key)
    clouds, lags = [key_cloud], [np.zeros(key_cloud.shape[1])]
    moved: dict[str, np.ndarray] = {}  # a padded sweep is read and moved once
    for record in earlier[:sweeps - 1]:
        if record["token"] not in moved:
            cloud = _remove_close(_read_sweep(nusc, record))
            if record is not key:  # the same products, in the same order, as det3d and the devkit
                global_from_car = _pose_matrix(nusc.get("ego_pose", record["ego_pose_token"]), inverse=False)
                car_from_current = _pose_matrix(nusc.get("calibrated_sensor", record["calibrated_sensor_token"]),
                                                inverse=False)
                matrix = reduce(np.dot, [ref_from_car, car_from_global, global_from_car, car_from_current])
                cloud[:3] = matrix.dot(np.vstack((cloud[:3], np.ones(cloud.shape[1]))))[:3]
            moved[record["token"]] = cloud
        clouds.append(moved[record["token"]])
        lags.append(np.full(clouds[-1].shape[1], ref_time - 1e-6 * record["timestamp"]))
    return np.concatenate(clouds, axis=1), np.concatenate(lags)


def sample_points(nusc, token: str, sweeps: int,
                  source: str = DEFAULT_POINT_SOURCE) -> tuple[np.ndarray, int, Path]:
    """(points float32 [N, 5] finite rows, rows dropped for NaN / Inf, the key frame's file), stacked as
    `source` ("det3d" or "devkit", module docstring) stacks them."""
    if source not in POINT_SOURCES:
        raise UserError(f"unknown nuScenes point source {source!r} (one of {', '.join(POINT_SOURCES)})")
    records = _sweep_records(nusc, token, sweeps)
    if source == "det3d":
        cloud, times = _det3d_points(nusc, records, sweeps)
    else:
        lidar = devkit("nuscenes.utils.data_classes").LidarPointCloud
        pc, lags = lidar.from_file_multisweep(nusc, nusc.get("sample", token), CHANNEL, CHANNEL, nsweeps=sweeps,
                                              min_distance=CLOSE_RANGE)
        cloud, times = pc.points, lags[0]
    points = np.empty((cloud.shape[1], 5), np.float32)
    points[:, :4] = cloud.T
    points[:, 4] = times
    finite = np.isfinite(points).all(axis=1)
    dropped = int(len(points) - finite.sum())
    return (points[finite] if dropped else points), dropped, Path(nusc.dataroot) / records[0]["filename"]


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2.0 * np.pi) - np.pi)


def sample_labels(nusc, token: str) -> dict:
    """{"boxes": [[x, y, z, w, l, h, yaw, vx, vy], ...], "names": [...], "num_lidar_pts": [...]} in the key
    frame's LiDAR frame (see the module docstring)."""
    record = _lidar_record(nusc, token)
    quaternion = devkit("pyquaternion").Quaternion
    to_name = devkit("nuscenes.eval.detection.utils").category_to_detection_name
    sensor = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", record["ego_pose_token"])
    global_to_lidar = (quaternion(sensor["rotation"]).rotation_matrix.T
                       @ quaternion(ego["rotation"]).rotation_matrix.T)
    _, boxes, _ = nusc.get_sample_data(record["token"])
    out = {"boxes": [], "names": [], "num_lidar_pts": []}
    for box in boxes:
        ann = nusc.get("sample_annotation", box.token)
        name = to_name(ann["category_name"])
        if name is None:
            continue
        velocity = np.nan_to_num(global_to_lidar @ nusc.box_velocity(box.token), nan=0.0)
        w, length, h = (float(v) for v in box.wlh)
        theta = float(box.orientation.yaw_pitch_roll[0])
        out["boxes"].append([*(float(v) for v in box.center), w, length, h, _wrap(theta - np.pi / 2),
                             float(velocity[0]) + 0.0, float(velocity[1]) + 0.0])  # + 0.0: no "-0.0"
        out["names"].append(name)
        out["num_lidar_pts"].append(int(ann["num_lidar_pts"]))
    return out


def sample_pose(nusc, token: str) -> dict:
    """{"lidar2ego": {"translation": [3], "rotation": [w, x, y, z]}, "ego2global": {...}, "timestamp": us} of the
    sample's key-frame LIDAR_TOP data: what takes its boxes to the global frame."""
    record = _lidar_record(nusc, token)
    sensor = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", record["ego_pose_token"])

    def rigid(rec: dict) -> dict:
        return {"translation": [float(v) for v in rec["translation"]], "rotation": [float(v) for v in rec["rotation"]]}

    return {"lidar2ego": rigid(sensor), "ego2global": rigid(ego), "timestamp": int(record["timestamp"])}
