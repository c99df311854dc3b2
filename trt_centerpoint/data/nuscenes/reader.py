"""One nuScenes sample through the devkit: its stacked LIDAR_TOP sweeps, its boxes, its poses.

Points: `LidarPointCloud.from_file_multisweep(nusc, sample, 'LIDAR_TOP', 'LIDAR_TOP', nsweeps)`, the devkit's
own aggregation (each sweep moved into the key frame's LiDAR frame through its ego pose, the devkit's 1 m
close-range cut, the time lag = key-frame time - sweep time in seconds), as float32 [N, 5] = x, y, z,
intensity, time lag. Rows with a NaN / Inf are dropped and counted, as for point files.

Boxes: `nusc.get_sample_data(lidar token)` gives the annotations already in the key frame's LiDAR frame. A
devkit box (centre, wlh, heading theta = `orientation.yaw_pitch_roll[0]`, the direction of its length) becomes
`[x, y, z, w, l, h, yaw, vx, vy]` with yaw = theta - pi/2 wrapped to [-pi, pi) (the project's convention: the
l side points along yaw + pi/2). The velocity is `nusc.box_velocity` (global frame, NaN when the instance has
a single annotation -> 0) rotated into the LiDAR frame. Categories map to detection classes with the devkit's
`category_to_detection_name`; annotations of no detection class are dropped. `num_lidar_pts` is kept so that
consumers can drop boxes without points, as the devkit's evaluation does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trt_centerpoint._compat.nuscenes import devkit
from trt_centerpoint.errors import UserError

CHANNEL = "LIDAR_TOP"
SWEEP_COLUMNS = 5  # a LIDAR_TOP file: float32 x, y, z, intensity, ring index

__all__ = ["CHANNEL", "sample_labels", "sample_points", "sample_pose", "sweep_files"]


def _lidar_record(nusc, token: str) -> dict:
    try:
        sample = nusc.get("sample", token)
        return nusc.get("sample_data", sample["data"][CHANNEL])
    except KeyError:
        raise UserError(f"{nusc.dataroot}/{nusc.version}: sample {token} has no {CHANNEL} sample data") from None


def sweep_files(nusc, token: str, sweeps: int) -> list[Path]:
    """The files `from_file_multisweep` will read for sample `token` (the key frame, then earlier sweeps along
    `prev`), each checked first so that a missing or truncated one is one line naming it."""
    record, files = _lidar_record(nusc, token), []
    for k in range(sweeps):
        path = Path(nusc.dataroot) / record["filename"]
        if not path.is_file():
            raise UserError(f"{path}: missing {CHANNEL} sweep file (sweep {k + 1} of {sweeps} of sample {token})")
        size = path.stat().st_size
        if size % (4 * SWEEP_COLUMNS):
            raise UserError(f"{path}: {size} bytes is not a whole number of {CHANNEL} points (float32 x "
                            f"{SWEEP_COLUMNS}: x, y, z, intensity, ring index)")
        files.append(path)
        if not record["prev"]:
            break
        record = nusc.get("sample_data", record["prev"])
    return files


def sample_points(nusc, token: str, sweeps: int) -> tuple[np.ndarray, int, Path]:
    """(points float32 [N, 5] finite rows, rows dropped for NaN / Inf, the key frame's file)."""
    files = sweep_files(nusc, token, sweeps)
    lidar = devkit("nuscenes.utils.data_classes").LidarPointCloud
    cloud, times = lidar.from_file_multisweep(nusc, nusc.get("sample", token), CHANNEL, CHANNEL, nsweeps=sweeps)
    points = np.empty((cloud.points.shape[1], 5), np.float32)
    points[:, :4] = cloud.points.T
    points[:, 4] = times[0]
    finite = np.isfinite(points).all(axis=1)
    dropped = int(len(points) - finite.sum())
    return (points[finite] if dropped else points), dropped, files[0]


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
