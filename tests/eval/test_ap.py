"""Tests of trt_centerpoint.eval.ap: golden values from the nuScenes devkit, plus hand checks.

The golden files come from scripts/make_ap_golden.py (run with nuscenes-devkit 1.2.0 in its own
virtualenv; see that script's header). These tests only read them: no devkit needed here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import (
    APInputError,
    evaluate,
    format_table,
    threshold_key,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_FILES = ("random_cases.json", "edge_cases.json")
TOL = 1e-6


def _load_golden() -> list[dict]:
    cases = []
    for name in GOLDEN_FILES:
        cases.extend(json.loads((GOLDEN_DIR / name).read_text())["cases"])
    return cases


GOLDEN = _load_golden()


def _box(x, y, yaw=0.0, size=(2.0, 4.5, 1.6), vel=(0.0, 0.0)):
    return [x, y, 0.0, *size, yaw, *vel]


def _det(x, y, score, name="car", **kw):
    return {"box": _box(x, y, **kw), "score": score, "name": name}


# ---------------------------------------------------------------------------------------------
# Agreement with the devkit
# ---------------------------------------------------------------------------------------------


def test_golden_files_present_and_small():
    assert len(GOLDEN) >= 30
    total = sum((GOLDEN_DIR / n).stat().st_size for n in GOLDEN_FILES)
    assert total < 200 * 1024
    names = [c["name"] for c in GOLDEN]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_matches_devkit(case):
    res = evaluate(case["predictions"], case["ground_truth"], case["class_names"], case["dist_thresholds"])
    want = case["devkit"]
    for name in case["class_names"]:
        for th in case["dist_thresholds"]:
            key = threshold_key(th)
            assert res["per_class_threshold"][name][key] == pytest.approx(want["ap"][name][key], abs=TOL), (
                name,
                key,
            )
        assert res["per_class"][name] == pytest.approx(want["per_class"][name], abs=TOL)
        for metric, value in want["tp_errors"][name].items():
            got = res["tp_errors"][name][metric]
            if value is None:
                assert math.isnan(got), (name, metric, got)
            else:
                assert got == pytest.approx(value, abs=TOL), (name, metric)
    assert res["mAP"] == pytest.approx(want["mAP"], abs=TOL)
    short = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE"}
    for metric, value in want["mean_tp_errors"].items():
        got = res["mean_tp_errors"][short[metric]]
        if value is None:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(value, abs=TOL)


def test_golden_cases_are_not_trivial():
    """The devkit values cover the whole range, not just 0 and 1."""
    aps = [v for c in GOLDEN for per in c["devkit"]["ap"].values() for v in per.values()]
    assert sum(0.05 < v < 0.95 for v in aps) > 100
    assert any(v == 0.0 for v in aps) and any(v > 0.999 for v in aps)


# ---------------------------------------------------------------------------------------------
# Hand checks
# ---------------------------------------------------------------------------------------------


def test_perfect_prediction_is_one():
    rng = np.random.default_rng(0)
    gt, pred = {}, {}
    for f in range(10):
        boxes = [_box(*rng.uniform(-40, 40, 2)) for _ in range(6)]
        names = ["car", "pedestrian", "barrier"] * 2
        gt[f"f{f}"] = {"boxes": boxes, "names": names}
        pred[f"f{f}"] = [{"box": b, "score": float(rng.uniform(0.1, 1)), "name": n} for b, n in zip(boxes, names)]
    res = evaluate(pred, gt, ["car", "pedestrian", "barrier"])
    assert res["mAP"] == pytest.approx(1.0, abs=1e-9)
    for name in ("car", "pedestrian", "barrier"):
        assert res["per_class"][name] == pytest.approx(1.0, abs=1e-9)
        assert res["tp_errors"][name]["trans_err"] == pytest.approx(0.0, abs=1e-12)
        assert res["tp_errors"][name]["scale_err"] == pytest.approx(0.0, abs=1e-12)
    assert res["num_gt"] == {"car": 20, "pedestrian": 20, "barrier": 20}
    assert res["num_pred"] == {"car": 20, "pedestrian": 20, "barrier": 20}


@pytest.mark.parametrize("predictions", [{}, {"a": [], "b": []}, {"a": None}])
def test_empty_prediction_is_zero(predictions):
    gt = {"a": {"boxes": [_box(0, 0), _box(5, 5)], "names": ["car", "pedestrian"]}, "b": {"boxes": [], "names": []}}
    res = evaluate(predictions, gt, ["car", "pedestrian"])
    assert res["mAP"] == 0.0
    assert res["per_class"] == {"car": 0.0, "pedestrian": 0.0}
    assert res["tp_errors"]["car"] == {"trans_err": 1.0, "scale_err": 1.0, "orient_err": 1.0, "vel_err": 1.0}
    assert res["num_frames"] == 2


def test_hand_computed_precision_curve():
    """npos = 2; processing order FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.

    Interpolated precision p(r) = r on [0, 0.5] and 0.5 + (r - 0.5) / 3 on [0.5, 1]. Over the
    recall points 0.11 .. 1.00 the clipped p - 0.1 sums to
    (0.01 + ... + 0.39) + 0.4 + sum_{k=1..50} (0.4 + k / 300) = 7.8 + 0.4 + 24.25 = 32.45,
    so AP = 32.45 / 90 / 0.9 = 32.45 / 81.
    """
    gt = {"a": {"boxes": [_box(0.0, 0.0), _box(20.0, 0.0)], "names": ["car", "car"]}}
    pred = {"a": [_det(0.2, 0.0, 0.8), _det(50.0, 0.0, 0.9), _det(20.0, 0.3, 0.7)]}
    res = evaluate(pred, gt, ["car"])
    for th in ("0.5", "1.0", "2.0", "4.0"):
        assert res["per_class_threshold"]["car"][th] == pytest.approx(32.45 / 81, abs=1e-12)


def test_hand_computed_thresholds_and_strict_less():
    """One GT, one prediction 0.7 m away (AP 0 at 0.5 m, 1 above); one exactly 1.0 m away."""
    gt = {"a": {"boxes": [_box(0.0, 0.0)], "names": ["car"]}, "b": {"boxes": [_box(0.0, 0.0)], "names": ["truck"]}}
    pred = {"a": [_det(0.0, 0.7, 0.5)], "b": [_det(1.0, 0.0, 0.5, name="truck")]}
    res = evaluate(pred, gt, ["car", "truck"])
    car = res["per_class_threshold"]["car"]
    assert car["0.5"] == 0.0
    assert car["1.0"] == car["2.0"] == car["4.0"] == pytest.approx(1.0, abs=1e-12)
    assert res["per_class"]["car"] == pytest.approx(0.75, abs=1e-12)
    truck = res["per_class_threshold"]["truck"]
    assert truck["0.5"] == truck["1.0"] == 0.0  # d == 1.0 is not < 1.0
    assert truck["2.0"] == pytest.approx(1.0, abs=1e-12)
    assert res["mAP"] == pytest.approx((0.75 + 0.5) / 2, abs=1e-12)
    assert res["per_threshold"]["0.5"] == 0.0
    assert res["per_threshold"]["1.0"] == pytest.approx(0.5, abs=1e-12)


def test_low_recall_below_min_recall_is_zero():
    """10% recall or less never reaches the recall points above min_recall."""
    gt = {"a": {"boxes": [_box(float(5 * i), 0.0) for i in range(10)], "names": ["car"] * 10}}
    res = evaluate({"a": [_det(0.0, 0.0, 0.9)]}, gt, ["car"])
    assert res["mAP"] == 0.0
    assert res["tp_errors"]["car"]["trans_err"] == 1.0  # max recall below 0.11 -> error 1


def test_no_gt_class_counts_as_zero_in_map():
    gt = {"a": {"boxes": [_box(0.0, 0.0)], "names": ["car"]}}
    pred = {"a": [_det(0.0, 0.0, 0.9), _det(9.0, 9.0, 0.9, name="bus")]}
    res = evaluate(pred, gt, ["car", "bus", "bicycle"])
    assert res["per_class"]["car"] == pytest.approx(1.0)
    assert res["per_class"]["bus"] == 0.0 and res["per_class"]["bicycle"] == 0.0
    assert res["mAP"] == pytest.approx(1.0 / 3)
    assert res["num_gt"]["bus"] == 0 and res["num_pred"]["bus"] == 1
    assert res["tp_errors"]["bicycle"]["trans_err"] == 1.0


def test_unknown_names_ignored_and_extra_frames():
    gt = {"a": {"boxes": [_box(0.0, 0.0), _box(3.0, 3.0)], "names": ["car", "animal"]}}
    pred = {
        "a": [_det(0.0, 0.0, 0.9), _det(3.0, 3.0, 0.95, name="animal")],
        "only_in_pred": [_det(0.0, 0.0, 0.1)],  # no GT there: a FP (after the TP)
    }
    res = evaluate(pred, gt, ["car"])
    assert res["num_gt"] == {"car": 1} and res["num_pred"] == {"car": 2}
    # TP then FP, both at recall 1: np.interp on the repeated recall takes the last precision
    # (1/2) at the recall point 1.0, so AP = (89 * 0.9 + 0.4) / 81 -- the devkit's value too.
    assert res["per_class"]["car"] == pytest.approx((89 * 0.9 + 0.4) / 81, abs=1e-12)
    assert res["num_frames"] == 2
    # The FP ranked first instead: precision 0 then 1/2 at recall 1 -> interpolated 0.5 * r.
    pred["only_in_pred"][0]["score"] = 0.99
    res = evaluate(pred, gt, ["car"])
    r = np.linspace(0, 1, 101)[11:]
    expected = np.mean(np.clip(0.5 * r - 0.1, 0, None)) / 0.9
    assert res["per_class"]["car"] == pytest.approx(expected, abs=1e-12)


def test_seven_value_boxes_accepted():
    gt = {"a": {"boxes": [[0.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0]], "names": ["car"]}}
    pred = {"a": [{"box": [0.1, 0.0, 0.0, 2.0, 4.0, 1.5, 0.1], "score": 0.5, "name": "car"}]}
    res = evaluate(pred, gt, ["car"])
    assert res["mAP"] == pytest.approx(1.0)
    assert res["tp_errors"]["car"]["vel_err"] == 1.0  # no velocities: all NaN -> 1, as the devkit
    assert res["tp_errors"]["car"]["orient_err"] == pytest.approx(0.1)


def test_custom_thresholds_and_no_tp_metrics():
    gt = {"a": {"boxes": [_box(0.0, 0.0)], "names": ["car"]}}
    pred = {"a": [_det(0.0, 1.5, 0.5)]}
    res = evaluate(pred, gt, ["car"], dist_thresholds=(1.0, 3.0), tp_metrics=False)
    assert res["per_class_threshold"]["car"] == {"1.0": 0.0, "3.0": pytest.approx(1.0)}
    assert "tp_errors" not in res
    assert "AP@3.0" in format_table(res)


@pytest.mark.parametrize(
    "pred, gt",
    [
        ({"a": [{"box": [0, 0, 0], "score": 0.5, "name": "car"}]}, {}),
        ({"a": [{"box": _box(0, 0), "name": "car"}]}, {}),
        ({"a": [{"box": _box(0, 0), "score": float("nan"), "name": "car"}]}, {}),
        ({"a": [{"box": _box(float("nan"), 0), "score": 0.5, "name": "car"}]}, {}),
        ({}, {"a": {"boxes": [_box(0, 0)], "names": []}}),
        ({}, {"a": {"boxes": [_box(0, 0)]}}),
    ],
)
def test_bad_input_is_user_error(pred, gt):
    with pytest.raises(APInputError):
        evaluate(pred, gt, ["car"])
    assert issubclass(APInputError, UserError)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def _random_scene(seed, n_frames, n_gt, n_extra, classes):
    """Continuous coordinates and unique scores: no ties of any kind."""
    rng = np.random.default_rng(seed)
    gt, pred = {}, {}
    for f in range(n_frames):
        xy = rng.uniform(-50, 50, (n_gt, 2))
        names = [classes[i % len(classes)] for i in range(n_gt)]
        gt[f"f{f}"] = {"boxes": [_box(*p) for p in xy.tolist()], "names": names}
        dets = []
        for p, n in zip(xy, names):
            if rng.random() < 0.8:
                q = p + rng.normal(0, 1.0, 2)
                box = _box(*q.tolist(), yaw=float(rng.normal(0, 0.3)))
                dets.append({"box": box, "score": float(rng.random()), "name": n})
        for q in rng.uniform(-50, 50, (n_extra, 2)).tolist():
            name = classes[int(rng.integers(len(classes)))]
            dets.append({"box": _box(*q), "score": float(rng.random() * 0.6), "name": name})
        pred[f"f{f}"] = dets
    return pred, gt


def test_frame_and_box_permutation_invariance():
    classes = ["car", "pedestrian", "truck"]
    pred, gt = _random_scene(1, 20, 12, 5, classes)
    base = evaluate(pred, gt, classes)
    assert 0.2 < base["mAP"] < 0.95
    rng = np.random.default_rng(7)
    for _ in range(3):
        keys = list(pred)
        rng.shuffle(keys)
        pred2 = {k: [pred[k][i] for i in rng.permutation(len(pred[k]))] for k in keys}
        gkeys = list(gt)
        rng.shuffle(gkeys)
        gt2 = {}
        for k in gkeys:
            perm = rng.permutation(len(gt[k]["names"]))
            gt2[k] = {"boxes": [gt[k]["boxes"][i] for i in perm], "names": [gt[k]["names"][i] for i in perm]}
        res = evaluate(pred2, gt2, classes)
        assert res["mAP"] == pytest.approx(base["mAP"], abs=1e-12)
        for name in classes:
            assert res["per_class_threshold"][name] == pytest.approx(base["per_class_threshold"][name], abs=1e-12)
            assert res["tp_errors"][name] == pytest.approx(base["tp_errors"][name], abs=1e-12)


def test_frame_ids_need_not_be_strings():
    pred, gt = _random_scene(2, 5, 6, 2, ["car"])
    res_str = evaluate(pred, gt, ["car"])
    res_int = evaluate({int(k[1:]): v for k, v in pred.items()}, {int(k[1:]): v for k, v in gt.items()}, ["car"])
    assert res_int["mAP"] == res_str["mAP"]


def test_200_frames_of_50_boxes():
    """A validation-sized input runs through (its speed is a benchmark's business, not a test's)."""
    classes = ["car", "truck", "bus", "pedestrian", "barrier"]
    pred, gt = _random_scene(3, 200, 40, 10, classes)
    assert sum(len(v) for v in pred.values()) > 200 * 40
    res = evaluate(pred, gt, classes)
    assert 0.0 < res["mAP"] < 1.0


def test_format_table():
    pred, gt = _random_scene(4, 5, 6, 2, ["car", "traffic_cone"])
    res = evaluate(pred, gt, ["car", "traffic_cone"])
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["class", "AP@0.5", "AP@1.0", "AP@2.0", "AP@4.0", "AP"]
    assert any(line.startswith("car ") for line in lines)
    assert "n/a" in table  # traffic_cone has no AOE/AVE
    assert lines[-1] == f"mAP: {res['mAP']:.4f}"
    assert f"{res['per_class']['car']:.4f}" in table


def test_nds_without_aae_is_the_nds_formula_over_four_tp_errors():
    from trt_centerpoint.eval.ap import nds_without_aae

    errors = {"mATE": 0.25, "mASE": 0.5, "mAOE": 2.0, "mAVE": float("nan")}
    # 5 x 0.6 + (0.75 + 0.5 + 0 (capped at 1) + 0 (NaN: no credit)) over 9
    assert nds_without_aae(0.6, errors) == pytest.approx((3.0 + 1.25) / 9)
