"""`eval --metric nuscenes` / `--detections` against the nuScenes devkit itself, and the built-in AP's filter.

The fixture writes a tiny devkit-loadable v1.0-mini dataroot (the two mini_val scenes, a moving ego, objects
moving at constant velocity, some beyond the devkit's class ranges or without LiDAR points, one category the
detection task does not use) and converts its split with the devkit's own `get_sample_data` into the
`convert nuscenes` folder layout, independently of the code under test.
"""

import json
import math

import numpy as np
import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.eval.nuscenes_metric import default_attribute

pytest.importorskip("nuscenes")
from nuscenes import NuScenes  # noqa: E402
from nuscenes.eval.common.config import config_factory  # noqa: E402
from nuscenes.eval.common.data_classes import EvalBoxes  # noqa: E402
from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt  # noqa: E402
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp  # noqa: E402
from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, TP_METRICS  # noqa: E402
from nuscenes.eval.detection.data_classes import DetectionBox, DetectionMetrics  # noqa: E402
from nuscenes.eval.detection.utils import category_to_detection_name  # noqa: E402
from nuscenes.utils.splits import create_splits_scenes  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

VERSION, SPLIT = "v1.0-mini", "mini_val"
SAMPLES_PER_SCENE = 4
CATEGORIES = {  # category -> (size w, l, h), speed range m/s, GT attributes
    "vehicle.car": ((1.9, 4.6, 1.7), (0.0, 9.0), ("vehicle.moving", "vehicle.parked")),
    "vehicle.truck": ((2.5, 7.0, 3.0), (0.0, 6.0), ("vehicle.moving", "vehicle.stopped")),
    "human.pedestrian.adult": ((0.7, 0.7, 1.75), (0.0, 1.6), ("pedestrian.moving", "pedestrian.standing")),
    "vehicle.bicycle": ((0.6, 1.7, 1.3), (0.0, 5.0), ("cycle.with_rider", "cycle.without_rider")),
    "movable_object.barrier": ((2.5, 0.5, 1.0), (0.0, 0.0), ()),
    "movable_object.trafficcone": ((0.4, 0.4, 0.8), (0.0, 0.0), ()),
    "animal": ((0.5, 1.0, 0.6), (0.0, 2.0), ()),  # no detection class
}
LIDAR2EGO = {"translation": [0.943713, 0.0, 1.84023], "rotation": list(Quaternion(axis=[0, 0, 1], angle=-math.pi / 2))}


def _token(rng):
    return rng.bytes(16).hex()


