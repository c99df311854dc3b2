"""Golden values for trt_centerpoint.eval.ap, computed by the nuScenes devkit itself.

Writes tests/eval/golden/random_cases.json and tests/eval/golden/edge_cases.json: small detection
cases in the project's format, each with the AP per class and distance threshold, the mAP and the
TP errors (ATE, ASE, AOE, AVE) as the devkit's own ``accumulate`` / ``calc_ap`` / ``calc_tp`` and
``DetectionMetrics`` compute them (``dist_fcn`` = the devkit's ``center_distance``).

The devkit pins numpy<2, so it runs in its own virtualenv, not in the project's. To rerun
(from the repository root; deterministic, the output only changes if the devkit does):

    python3 -m venv /tmp/devkit-venv
    /tmp/devkit-venv/bin/pip install nuscenes-devkit==1.2.0
    /tmp/devkit-venv/bin/python scripts/make_ap_golden.py

(nuscenes-devkit 1.2.0 installed normally with its dependencies on Python 3.11; if it ever does
not, ``pip install --no-deps nuscenes-devkit`` plus ``numpy<2 pyquaternion`` is enough for the
modules used here.) Then run ``pytest tests/eval/test_ap.py``.

This script does not import trt_centerpoint; it only needs the devkit and numpy.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

try:
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.common.utils import center_distance
    from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
    from nuscenes.eval.detection.constants import DETECTION_NAMES
    from nuscenes.eval.detection.data_classes import DetectionBox, DetectionConfig, DetectionMetrics
    from pyquaternion import Quaternion
except ImportError as exc:  # pragma: no cover - tooling
    sys.exit(f"needs nuscenes-devkit (see the header of {__file__}): {exc}")

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "eval" / "golden"
DIST_THS = [0.5, 1.0, 2.0, 4.0]
TP_METRICS = ["trans_err", "scale_err", "orient_err", "vel_err"]
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
DIST_TH_TP = 2.0
CLASS_POOL = ["car", "pedestrian", "barrier", "traffic_cone", "truck"]
N_RANDOM_SEEDS = 30


# ---------------------------------------------------------------------------------------------
# Devkit side
# ---------------------------------------------------------------------------------------------


def _devkit_box(token: str, box: list[float], name: str, score: float | None) -> DetectionBox:
    x, y, z, w, l, h, yaw, vx, vy = box
    kwargs = {}
    if score is not None:
        kwargs["detection_score"] = float(score)
    return DetectionBox(
        sample_token=token,
        translation=(x, y, z),
        size=(w, l, h),
        rotation=tuple(Quaternion(axis=[0.0, 0.0, 1.0], radians=yaw).elements),
        velocity=(vx, vy),
        detection_name=name,
        attribute_name="",
        **kwargs,
    )


def devkit_metrics(case: dict) -> dict:
    """Run the devkit on one case; frames enter EvalBoxes in the order of the case's dicts."""
    gt = EvalBoxes()
    for token, label in case["ground_truth"].items():
        gt.add_boxes(token, [_devkit_box(token, b, n, None) for b, n in zip(label["boxes"], label["names"])])
    pred = EvalBoxes()
    for token, dets in case["predictions"].items():
        pred.add_boxes(token, [_devkit_box(token, d["box"], d["name"], d["score"]) for d in dets])

    classes = case["class_names"]
    cfg = DetectionConfig(
        class_range={c: 50 for c in DETECTION_NAMES},  # the devkit insists on all ten classes

        dist_fcn="center_distance",
        dist_ths=DIST_THS,
        dist_th_tp=DIST_TH_TP,
        min_recall=MIN_RECALL,
        min_precision=MIN_PRECISION,
        max_boxes_per_sample=500,
        mean_ap_weight=5,
    )
    cfg.class_names = list(classes)  # ... but DetectionMetrics averages over cfg.class_names only
    metrics = DetectionMetrics(cfg)
    ap: dict[str, dict[str, float]] = {}
    tp: dict[str, dict[str, float | None]] = {}
    for c in classes:
        ap[c] = {}
        for th in DIST_THS:
            md = accumulate(gt, pred, c, center_distance, th)
            value = calc_ap(md, MIN_RECALL, MIN_PRECISION)
            metrics.add_label_ap(c, th, value)
            ap[c][str(th)] = value
        md = accumulate(gt, pred, c, center_distance, DIST_TH_TP)
        tp[c] = {}
        for m in TP_METRICS + ["attr_err"]:
            # The class-specific NaNs of DetectionEval.evaluate.
            if c == "traffic_cone" and m in ("attr_err", "vel_err", "orient_err"):
                value = math.nan
            elif c == "barrier" and m in ("attr_err", "vel_err"):
                value = math.nan
            else:
                value = calc_tp(md, MIN_RECALL, m)
            metrics.add_label_tp(c, m, value)
            if m != "attr_err":
                tp[c][m] = None if math.isnan(value) else value
    mean_tp = metrics.tp_errors
    return {
        "ap": ap,
        "mAP": metrics.mean_ap,
        "per_class": {c: float(v) for c, v in metrics.mean_dist_aps.items()},
        "tp_errors": tp,
        "mean_tp_errors": {m: (None if math.isnan(mean_tp[m]) else mean_tp[m]) for m in TP_METRICS},
    }


