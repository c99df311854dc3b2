"""AP by distance band: boxes assigned by their BEV centre distance (from the ego vehicle where poses are known),
each band scored like the whole set; checked against hand-computed AP and a brute-force split of hand-made boxes."""

import math

import numpy as np
import pytest

from trt_centerpoint.config import ConfigError, config_from_dict, config_to_dict, load_config
from trt_centerpoint.eval.ap import APInputError, band_edges, evaluate, evaluate_bands, format_table

CLASSES = ["car", "pedestrian"]
BANDS = [20.0, 40.0, math.inf]


def _box(x, y, yaw=0.0):
    return [x, y, 0.0, 2.0, 4.0, 1.5, yaw, 0.0, 0.0]


def _det(x, y, score, name="car"):
    return {"box": _box(x, y), "score": score, "name": name}


# frame a: cars at 5 m (found), 25 m (found) and 30 m (missed); a pedestrian at 45 m (found).
# frame b: a car at 12 m (missed: its detection is 3 m off, a false positive in the same band),
# a car at 50 m whose labels say it holds no LiDAR point (not scored).
GT = {
    "a": {"boxes": [_box(5, 0), _box(0, 25), _box(30, 0), _box(0, -45)],
          "names": ["car", "car", "car", "pedestrian"], "num_lidar_pts": [10, 5, 3, 2]},
    "b": {"boxes": [_box(-12, 0), _box(50, 0)], "names": ["car", "car"], "num_lidar_pts": [7, 0]},
}
PRED = {
    "a": [_det(5.1, 0, 0.9), _det(0, 25.2, 0.8), _det(0, -45.1, 0.7, "pedestrian")],
    "b": [_det(-15, 0, 0.6)],
}


def test_each_band_scores_the_boxes_whose_centre_lies_in_it_hand_computed():
    bands = evaluate_bands(PRED, GT, CLASSES, BANDS)
    assert list(bands) == ["0-20 m", "20-40 m", "40+ m"]
    near, mid, far = bands.values()
    assert near["range"] == [0.0, 20.0] and far["range"] == [40.0, None]
    # 0-20 m: 2 car GT (5 m, 12 m); the 0.9 detection is a TP at every threshold (0.1 m off); the 0.6 one (3 m off)
    # is a FP below 4 m: precision 1 at the recall points 0.11..0.49, 0.5 at 0.50 (the FP shares that recall),
    # 0 beyond -> AP = (39 * 0.9 + 0.4) / 90 / 0.9; at 4 m both are TPs: AP 1.
    assert near["num_gt"] == {"car": 2, "pedestrian": 0} and near["classes"] == ["car"]
    low = (39 * 0.9 + 0.4) / 90 / 0.9
    assert near["per_class_threshold"]["car"] == pytest.approx({"0.5": low, "1.0": low, "2.0": low, "4.0": 1.0},
                                                               abs=1e-12)
    assert near["per_class"]["pedestrian"] is None and near["mAP"] == pytest.approx((3 * low + 1) / 4, abs=1e-12)
    # 20-40 m: cars at 25 m (found, 0.2 m off) and 30 m (missed), no FP: precision 1 up to recall 0.5, then 0
    # (np.interp right=0) -> AP = 40 points of 0.9 / 90 / 0.9 at every threshold.
    assert mid["num_gt"]["car"] == 2 and mid["per_class"]["car"] == pytest.approx(40 / 90, abs=1e-12)
    # 40+ m: the pedestrian found; the 50 m car has no LiDAR point: not scored, as in the whole-set AP.
    assert far["num_gt"] == {"car": 0, "pedestrian": 1}
    assert far["per_class"]["pedestrian"] == pytest.approx(1, abs=1e-12)
    assert far["mAP"] == pytest.approx(1, abs=1e-12) and far["per_class"]["car"] is None
    assert far["mean_tp_errors"]["mATE"] == pytest.approx(0.1, abs=1e-9)