def write_dataroot(root, seed=0, objects_per_scene=16):
    """A devkit-loadable v1.0-mini dataroot with the mini_val scenes (tables only; no point files needed)."""
    rng = np.random.default_rng(seed)
    t = {name: [] for name in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                               "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
    cat_token = {name: _token(rng) for name in CATEGORIES}
    t["category"] = [{"token": tok, "name": name, "description": ""} for name, tok in cat_token.items()]
    attr_token = {name: _token(rng) for name in ATTRIBUTE_NAMES}
    t["attribute"] = [{"token": tok, "name": name, "description": ""} for name, tok in attr_token.items()]
    t["visibility"] = [{"token": "4", "level": "v80-100", "description": ""}]
    sensor = _token(rng)
    t["sensor"] = [{"token": sensor, "channel": "LIDAR_TOP", "modality": "lidar"}]
    calib = _token(rng)
    t["calibrated_sensor"] = [{"token": calib, "sensor_token": sensor, "camera_intrinsic": [], **LIDAR2EGO}]
    log = _token(rng)
    t["log"] = [{"token": log, "logfile": "synthetic", "vehicle": "n000", "date_captured": "2018-01-01",
                 "location": "singapore-onenorth"}]
    t["map"] = [{"token": _token(rng), "log_tokens": [log], "category": "semantic_prior", "filename": ""}]
    time_us = 1_530_000_000_000_000
    for scene_name in create_splits_scenes()[SPLIT]:
        scene = _token(rng)
        origin, heading = rng.uniform(300, 1500, 2), rng.uniform(-math.pi, math.pi)
        ego_speed = 6.0
        samples = [_token(rng) for _ in range(SAMPLES_PER_SCENE)]
        times = [time_us + k * 500_000 for k in range(SAMPLES_PER_SCENE)]
        time_us += 60_000_000
        ego_at = []
        for k, (sample, ts) in enumerate(zip(samples, times)):
            dt = (ts - times[0]) * 1e-6
            pos = origin + ego_speed * dt * np.array([math.cos(heading), math.sin(heading)])
            yaw = heading + 0.04 * dt
            ego_at.append((pos, yaw))
            pose, sd = _token(rng), _token(rng)
            t["ego_pose"].append({"token": pose, "timestamp": ts, "translation": [*pos.tolist(), 0.0],
                                  "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw))})
            t["sample"].append({"token": sample, "timestamp": ts, "scene_token": scene,
                                "prev": samples[k - 1] if k else "",
                                "next": samples[k + 1] if k + 1 < len(samples) else ""})
            t["sample_data"].append({"token": sd, "sample_token": sample, "ego_pose_token": pose,
                                     "calibrated_sensor_token": calib, "timestamp": ts, "fileformat": "pcd",
                                     "is_key_frame": True, "height": 0, "width": 0,
                                     "filename": f"samples/LIDAR_TOP/{sd}.pcd.bin", "prev": "", "next": ""})
        t["scene"].append({"token": scene, "log_token": log, "nbr_samples": len(samples), "name": scene_name,
                           "first_sample_token": samples[0], "last_sample_token": samples[-1], "description": ""})
        names = list(CATEGORIES)
        for i in range(objects_per_scene):
            category = names[i % len(names)]
            size, (v_lo, v_hi), attrs = CATEGORIES[category]
            dist, bearing = rng.uniform(3, 62), rng.uniform(-math.pi, math.pi)
            start = ego_at[0][0] + dist * np.array([math.cos(bearing), math.sin(bearing)])
            obj_heading = rng.uniform(-math.pi, math.pi)
            speed = 0.0 if rng.random() < 0.3 else rng.uniform(v_lo, v_hi)
            first = int(rng.integers(0, SAMPLES_PER_SCENE))
            last = first if i % 5 == 0 else int(rng.integers(first, SAMPLES_PER_SCENE))
            instance = _token(rng)
            anns = [_token(rng) for _ in range(first, last + 1)]
            for j, k in enumerate(range(first, last + 1)):
                dt = (times[k] - times[0]) * 1e-6
                xy = start + speed * dt * np.array([math.cos(obj_heading), math.sin(obj_heading)])
                attr = [] if not attrs else [attr_token[attrs[0] if speed > 0.5 else attrs[1]]]
                t["sample_annotation"].append({
                    "token": anns[j], "sample_token": samples[k], "instance_token": instance,
                    "visibility_token": "4", "attribute_tokens": attr,
                    "translation": [*xy.tolist(), size[2] / 2 + rng.uniform(-0.3, 0.3)], "size": list(size),
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=obj_heading)),
                    "prev": anns[j - 1] if j else "", "next": anns[j + 1] if j + 1 < len(anns) else "",
                    "num_lidar_pts": 0 if rng.random() < 0.12 else int(rng.integers(1, 60)), "num_radar_pts": 0})
            t["instance"].append({"token": instance, "category_token": cat_token[category],
                                  "nbr_annotations": len(anns), "first_annotation_token": anns[0],
                                  "last_annotation_token": anns[-1]})
    tables = root / VERSION
    tables.mkdir(parents=True)
    for name, rows in t.items():
        (tables / f"{name}.json").write_text(json.dumps(rows))
    return root


def convert_with_devkit(dataroot, out, seed=0):
    """The split as a `convert nuscenes` folder, made with the devkit's `get_sample_data` (boxes in the LiDAR
    frame): labels [x, y, z, w, l, h, yaw = heading - pi/2, vx, vy], meta.json with the poses."""
    rng = np.random.default_rng(seed)
    nusc = NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)
    scenes = set(create_splits_scenes()[SPLIT])
    tokens = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
    (out / "points").mkdir(parents=True)
    (out / "labels").mkdir()
    poses = {}
    for token in tokens:
        sd = nusc.get("sample_data", nusc.get("sample", token)["data"]["LIDAR_TOP"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        _, boxes, _ = nusc.get_sample_data(sd["token"])
        rows, names, points = [], [], []
        for box in boxes:
            name = category_to_detection_name(box.name)
            if name is None:
                continue
            v = np.nan_to_num(nusc.box_velocity(box.token))
            v = Quaternion(cs["rotation"]).inverse.rotate(Quaternion(ep["rotation"]).inverse.rotate(v))
            yaw = (box.orientation.yaw_pitch_roll[0] - math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
            rows.append([*box.center.tolist(), *box.wlh.tolist(), yaw, float(v[0]), float(v[1])])
            names.append(name)
            points.append(nusc.get("sample_annotation", box.token)["num_lidar_pts"])
        (out / "labels" / f"{token}.json").write_text(json.dumps({"boxes": rows, "names": names,
                                                                  "num_lidar_pts": points}))
        rng.standard_normal((20, 5)).astype(np.float32).tofile(out / "points" / f"{token}.bin")
        poses[token] = {"lidar2ego": {"translation": cs["translation"], "rotation": cs["rotation"]},
                        "ego2global": {"translation": ep["translation"], "rotation": ep["rotation"]},
                        "timestamp": sd["timestamp"]}
    (out / "meta.json").write_text(json.dumps({
        "format": "trt_centerpoint.nuscenes/1", "dataroot": str(dataroot.resolve()), "version": VERSION,
        "split": SPLIT, "sweeps": 1, "stems": tokens, "poses": poses}))
    return tokens


@pytest.fixture(scope="module")
def nuscenes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    dataroot = write_dataroot(root / "dataroot")
    tokens = convert_with_devkit(dataroot, root / "converted")
    return root, dataroot, root / "converted", tokens


def _labels_as_detections(folder, tokens, seed=0):
    """The labels that are scored (the devkit drops GT without points) as detections with random scores."""
    rng = np.random.default_rng(seed)
    dets = {}
    for token in tokens:
        label = json.loads((folder / "labels" / f"{token}.json").read_text())
        dets[token] = [{"box": box, "score": float(rng.uniform(0.2, 1.0)), "name": name}
                       for box, name, pts in zip(label["boxes"], label["names"], label["num_lidar_pts"]) if pts]
    return dets


# det3d's nuScenes export (tianweiy/CenterPoint det3d/datasets/nuscenes/nuscenes.py): explicit attributes for a few
# cases, else the class's most frequent attribute in its `cls_attr_dist` table (nuScenes train counts, copied
# here for the classes with attributes)
_DET3D_ATTR_COUNTS = {
    "bicycle": {"cycle.with_rider": 2791, "cycle.without_rider": 8946},
    "bus": {"vehicle.moving": 9092, "vehicle.parked": 3294, "vehicle.stopped": 3881},
    "car": {"vehicle.moving": 114304, "vehicle.parked": 330133, "vehicle.stopped": 46898},
    "construction_vehicle": {"vehicle.moving": 882, "vehicle.parked": 11549, "vehicle.stopped": 2102},
    "motorcycle": {"cycle.with_rider": 4233, "cycle.without_rider": 8326},
    "pedestrian": {"pedestrian.moving": 157444, "pedestrian.sitting_lying_down": 13939,
                   "pedestrian.standing": 46530},
    "trailer": {"vehicle.moving": 3421, "vehicle.parked": 19224, "vehicle.stopped": 1895},
    "truck": {"vehicle.moving": 21339, "vehicle.parked": 55626, "vehicle.stopped": 11097},
}


def _rule_attribute(name, speed):
    """det3d's attribute for a box of class `name` at `speed` (barrier / traffic_cone: none, see the metric)."""
    if name not in _DET3D_ATTR_COUNTS:
        return ""
    if speed > 0.2:
        attr = {"car": "vehicle.moving", "construction_vehicle": "vehicle.moving", "bus": "vehicle.moving",
                "truck": "vehicle.moving", "trailer": "vehicle.moving", "bicycle": "cycle.with_rider",
                "motorcycle": "cycle.with_rider"}.get(name)
    else:
        attr = {"pedestrian": "pedestrian.standing", "bus": "vehicle.stopped"}.get(name)
    counts = _DET3D_ATTR_COUNTS[name]
    return attr or max(counts, key=counts.get)


@pytest.mark.parametrize("name", [*_DET3D_ATTR_COUNTS, "barrier", "traffic_cone"])
@pytest.mark.parametrize("velocity", [(0.0, 0.0), (0.1, -0.15), (0.15, 0.15), (3.0, -4.0)])
def test_attributes_are_det3ds(name, velocity):
    assert default_attribute(name, velocity) == _rule_attribute(name, float(np.hypot(*velocity)))
    if name == "bus" and not any(velocity):
        assert default_attribute(name, velocity) == "vehicle.stopped"


def _devkit_reference(dataroot, scores):
    """The devkit's figures for its own GT boxes with points fed back as predictions (its EvalBoxes built here, the
    score of each box from `scores` in GT order), through its filter, accumulate, calc_ap and calc_tp."""
    nusc = NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    gt = load_gt(nusc, SPLIT, DetectionBox)
    preds = EvalBoxes()
    for token in gt.sample_tokens:
        boxes = []
        for box, score in zip([b for b in gt[token] if b.num_pts], scores[token], strict=True):
            velocity = tuple(np.nan_to_num(box.velocity).tolist())
            boxes.append(DetectionBox(sample_token=token, translation=box.translation, size=box.size,
                                      rotation=box.rotation, velocity=velocity, detection_name=box.detection_name,
                                      detection_score=float(score),
                                      attribute_name=_rule_attribute(box.detection_name, math.hypot(*velocity))))
        preds.add_boxes(token, boxes)
    gt = filter_eval_boxes(nusc, add_center_dist(nusc, gt), cfg.class_range)
    preds = filter_eval_boxes(nusc, add_center_dist(nusc, preds), cfg.class_range)
    metrics = DetectionMetrics(cfg)
    for name in cfg.class_names:
        for th in cfg.dist_ths:
            metrics.add_label_ap(name, th, calc_ap(accumulate(gt, preds, name, cfg.dist_fcn_callable, th),
                                                   cfg.min_recall, cfg.min_precision))
        md = accumulate(gt, preds, name, cfg.dist_fcn_callable, cfg.dist_th_tp)
        for metric in TP_METRICS:
            undefined = ((name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err"))
                         or (name == "barrier" and metric in ("attr_err", "vel_err")))
            metrics.add_label_tp(name, metric, np.nan if undefined else calc_tp(md, cfg.min_recall, metric))
    return metrics, gt


def test_box_to_global_inverts_exactly():
    """LiDAR -> global (through tilted lidar2ego and ego2global poses) and back with pyquaternion: centre and
    heading within 1e-6; velocity too where the poses are level (only [vx, vy] of the global velocity are kept)."""
    from trt_centerpoint.eval.nuscenes_metric import box_to_global

    rng = np.random.default_rng(1)
    for trial in range(50):
        tilted = trial % 2 == 0

        def rotation(yaw):
            q = Quaternion(axis=[0, 0, 1], angle=yaw)
            return q * Quaternion(axis=rng.standard_normal(3), angle=0.05) if tilted else q

        pose = {"lidar2ego": {"translation": rng.uniform(-2, 2, 3).tolist(),
                              "rotation": list(rotation(rng.uniform(-4, 4)))},
                "ego2global": {"translation": rng.uniform(-2000, 2000, 3).tolist(),
                               "rotation": list(rotation(rng.uniform(-4, 4)))}}
        box = [*rng.uniform(-60, 60, 3), *rng.uniform(0.3, 8, 3), rng.uniform(-math.pi, math.pi),
               *rng.uniform(-15, 15, 2)]
        g = box_to_global(box, pose)
        q_le, q_eg = Quaternion(pose["lidar2ego"]["rotation"]), Quaternion(pose["ego2global"]["rotation"])
        centre = q_le.inverse.rotate(q_eg.inverse.rotate(np.subtract(g["translation"], pose["ego2global"][
            "translation"])) - pose["lidar2ego"]["translation"])
        np.testing.assert_allclose(centre, box[:3], atol=1e-6)
        assert g["size"] == pytest.approx(box[3:6], abs=1e-12)
        heading = (q_eg * q_le).inverse * Quaternion(g["rotation"])
        assert abs(heading.angle) < 1e-6 or np.allclose(np.abs(heading.axis), [0, 0, 1], atol=1e-6)
        yaw = heading.yaw_pitch_roll[0] - math.pi / 2
        assert abs((yaw - box[6] + math.pi) % (2 * math.pi) - math.pi) < 1e-6
        if not tilted:
            v = q_le.inverse.rotate(q_eg.inverse.rotate([*g["velocity"], 0.0]))
            np.testing.assert_allclose(v, [box[7], box[8], 0.0], atol=1e-6)


def test_ground_truth_as_detections_scores_perfectly(nuscenes_data, tmp_path, capsys):
    """The labels fed back as detections: AP 1.0 on every class with ground truth, and the devkit's own mAP, NDS
    and TP errors for its GT boxes fed back (computed here from its EvalBoxes, not through our conversion)."""
    _, dataroot, folder, tokens = nuscenes_data
    dets = _labels_as_detections(folder, tokens)
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "metrics.json"
    rc = main(["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", "nuscenes",
               "--detections", str(tmp_path / "dets.json"), "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NDS:" in printed and "mAP:" in printed
    metrics = json.loads(out.read_text())
    present = [n for n, c in metrics["num_gt"].items() if c]
    assert set(present) == {"car", "truck", "pedestrian", "bicycle", "barrier", "traffic_cone"}
    for name in present:
        assert metrics["per_class"][name] == pytest.approx(1.0, abs=1e-12), name
        assert metrics["tp_errors"][name]["trans_err"] < 1e-6 and metrics["tp_errors"][name]["scale_err"] < 1e-6

    # The same scores, in the devkit's GT order (our labels keep the order of the sample's annotations).
    nusc = NuScenes(version=VERSION, dataroot=str(dataroot), verbose=False)
    scores = {}
    for token in tokens:
        records = [nusc.get("sample_annotation", a) for a in nusc.get("sample", token)["anns"]]
        kept = [r for r in records if category_to_detection_name(r["category_name"]) and r["num_lidar_pts"]]
        assert len(kept) == len(dets[token])
        scores[token] = [d["score"] for d in dets[token]]
    reference, gt = _devkit_reference(dataroot, scores)
    assert metrics["mAP"] == pytest.approx(reference.mean_ap, abs=1e-9)
    assert metrics["NDS"] == pytest.approx(reference.nd_score, abs=1e-6)
    for metric, short in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"),
                          ("vel_err", "mAVE"), ("attr_err", "mAAE")):
        assert metrics[short] == pytest.approx(reference.tp_errors[metric], abs=1e-6), short
    assert sum(metrics["num_gt"].values()) == len(gt.all) < sum(len(s) for s in scores.values())
    assert metrics["gt_filtered"] > 0


def _perturbed(dets, seed=2):
    """Detections with noise on the centres (some beyond every threshold), misses and false positives."""
    rng = np.random.default_rng(seed)
    out = {}
    for token, frame in dets.items():
        kept = []
        for d in frame:
            if rng.random() < 0.15:
                continue
            box = list(d["box"])
            box[0] += rng.normal(0, 0.6)
            box[1] += rng.normal(0, 0.6)
            kept.append({**d, "box": box})
        for _ in range(3):
            name = str(rng.choice(["car", "pedestrian", "barrier", "truck", "bicycle", "traffic_cone"]))
            box = [*rng.uniform(-55, 55, 2), 0.5, 1.0, 2.0, 1.5, rng.uniform(-3, 3), 0.0, 0.0]
            kept.append({"box": box, "score": float(rng.uniform(0.1, 1.0)), "name": name})
        out[token] = kept
    return out


def test_builtin_ap_agrees_with_the_devkit(nuscenes_data, tmp_path):
    """Perturbed detections scored both ways: the built-in AP (with nuscenes_voxel0075's class ranges, measured
    from the ego vehicle through the folder's poses, and the no-points filter) keeps the same boxes as the devkit
    and gives the same per-class AP and mAP."""
    _, _, folder, tokens = nuscenes_data
    (tmp_path / "dets.json").write_text(json.dumps(_perturbed(_labels_as_detections(folder, tokens))))
    results = {}
    for metric in ("builtin", "nuscenes"):
        out = tmp_path / f"{metric}.json"
        assert main(["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", metric,
                     "--detections", str(tmp_path / "dets.json"), "--out", str(out), "--quiet"]) == 0
        results[metric] = json.loads(out.read_text())
    builtin, devkit = results["builtin"], results["nuscenes"]
    assert builtin["metric"] == "builtin" and "NDS" not in builtin and "NDS" in devkit
    assert builtin["num_gt"] == devkit["num_gt"]
    assert builtin["num_pred"] == devkit["num_pred"]
    assert builtin["gt_filtered"] == devkit["gt_filtered"] > 0
    assert builtin["filtered"]["gt_without_points"] > 0 and builtin["filtered"]["gt_out_of_range"] > 0
    for name, ap in devkit["per_class"].items():
        assert builtin["per_class"][name] == pytest.approx(ap, abs=1e-9), name
    assert 0.2 < devkit["mAP"] < 0.95
    assert builtin["mAP"] == pytest.approx(devkit["mAP"], abs=1e-9)
    # Not mAVE: the devkit's GT velocity is NaN for an instance annotated once (its AVE then counts 1), the labels
    # store 0 there.
    for short in ("mATE", "mASE", "mAOE"):
        assert builtin["mean_tp_errors"][short] == pytest.approx(devkit[short], abs=1e-6), short


def test_range_from_the_sensor_without_poses(tmp_path):
    """Without poses the range is measured from the LiDAR origin; a box exactly at the range is dropped (the
    devkit keeps only `dist < range`), classes without a range are kept at any distance."""
    from trt_centerpoint.eval.ap import evaluate

    gt = {"f": {"boxes": [[30, 40, 0, 2, 4, 1.5, 0, 0, 0], [49.9, 0, 0, 2, 4, 1.5, 0, 0, 0],
                          [0, 80, 0, 0.5, 0.5, 1.7, 0, 0, 0], [5, 5, 0, 2, 4, 1.5, 0, 0, 0]],
                "names": ["car", "car", "pedestrian", "car"], "num_lidar_pts": [3, 4, 5, 0]}}
    preds = {"f": [{"box": [30, 40, 0, 2, 4, 1.5, 0, 0, 0], "score": 0.9, "name": "car"},
                   {"box": [49.9, 0, 0, 2, 4, 1.5, 0, 0, 0], "score": 0.8, "name": "car"},
                   {"box": [0, 80, 0, 0.5, 0.5, 1.7, 0, 0, 0], "score": 0.7, "name": "pedestrian"}]}
    m = evaluate(preds, gt, ["car", "pedestrian"], class_range={"car": 50.0})
    assert m["num_gt"] == {"car": 1, "pedestrian": 1} and m["num_pred"] == {"car": 1, "pedestrian": 1}
    assert m["filtered"] == {"gt_total": 4, "gt_out_of_range": 1, "gt_without_points": 1, "pred_total": 3,
                             "pred_out_of_range": 1}
    assert m["gt_filtered"] == 2 and m["mAP"] == pytest.approx(1.0, abs=1e-12)
    unfiltered = evaluate(preds, {"f": {k: v for k, v in gt["f"].items() if k != "num_lidar_pts"}},
                          ["car", "pedestrian"])
    assert unfiltered["num_gt"] == {"car": 3, "pedestrian": 1} and unfiltered["gt_filtered"] == 0


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("content, needles", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["expected {frame stem"]),
    ('{"no_such_frame": []}', ["'no_such_frame'", "not in the data set"]),
    ('{"TOKEN": [{"box": [1, 2, 3, 4, 5, 6, 7, 8], "score": 0.5, "name": "car"}]}', ["'TOKEN'", "9 finite"]),
    ('{"TOKEN": [{"box": [1, 2, 3, 4, 5, 6, 7, 8, NaN], "score": 0.5, "name": "car"}]}', ["'TOKEN'", "9 finite"]),
    ('{"TOKEN": [{"box": [1, 2, 3, 4, 5, 6, 7, 8, 9], "score": "high", "name": "car"}]}', ["'TOKEN'", "score"]),
    ('{"TOKEN": {"box": []}}', ["'TOKEN'", "list of detections"]),
])
@pytest.mark.parametrize("metric", ["builtin", "nuscenes"])
def test_bad_detection_files_are_one_line_errors(nuscenes_data, tmp_path, capsys, content, needles, metric):
    _, _, folder, tokens = nuscenes_data
    path = tmp_path / "bad.json"
    path.write_text(content.replace("TOKEN", tokens[0]))
    needles = [n.replace("TOKEN", tokens[0]) for n in needles]
    _one_line_error(capsys, ["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", metric,
                             "--detections", str(path)], str(path), *needles)


def test_missing_detections_file_and_non_nuscenes_data(nuscenes_data, tmp_path, capsys):
    _, _, folder, tokens = nuscenes_data
    _one_line_error(capsys, ["eval", "--data", str(folder), "--detections", str(tmp_path / "none.json")],
                    "none.json", "no such detections file")
    plain = tmp_path / "plain"
    (plain / "points").mkdir(parents=True)
    (plain / "labels").mkdir()
    np.zeros((4, 5), np.float32).tofile(plain / "points" / "a.bin")
    (plain / "labels" / "a.json").write_text(json.dumps({"boxes": [], "names": []}))
    (tmp_path / "dets.json").write_text("{}")
    _one_line_error(capsys, ["eval", "--data", str(plain), "--metric", "nuscenes", "--detections",
                             str(tmp_path / "dets.json")], str(plain), "--metric nuscenes needs nuScenes data")


def test_no_detections_at_all_scores_zero(nuscenes_data, tmp_path):
    """An empty detection file is scored (the devkit alone would fail to filter an empty result set)."""
    _, _, folder, _ = nuscenes_data
    (tmp_path / "dets.json").write_text("{}")
    out = tmp_path / "m.json"
    assert main(["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", "nuscenes",
                 "--detections", str(tmp_path / "dets.json"), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["mAP"] == 0.0 and metrics["NDS"] == 0.0 and sum(metrics["num_pred"].values()) == 0


def test_unknown_classes_are_dropped_with_a_count(nuscenes_data, tmp_path, capsys):
    _, _, folder, tokens = nuscenes_data
    dets = _labels_as_detections(folder, tokens)
    dets[tokens[0]] = dets[tokens[0]] + [{"box": [1, 1, 0, 1, 1, 1, 0, 0, 0], "score": 0.5, "name": "cyclist"}] * 2
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "m.json"
    assert main(["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", "nuscenes",
                 "--detections", str(tmp_path / "dets.json"), "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["dropped"]["unknown_classes"] == {"cyclist": 2}
    assert "cyclist (2)" in capsys.readouterr().out


def test_class_range_config_is_checked(tmp_path, capsys):
    from trt_centerpoint.config import config_to_dict, load_config

    cfg = load_config("nuscenes_voxel0075")
    assert cfg.eval.class_range["car"] == 50.0 and cfg.eval.class_range["traffic_cone"] == 30.0
    assert "eval" not in config_to_dict(load_config("tiny"))  # no eval section: records as before
    for bad, needle in (("{cyclist: 40}", "eval.class_range names cyclist"), ("{car: -1}", "eval.class_range['car']")):
        path = tmp_path / "c.yaml"
        path.write_text("voxel: {point_cloud_range: [-54, -54, -5, 54, 54, 3], voxel_size: [0.6, 0.6, 0.2]}\n"
                        f"eval: {{class_range: {bad}}}\n")
        _one_line_error(capsys, ["eval", "--config", str(path), "--data", str(tmp_path), "--detections", "x"],
                        str(path), needle)


def test_missing_devkit_is_one_line(nuscenes_data, tmp_path, capsys, monkeypatch):
    """Without the devkit (its module absent), --metric nuscenes says how to install it."""
    _, _, folder, _ = nuscenes_data
    (tmp_path / "dets.json").write_text("{}")
    monkeypatch.setitem(__import__("sys").modules, "nuscenes.eval.detection.evaluate", None)
    _one_line_error(capsys, ["eval", "--config", "nuscenes_voxel0075", "--data", str(folder), "--metric", "nuscenes",
                             "--detections", str(tmp_path / "dets.json")],
                    "nuscenes-devkit is not installed: pip install 'trt-centerpoint[nuscenes]'")


@pytest.fixture(scope="module")
def synthetic_dataroot(tmp_path_factory):
    """`synth --format nuscenes` (2 mini_val scenes x 3 samples) and its split converted to a folder."""
    root = tmp_path_factory.mktemp("synthetic_nuscenes")
    assert main(["synth", "--format", "nuscenes", "--out", str(root / "dataroot"), "--quiet"]) == 0
    assert main(["convert", "nuscenes", "--dataroot", str(root / "dataroot"), "--split", SPLIT, "--sweeps", "1",
                 "--out", str(root / "converted"), "--quiet"]) == 0
    tokens = json.loads((root / "converted" / "meta.json").read_text())["stems"]
    return root / "dataroot", root / "converted", tokens


def test_builtin_ap_agrees_with_the_devkit_on_a_synthetic_dataroot(synthetic_dataroot, tmp_path):
    """The generator's dataroot read directly (--data ROOT --split): perturbed detections score the same per-class
    AP with the built-in AP and the devkit, on the same boxes; the labels themselves score AP 1."""
    dataroot, converted, tokens = synthetic_dataroot
    labels = _labels_as_detections(converted, tokens)
    cases = {"labels": labels, "perturbed": _perturbed(labels, seed=5)}
    for case, dets in cases.items():
        (tmp_path / f"{case}.json").write_text(json.dumps(dets))
        results = {}
        for metric in ("builtin", "nuscenes"):
            out = tmp_path / f"{case}.{metric}.json"
            assert main(["eval", "--config", "nuscenes_voxel0075", "--data", str(dataroot), "--split", SPLIT,
                         "--sweeps", "1", "--metric", metric, "--detections", str(tmp_path / f"{case}.json"),
                         "--out", str(out), "--quiet"]) == 0
            results[metric] = json.loads(out.read_text())
        builtin, devkit = results["builtin"], results["nuscenes"]
        assert builtin["num_gt"] == devkit["num_gt"] and builtin["gt_filtered"] == devkit["gt_filtered"]
        present = [n for n, c in devkit["num_gt"].items() if c]
        assert len(present) >= 3
        for name in devkit["class_names"]:
            assert builtin["per_class"][name] == pytest.approx(devkit["per_class"][name], abs=1e-9), (case, name)
            if case == "labels" and name in present:
                assert devkit["per_class"][name] == pytest.approx(1.0, abs=1e-12), name
        assert builtin["mAP"] == pytest.approx(devkit["mAP"], abs=1e-9)
    assert 0.05 < devkit["mAP"] < 0.5  # the perturbed case: far from perfect, far from nothing
