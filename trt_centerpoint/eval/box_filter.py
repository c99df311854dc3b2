"""Which boxes are scored: the nuScenes devkit's ground-truth filter, for the built-in AP.

The devkit (`filter_eval_boxes`) scores neither ground truth nor predictions at or beyond a per-class range
(the bird's-eye distance of the box centre from the ego vehicle, in global axes), and no ground-truth box
without any LiDAR (or radar) return inside it. Doing the same here keeps the built-in AP and `--metric nuscenes`
comparable. What the devkit does and this does not: it counts radar returns too (the labels carry LiDAR
returns only) and drops bicycles / motorcycles inside a bicycle rack (the labels carry no racks).

Ranges are measured from the ego vehicle where the frame's poses are known (`ego_centred_transform`), else
from the sensor (the LiDAR frame's origin).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from trt_centerpoint.errors import UserError


def quaternion_matrix(wxyz) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion [w, x, y, z] (the nuScenes tables' order)."""
    w, x, y, z = np.asarray(wxyz, np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def ego_centred_transform(pose: Mapping) -> np.ndarray:
    """[3, 4] map from the LiDAR frame to global axes centred on the ego vehicle, from a frame's poses
    (`{"lidar2ego": {"translation", "rotation"}, "ego2global": {...}}`): the devkit's range is the xy norm there
    (global box centre minus ego position)."""
    r_le = quaternion_matrix(pose["lidar2ego"]["rotation"])
    t_le = np.asarray(pose["lidar2ego"]["translation"], np.float64)
    r_eg = quaternion_matrix(pose["ego2global"]["rotation"])
    return np.concatenate([r_eg @ r_le, (r_eg @ t_le)[:, None]], axis=1)


def _range(boxes: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    centres = boxes[:, :3]
    if transform is not None:
        centres = centres @ transform[:, :3].T + transform[:, 3]
    return np.hypot(centres[:, 0], centres[:, 1])


def centre_distance(boxes: list, transform: np.ndarray | None = None) -> np.ndarray:
    """BEV distance of each box centre from the ego vehicle (`transform`: `ego_centred_transform`) or, without
    one, from the sensor: what `class_range` and the distance bands of the AP compare."""
    if len(boxes) == 0:
        return np.zeros(0)
    return _range(np.asarray(boxes, np.float64).reshape(len(boxes), -1), transform)


def _beyond(boxes: list, names: list[str], class_range: Mapping[str, float], transform) -> np.ndarray:
    if not boxes:
        return np.zeros(0, bool)
    dist = _range(np.asarray(boxes, np.float64).reshape(len(boxes), -1), transform)
    limit = np.array([class_range.get(n, np.inf) for n in names])
    return dist >= limit  # the devkit keeps `ego_dist < max_dist`


def _point_counts(label: Mapping, n: int, frame) -> list | None:
    points = label.get("num_lidar_pts")
    if points is None:
        return None
    if not isinstance(points, list) or len(points) != n or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in points):
        raise UserError(f"ground truth of frame {frame!r}: 'num_lidar_pts' must be {n} counts (integers >= 0), "
                        f"one per box")
    return points


def filter_boxes(predictions: Mapping[str, list[dict]], ground_truth: Mapping[str, Mapping],
                 class_range: Mapping[str, float], transforms: Mapping[str, np.ndarray] | None = None,
                 classes: Collection[str] | None = None) -> tuple[dict, dict, dict]:
    """The predictions and ground truth that are scored, and how many of each were dropped.

    ground_truth: {frame: {"boxes", "names", optional "num_lidar_pts"}}: boxes with 0 points are dropped only
    where the labels say so. transforms: {frame: `ego_centred_transform`}; frames without one measure the range
    from the sensor. classes: the classes scored (default: all); the counts cover only those. Returns
    (predictions, ground_truth, counts) with counts = {"gt_total", "gt_out_of_range", "gt_without_points",
    "pred_total", "pred_out_of_range"}; in the devkit's order: range first, then points.
    """
    transforms = transforms or {}
    counts = dict.fromkeys(("gt_total", "gt_out_of_range", "gt_without_points", "pred_total", "pred_out_of_range"),
                           0)

    def scored(names):
        return np.array([classes is None or n in classes for n in names], bool)

    gt_out = {}
    for frame, label in ground_truth.items():
        boxes, names = list(label["boxes"]), list(label["names"])
        points = _point_counts(label, len(boxes), frame)
        beyond = _beyond(boxes, names, class_range, transforms.get(frame))
        empty = np.zeros(len(boxes), bool) if points is None else (np.asarray(points) == 0) & ~beyond
        counted = scored(names)
        counts["gt_total"] += int(counted.sum())
        counts["gt_out_of_range"] += int((beyond & counted).sum())
        counts["gt_without_points"] += int((empty & counted).sum())
        keep = np.flatnonzero(~beyond & ~empty)
        kept = {"boxes": [boxes[i] for i in keep], "names": [names[i] for i in keep]}
        if points is not None:
            kept["num_lidar_pts"] = [points[i] for i in keep]
        gt_out[frame] = kept
    pred_out = {}
    for frame, dets in predictions.items():
        dets = list(dets or ())
        names = [d["name"] for d in dets]
        beyond = _beyond([d["box"] for d in dets], names, class_range, transforms.get(frame))
        counted = scored(names)
        counts["pred_total"] += int(counted.sum())
        counts["pred_out_of_range"] += int((beyond & counted).sum())
        pred_out[frame] = [d for d, b in zip(dets, beyond) if not b]
    return pred_out, gt_out, counts
