"""`eval --metric nuscenes`: score detections with the nuScenes devkit itself (mAP, NDS, TP errors).

The built-in AP (`eval.ap`) re-implements the devkit's AP on plain numpy; this module hands the detections to
the devkit's `DetectionEval` instead (config detection_cvpr_2019: its class ranges, bicycle-rack and no-points
filters, and the attribute error, hence the NDS). It needs the dataroot the frames come from (a
`NuScenesSelection`: given directly, or named by a `convert nuscenes` folder's meta.json): the detections are
written as the devkit's results JSON, which lives in the global frame.

Frames: our boxes `[x, y, z, w, l, h, yaw, vx, vy]` are in the key frame's LiDAR frame with heading
theta = yaw + pi/2 (the l side's direction). A devkit box has centre, size [w, l, h] and orientation = rotation
about z by theta; LiDAR -> global is lidar2ego (the calibrated sensor) then ego2global (the ego pose), both from
the dataroot's tables for the sample's LIDAR_TOP sample data. Velocities rotate (no translation) as [vx, vy, 0].

Attributes (the devkit scores them as the AAE; our detections carry none) are those CenterPoint's (det3d's)
nuScenes export writes, from the predicted speed and the threshold 0.2 m/s: above it, vehicles (car, truck,
bus, trailer, construction_vehicle) `vehicle.moving`, bicycles and motorcycles `cycle.with_rider`, pedestrians
`pedestrian.moving`; at or below it, a bus `vehicle.stopped`, the other vehicles `vehicle.parked`, bicycles and
motorcycles `cycle.without_rider`, pedestrians `pedestrian.standing` (det3d's explicit cases, and otherwise
the class's most frequent attribute in nuScenes' training annotations, which det3d takes from its table).
Barrier and traffic_cone get none (the devkit defines and scores no attribute for them; det3d writes the first
name of its all-zero table row there, which the devkit ignores).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from trt_centerpoint._compat.nuscenes import devkit
from trt_centerpoint.data.nuscenes import META_FORMAT, NuScenesSelection
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import TP_METRIC_SHORT, threshold_key

DEVKIT_CONFIG = "detection_cvpr_2019"
MOVING_SPEED = 0.2  # m/s: above it a box is moving (attribute rule)

_VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
_CYCLES = ("bicycle", "motorcycle")
DEVKIT_TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
_SHORT = {**TP_METRIC_SHORT, "attr_err": "mAAE"}
_RESULTS_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def _valid_pose(pose) -> bool:
    def rigid(t):
        return (isinstance(t, dict) and isinstance(t.get("translation"), list) and len(t["translation"]) == 3
                and isinstance(t.get("rotation"), list) and len(t["rotation"]) == 4
                and all(isinstance(v, (int, float)) for v in t["translation"] + t["rotation"]))
    return isinstance(pose, dict) and rigid(pose.get("lidar2ego")) and rigid(pose.get("ego2global"))


def read_converted_meta(folder: str | Path) -> dict | None:
    """The meta.json of a `convert nuscenes` folder (dataroot, version, split, stems, poses per sample token),
    checked; None for a folder of another kind (no meta.json, or another tool's)."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: not a readable meta.json") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        return None
    missing = [k for k in ("dataroot", "version", "split", "stems", "poses") if k not in meta]
    if missing:
        raise UserError(f"{path}: a {META_FORMAT} meta.json without {', '.join(missing)}")
    poses = meta["poses"]
    bad = [t for t in meta["stems"] if not (isinstance(poses, dict) and _valid_pose(poses.get(t)))]
    if bad:
        raise UserError(f"{path}: no valid pose (lidar2ego / ego2global translation [3], rotation [4]) for sample "
                        f"{bad[0]!r}")
    return meta


def selection_from_meta(folder: str | Path) -> NuScenesSelection | None:
    """The dataroot split a `convert nuscenes` folder was made from; None for a folder of another kind."""
    meta = read_converted_meta(folder)
    if meta is None:
        return None
    try:
        return NuScenesSelection(Path(meta["dataroot"]), str(meta["version"]), str(meta["split"]),
                                 int(meta.get("sweeps", 1)), str(meta.get("point_source", "devkit")))
    except UserError as exc:
        raise UserError(f"{Path(folder) / 'meta.json'} names a dataroot the devkit cannot use: {exc}") from None


def default_attribute(name: str, velocity: Sequence[float], stationary: Mapping[str, str] | None = None) -> str:
    """The attribute a detection of class `name` moving at `velocity` (m/s) is given (module docstring);
    `stationary` overrides it per class at or below the speed threshold (OpenPCDet's and MMDetection3D's
    nuScenes export write `vehicle.stopped` for a stationary bus: config `eval.stationary_attribute`)."""
    moving = math.hypot(float(velocity[0]), float(velocity[1])) > MOVING_SPEED
    if not moving and stationary and name in stationary:
        return stationary[name]
    if name == "bus" and not moving:
        return "vehicle.stopped"
    if name in _VEHICLES:
        return "vehicle.moving" if moving else "vehicle.parked"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if name in _CYCLES:
        return "cycle.with_rider" if moving else "cycle.without_rider"
    return ""


def _quaternion(wxyz):
    return devkit("pyquaternion").Quaternion(list(map(float, wxyz)))


def box_to_global(box: Sequence[float], pose: Mapping) -> dict:
    """One LiDAR-frame box as the devkit's translation / size / rotation / velocity in the global frame.

    pose: `{"lidar2ego": {"translation": [3], "rotation": [w, x, y, z]}, "ego2global": {...}}`."""
    quaternion = devkit("pyquaternion").Quaternion
    x, y, z, w, l, h, yaw, vx, vy = (float(v) for v in box)
    l2e, e2g = pose["lidar2ego"], pose["ego2global"]
    q_le, q_eg = _quaternion(l2e["rotation"]), _quaternion(e2g["rotation"])
    centre = q_eg.rotate(q_le.rotate([x, y, z]) + np.asarray(l2e["translation"], float)) + np.asarray(
        e2g["translation"], float)
    heading = quaternion(axis=[0.0, 0.0, 1.0], angle=yaw + math.pi / 2)
    velocity = q_eg.rotate(q_le.rotate([vx, vy, 0.0]))
    return {"translation": [float(v) for v in centre], "size": [w, l, h],
            "rotation": [float(v) for v in (q_eg * q_le * heading).elements],
            "velocity": [float(velocity[0]), float(velocity[1])]}


def to_results(detections: Mapping[str, list[dict]], poses: Mapping[str, Mapping], sample_tokens: Sequence[str],
               max_boxes: int = 500, stationary: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """Our detection JSON as the devkit's results JSON: every sample token present (an empty list where none),
    classes the devkit does not know dropped, at most `max_boxes` per sample (the highest scores: the devkit
    refuses more). Returns (results document, {"unknown_classes": {name: count}, "over_limit": count})."""
    known = set(devkit("nuscenes.eval.detection.constants").DETECTION_NAMES)
    unknown: Counter = Counter()
    over_limit = 0
    results = {}
    for token in sample_tokens:
        dets = [d for d in detections.get(token, ()) if d["name"] in known]
        unknown.update(d["name"] for d in detections.get(token, ()) if d["name"] not in known)
        if len(dets) > max_boxes:
            over_limit += len(dets) - max_boxes
            dets = sorted(dets, key=lambda d: -d["score"])[:max_boxes]
        rows = []
        for d in dets:
            row = {"sample_token": token, **box_to_global(d["box"], poses[token])}
            rows.append({**row, "detection_name": d["name"], "detection_score": float(d["score"]),
                         "attribute_name": default_attribute(d["name"], d["box"][7:9], stationary)})
        results[token] = rows
    return {"meta": dict(_RESULTS_META), "results": results}, {"unknown_classes": dict(unknown),
                                                                "over_limit": over_limit}


def _devkit_error(what: str, exc: BaseException) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(f"{what}: the nuScenes devkit refused it: {first}")


def _count_split_gt(nusc, tokens: Sequence[str]) -> int:
    """Annotations of the samples that map to a detection class (what `load_gt` loads, before its filter)."""
    to_name = devkit("nuscenes.eval.detection.utils").category_to_detection_name
    return sum(to_name(nusc.get("sample_annotation", a)["category_name"]) is not None
               for t in tokens for a in nusc.get("sample", t)["anns"])


def _far_placeholder(token: str, pose: Mapping) -> dict:
    """A box beyond every class range. The devkit cannot filter a result set without a single box (it looks at
    one to learn the box type); its range filter drops this one before any matching, so it changes nothing."""
    far = np.asarray(pose["ego2global"]["translation"], float) + [1e5, 0.0, 0.0]
    return {"sample_token": token, "translation": far.tolist(), "size": [1.0, 1.0, 1.0], "rotation": [1.0, 0, 0, 0],
            "velocity": [0.0, 0.0], "detection_name": "car", "detection_score": 0.0, "attribute_name": ""}


def _summary(metrics, ev, gt_loaded: int) -> dict:
    """The devkit's figures in the shape of `eval.ap.evaluate`'s result (plus NDS and the attribute error)."""
    data = metrics.serialize()
    names = list(ev.cfg.class_names)
    ths = [float(t) for t in ev.cfg.dist_ths]
    per_class_threshold = {n: {threshold_key(t): float(data["label_aps"][n][t]) for t in ths} for n in names}
    tp_errors = {n: {m: float(data["label_tp_errors"][n][m]) for m in DEVKIT_TP_METRICS} for n in names}
    mean_tp = {_SHORT[m]: float(data["tp_errors"][m]) for m in DEVKIT_TP_METRICS}
    num_gt = Counter(b.detection_name for b in ev.gt_boxes.all)
    num_pred = Counter(b.detection_name for b in ev.pred_boxes.all)
    return {
        "metric": "nuscenes",
        "mAP": float(data["mean_ap"]),
        "NDS": float(data["nd_score"]),
        **mean_tp,
        "per_class": {n: float(data["mean_dist_aps"][n]) for n in names},
        "per_class_threshold": per_class_threshold,
        "per_threshold": {threshold_key(t): float(np.mean([per_class_threshold[n][threshold_key(t)] for n in names]))
                          for t in ths},
        "tp_errors": tp_errors,
        "mean_tp_errors": mean_tp,
        "num_gt": {n: num_gt.get(n, 0) for n in names},
        "num_pred": {n: num_pred.get(n, 0) for n in names},
        "num_frames": len(ev.sample_tokens),
        "class_names": names,
        "dist_thresholds": ths,
        "gt_filtered": gt_loaded - len(ev.gt_boxes.all),
    }


def evaluate_nuscenes(detections: Mapping[str, list[dict]], selection: NuScenesSelection,
                      stationary: Mapping[str, str] | None = None) -> dict:
    """Score `detections` ({sample token: our detections in the LiDAR frame}) on the split of `selection` with
    the devkit's `DetectionEval` (detection_cvpr_2019, no plots, its output in a temporary folder that is
    removed).

    Returns `eval.ap.evaluate`'s keys (mAP, per_class, per_class_threshold, tp_errors, mean_tp_errors, num_gt,
    num_pred, ...) computed by the devkit, plus "NDS", the mean TP errors at top level (mATE, mASE, mAOE, mAVE,
    mAAE), "gt_filtered" (GT boxes the devkit's filters removed), "dropped" (detections not scored: unknown
    classes, over the per-sample limit) and "devkit" (what was scored against)."""
    detection_eval = devkit("nuscenes.eval.detection.evaluate")
    config = devkit("nuscenes.eval.common.config").config_factory(DEVKIT_CONFIG)
    nusc, tokens = selection.load(), selection.tokens
    stray = sorted(set(detections) - set(tokens))
    if stray:
        raise UserError(f"{selection}: detections for {len(stray)} sample(s) outside the split, e.g. {stray[0]}")
    gt_loaded = _count_split_gt(nusc, tokens)
    if not gt_loaded:
        raise UserError(f"{selection}: the split has no annotations to score against")
    poses = selection.poses()
    document, dropped = to_results(detections, poses, tokens, config.max_boxes_per_sample, stationary)
    if not any(document["results"].values()):
        document["results"][tokens[0]].append(_far_placeholder(tokens[0], poses[tokens[0]]))
    with tempfile.TemporaryDirectory(prefix="trt_centerpoint_nuscenes_") as tmp:
        result_path = Path(tmp) / "results.json"
        result_path.write_text(json.dumps(document))
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                ev = detection_eval.DetectionEval(nusc, config, str(result_path), eval_set=selection.split,
                                                  output_dir=str(Path(tmp) / "devkit"), verbose=False)
                metrics, _ = ev.evaluate()
        except (AssertionError, ValueError) as exc:
            raise _devkit_error(str(selection), exc) from None
    out = _summary(metrics, ev, gt_loaded)
    out["dropped"] = dropped
    out["devkit"] = {"config": DEVKIT_CONFIG, "dataroot": str(selection.dataroot), "version": selection.version,
                     "split": selection.split}
    return out