# ---------------------------------------------------------------------------------------------
# Case generation
# ---------------------------------------------------------------------------------------------


def _r(v: float, nd: int = 2) -> float:
    return round(float(v), nd)


def _gt_box(rng, extent: float) -> list[float]:
    x, y = rng.uniform(-extent, extent, 2)
    z = rng.uniform(-1, 1)
    w, l, h = rng.uniform(0.4, 3.0), rng.uniform(0.4, 5.0), rng.uniform(0.5, 3.0)
    yaw = rng.uniform(-math.pi, math.pi)
    vx, vy = rng.normal(0, 3, 2)
    return [_r(x), _r(y), _r(z), _r(w), _r(l), _r(h), _r(yaw, 3), _r(vx), _r(vy)]


def _near(rng, gt: list[float], sigma: float) -> list[float]:
    x, y, z, w, l, h, yaw, vx, vy = gt
    dx, dy = rng.normal(0, sigma, 2)
    yaw_p = yaw + rng.normal(0, 0.4)
    if rng.random() < 0.15:
        yaw_p += math.pi  # flipped heading
    if rng.random() < 0.1:
        yaw_p += 2 * math.pi  # outside (-pi, pi]: must wrap
    scale = rng.uniform(0.7, 1.3, 3)
    return [
        _r(x + dx), _r(y + dy), _r(z + rng.normal(0, 0.2)),
        _r(max(0.05, w * scale[0])), _r(max(0.05, l * scale[1])), _r(max(0.05, h * scale[2])),
        _r(yaw_p, 3), _r(vx + rng.normal(0, 1)), _r(vy + rng.normal(0, 1)),
    ]