def _brute_force_split(preds, gts, lo, hi, origin=(0.0, 0.0)):
    def inside(box):
        return lo <= math.hypot(box[0] - origin[0], box[1] - origin[1]) < hi

    p = {f: [d for d in dets if inside(d["box"])] for f, dets in preds.items()}
    g = {}
    for f, label in gts.items():
        keep = [i for i, b in enumerate(label["boxes"]) if inside(b)]
        g[f] = {"boxes": [label["boxes"][i] for i in keep], "names": [label["names"][i] for i in keep],
                "num_lidar_pts": [label["num_lidar_pts"][i] for i in keep]}
    return p, g


def _random_frames(rng, frames=6, boxes=14):
    gts, preds = {}, {}
    for f in range(frames):
        xy = rng.uniform(-55, 55, (boxes, 2))
        names = rng.choice(CLASSES, boxes).tolist()
        gts[f"f{f}"] = {"boxes": [_box(x, y) for x, y in xy], "names": names,
                        "num_lidar_pts": rng.integers(0, 4, boxes).tolist()}
        keep = rng.random(boxes) < 0.7  # some objects missed, the others found up to 1.5 m off, plus clutter
        found = [(x + dx, y + dy, n) for (x, y), n, k, (dx, dy) in zip(xy, names, keep, rng.normal(0, 0.6, (boxes, 2)))
                 if k]
        clutter = [(x, y, n) for (x, y), n in zip(rng.uniform(-55, 55, (4, 2)), rng.choice(CLASSES, 4))]
        preds[f"f{f}"] = [_det(x, y, float(s), str(n)) for (x, y, n), s in
                          zip(found + clutter, rng.random(len(found) + len(clutter)))]
    return preds, gts


def test_bands_match_a_brute_force_split_then_the_whole_set_metric():
    preds, gts = _random_frames(np.random.default_rng(3))
    bands = evaluate(preds, gts, CLASSES, distance_bands=[20, 35, 50])["bands"]
    for (lo, hi), (label, got) in zip(band_edges([20, 35, 50]), bands.items()):
        p, g = _brute_force_split(preds, gts, lo, hi)
        ref = evaluate(p, g, CLASSES)
        present = [n for n in CLASSES if ref["num_gt"][n]]
        assert got["num_gt"] == ref["num_gt"] and got["num_pred"] == ref["num_pred"], label
        assert got["mAP"] == pytest.approx(np.mean([ref["per_class"][n] for n in present]), abs=1e-12)
        for n in present:
            assert got["per_class"][n] == ref["per_class"][n]
            assert got["tp_errors"][n] == ref["tp_errors"][n]


def test_bands_are_measured_from_the_ego_vehicle_where_poses_are_known():
    preds, gts = _random_frames(np.random.default_rng(4), frames=3)
    # LiDAR frame -> ego-centred global axes: the sensor sits 10 m ahead of the ego origin (x + 10)
    shift = np.array([[1.0, 0, 0, 10.0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    transforms = dict.fromkeys(gts, shift)
    bands = evaluate_bands(preds, gts, CLASSES, [25.0], range_transforms=transforms)
    p, g = _brute_force_split(preds, gts, 0.0, 25.0, origin=(-10.0, 0.0))
    assert bands["0-25 m"]["num_gt"] == evaluate(p, g, CLASSES)["num_gt"]
    p0, g0 = _brute_force_split(preds, gts, 0.0, 25.0)
    assert evaluate(p, g, CLASSES)["num_gt"] != evaluate(p0, g0, CLASSES)["num_gt"]  # the origin mattered here


def test_band_table_and_config():
    metrics = evaluate(PRED, GT, CLASSES, distance_bands=BANDS)
    table = format_table(metrics)
    assert "by distance" in table and "40+ m" in table and "n/a" in table
    assert load_config("synthetic_small").eval.distance_bands == [20.0, 40.0, math.inf]
    assert load_config("nuscenes_voxel0075").eval.distance_bands == [20.0, 30.0, 50.0]
    data = config_to_dict(load_config("tiny"))
    data["eval"] = {"distance_bands": [30, 20]}
    with pytest.raises(ConfigError, match="distance_bands must ascend"):
        config_from_dict(data, "x.yaml")
    with pytest.raises(APInputError, match="ascending"):
        band_edges([0, 10])