def random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    classes = [str(c) for c in rng.choice(CLASS_POOL, size=int(rng.integers(2, 4)), replace=False)]
    n_frames = int(rng.integers(2, 7))
    extent = float(rng.choice([6.0, 15.0]))  # small extent: crowded, many competing matches
    score_decimals = int(rng.choice([1, 2, 3]))  # 1 decimal: many score ties
    no_pred_class = classes[-1] if rng.random() < 0.4 else None
    no_gt_class = classes[0] if rng.random() < 0.25 else None
    nan_velocity = rng.random() < 0.2

    frames = [f"s{seed}_f{i}" for i in range(n_frames)]
    ground_truth, predictions = {}, {}
    for f in frames:
        boxes, names = [], []
        if rng.random() >= 0.2:  # some frames without any GT
            for c in classes:
                if c == no_gt_class:
                    continue
                for _ in range(int(rng.integers(0, 6))):
                    b = _gt_box(rng, extent)
                    if nan_velocity and rng.random() < 0.3:
                        b[7] = b[8] = math.nan
                    boxes.append(b)
                    names.append(c)
        ground_truth[f] = {"boxes": boxes, "names": names}

        dets = []
        for b, c in zip(boxes, names):
            if c == no_pred_class:
                continue
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, detected, duplicated
                sigma = float(rng.choice([0.15, 0.4, 0.9, 1.8, 3.5]))
                det_box = _near(rng, b, sigma)
                if nan_velocity and math.isnan(b[7]):
                    det_box[7], det_box[8] = _r(rng.normal(0, 3)), _r(rng.normal(0, 3))
                dets.append({"box": det_box, "score": _r(rng.uniform(0.05, 1.0), score_decimals), "name": c})
        for _ in range(int(rng.integers(0, 6))):  # clutter
            c = str(rng.choice([k for k in classes if k != no_pred_class]))
            dets.append({"box": _gt_box(rng, extent), "score": _r(rng.uniform(0.0, 0.8), score_decimals), "name": c})
        order = rng.permutation(len(dets))
        predictions[f] = [dets[i] for i in order]

    # Frames missing from predictions count as empty; a prediction-only frame has no GT.
    if n_frames > 2 and rng.random() < 0.4:
        predictions.pop(frames[int(rng.integers(0, n_frames))])
    if rng.random() < 0.2:
        token = f"s{seed}_extra"
        predictions[token] = [
            {"box": _gt_box(rng, extent), "score": _r(rng.uniform(0.1, 0.9), score_decimals), "name": classes[0]}
        ]
    if rng.random() < 0.5:  # shuffled frame order of predictions
        keys = list(predictions)
        predictions = {keys[i]: predictions[keys[i]] for i in rng.permutation(len(keys))}
    return {
        "name": f"random_seed_{seed}",
        "class_names": classes,
        "dist_thresholds": DIST_THS,
        "predictions": predictions,
        "ground_truth": ground_truth,
    }


def _box(x, y, yaw=0.0, size=(2.0, 4.5, 1.6), vel=(0.0, 0.0)):
    return [x, y, 0.0, size[0], size[1], size[2], yaw, vel[0], vel[1]]


def _det(x, y, score, name="car", **kw):
    return {"box": _box(x, y, **kw), "score": score, "name": name}


def edge_cases() -> list[dict]:
    cases = []

    # Distances exactly at the thresholds: a match needs d < th, strictly.
    cases.append({
        "name": "distance_exactly_at_threshold",
        "class_names": ["car", "pedestrian"],
        "predictions": {"a": [_det(10.5, 0.0, 0.9), _det(0.0, 21.0, 0.8), _det(-30.0, -2.0, 0.7),
                              _det(4.0, 4.0, 0.6, name="pedestrian")]},
        "ground_truth": {"a": {"boxes": [_box(10.0, 0.0), _box(0.0, 20.0), _box(-30.0, 2.0), _box(4.0, 6.0)],
                               "names": ["car", "car", "car", "pedestrian"]}},
    })

    # Equidistant GTs: the first GT in the frame's list wins, which decides the next match.
    cases.append({
        "name": "equidistant_gts_first_wins",
        "class_names": ["car", "barrier"],
        "predictions": {"a": [_det(1.0, 0.0, 0.9), _det(2.4, 0.0, 0.8), _det(11.0, 0.0, 0.7),
                              _det(10.3, 0.0, 0.6)]},
        "ground_truth": {"a": {"boxes": [_box(0.0, 0.0), _box(2.0, 0.0), _box(12.0, 0.0), _box(10.0, 0.0)],
                               "names": ["car", "car", "car", "car"]}},
    })

    # Score ties inside a frame: the later prediction in the list is processed first.
    cases.append({
        "name": "score_ties_within_frame",
        "class_names": ["car", "pedestrian"],
        "predictions": {"a": [_det(0.3, 0.0, 0.5), _det(0.1, 0.0, 0.5), _det(5.0, 5.0, 0.5),
                              _det(20.0, 0.0, 0.5), _det(20.2, 0.0, 0.4)]},
        "ground_truth": {"a": {"boxes": [_box(0.0, 0.0), _box(20.0, 0.0), _box(40.0, 0.0)],
                               "names": ["car", "car", "car"]}},
    })

    # Score ties across frames: the TP/FP order (and so AP) follows the frame order.
    # With frames (a, b) the FP of b comes before the TP of a (prec 0, 1/2, 2/3); with (b, a)
    # the TP comes first (prec 1, 1/2, 2/3).
    tie_gt = {"a": {"boxes": [_box(0.0, 0.0)], "names": ["car"]},
              "b": {"boxes": [_box(5.0, 5.0)], "names": ["car"]}}
    tie_a = [_det(0.1, 0.0, 0.7)]
    tie_b = [_det(50.0, 0.0, 0.7), _det(5.0, 5.2, 0.6)]
    cases.append({"name": "score_ties_across_frames_ab", "class_names": ["car", "truck"],
                  "predictions": {"a": tie_a, "b": tie_b}, "ground_truth": tie_gt})
    cases.append({"name": "score_ties_across_frames_ba", "class_names": ["car", "truck"],
                  "predictions": {"b": tie_b, "a": tie_a}, "ground_truth": tie_gt})

    # No GT for a class that has predictions; GT class without predictions; all-FP class.
    cases.append({
        "name": "no_gt_class_and_no_pred_class",
        "class_names": ["car", "truck", "pedestrian", "barrier"],
        "predictions": {"a": [_det(0.0, 0.0, 0.9), _det(5.0, 5.0, 0.8, name="truck"),
                              _det(30.0, 30.0, 0.9, name="barrier")],
                        "b": [_det(1.0, 1.0, 0.3, name="truck")]},
        "ground_truth": {"a": {"boxes": [_box(0.0, 0.0), _box(7.0, 7.0), _box(-5.0, 0.0)],
                               "names": ["car", "pedestrian", "barrier"]},
                         "b": {"boxes": [], "names": []}},
    })

    # Perfect detections, with recall below min_recall in the other class (11 GT, 1 found).
    cases.append({
        "name": "perfect_and_low_recall",
        "class_names": ["car", "pedestrian"],
        "predictions": {"a": [_det(float(i), 0.0, 1.0 - 0.01 * i) for i in range(0, 20, 4)]
                        + [_det(0.0, 3.0, 0.5, name="pedestrian")]},
        "ground_truth": {"a": {"boxes": [_box(float(i), 0.0) for i in range(0, 20, 4)]
                               + [_box(float(i), 3.0) for i in range(11)],
                               "names": ["car"] * 5 + ["pedestrian"] * 11}},
    })

    # Orientation: barrier period pi, yaw outside (-pi, pi], traffic cone without AOE/AVE.
    cases.append({
        "name": "orientation_periods",
        "class_names": ["barrier", "car", "traffic_cone"],
        "predictions": {"a": [_det(0.0, 0.0, 0.9, name="barrier", yaw=math.pi - 0.1),
                              _det(5.0, 0.0, 0.8, name="barrier", yaw=0.3),
                              _det(10.0, 0.0, 0.7, yaw=3 * math.pi - 0.2),
                              _det(15.0, 0.0, 0.6, yaw=-3.0, vel=(1.0, 2.0)),
                              _det(20.0, 0.0, 0.5, name="traffic_cone", yaw=2.0)]},
        "ground_truth": {"a": {"boxes": [_box(0.0, 0.0, yaw=0.0), _box(5.0, 0.0, yaw=0.3 + math.pi),
                                         _box(10.0, 0.0, yaw=math.pi), _box(15.0, 0.0, yaw=3.0),
                                         _box(20.0, 0.0, yaw=0.0)],
                               "names": ["barrier", "barrier", "car", "car", "traffic_cone"]}},
    })
    for c in cases:
        c["dist_thresholds"] = DIST_THS
    return cases


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": "scripts/make_ap_golden.py",
        "nuscenes_devkit": importlib.metadata.version("nuscenes-devkit"),
        "numpy": np.__version__,
    }
    for fname, cases in (
        ("random_cases.json", [random_case(s) for s in range(N_RANDOM_SEEDS)]),
        ("edge_cases.json", edge_cases()),
    ):
        for case in cases:
            with warnings.catch_warnings():  # nanmean over classes that are all NaN (e.g. AVE)
                warnings.simplefilter("ignore", RuntimeWarning)
                case["devkit"] = devkit_metrics(case)
        text = json.dumps({"meta": meta, "cases": cases}, separators=(",", ":"))
        (OUT_DIR / fname).write_text(text + "\n")
        print(f"{fname}: {len(cases)} cases, {len(text) / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
