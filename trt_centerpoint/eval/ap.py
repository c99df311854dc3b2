"""nuScenes detection metrics: AP per class and distance threshold, mAP, and the TP errors.

This module re-implements the detection metric of the nuScenes devkit
(``nuscenes.eval.detection.algo.accumulate`` / ``calc_ap`` / ``calc_tp``, devkit 1.2.0) on plain
numpy, without the devkit's box classes. ``tests/eval/test_ap.py`` checks it against golden values
produced by the devkit itself (``scripts/make_ap_golden.py``).

Input format (one entry per frame, keyed by a frame id / sample token)::

    predictions  = {frame: [{"box": [x, y, z, w, l, h, yaw, vx, vy], "score": s, "name": "car"}, ...]}
    ground_truth = {frame: {"boxes": [[x, y, z, w, l, h, yaw, vx, vy], ...], "names": ["car", ...]}}

A box may have 7 values (no velocity); its velocity is then NaN. Only x, y matter for AP; the
other values feed the TP errors.

The algorithm, for one class and one distance threshold ``th`` (what the devkit does):

* all predictions of the class, over all frames, sorted by descending score. Equal scores keep the
  devkit's order: it sorts ``(score, index)`` pairs ascending and reverses the list, so among equal
  scores the prediction that comes *later* in the input (frames in the order of the ``predictions``
  dict, boxes in list order) is taken first. Because ties across frames change the order of TP/FP
  in the cumulative sums, AP with tied scores can depend on the frame order -- as in the devkit;
* greedy matching: each prediction takes the closest not yet matched GT of the same class in the
  same frame (BEV centre distance ``sqrt(dx**2 + dy**2)``; among equidistant GTs the first in the
  frame's GT list); it is a TP iff that distance is strictly ``< th``. An unmatched prediction is
  a FP and takes no GT;
* cumulative TP/FP give precision ``tp / (tp + fp)`` and recall ``tp / n_gt``; precision is
  linearly interpolated (``np.interp``, 0 right of the highest recall reached) at the 101 recall
  points ``linspace(0, 1, 101)``. No monotone envelope is taken (the devkit takes none). Where
  several predictions share a recall value (FPs after a TP), ``np.interp`` returns the *last* of
  their precisions at a recall point equal to that value, so e.g. a FP ranked after the last TP
  at recall 1.0 lowers the precision at the point 1.0 -- as in the devkit;
* ``AP = mean(clip(prec[round(100 * min_recall) + 1:] - min_precision, 0)) / (1 - min_precision)``
  with ``min_recall = min_precision = 0.1``, i.e. over the 90 recall points 0.11 .. 1.00.

Edge cases, decided as the devkit decides them:

* a class with no GT at all: ``accumulate`` returns ``DetectionMetricData.no_predictions()``
  (precision all zeros), so its AP is 0.0 at every threshold *and it still counts in mAP* (the
  devkit averages over every configured class). Its TP errors are 1.0;
* a class with GT but no true positive (no predictions, or none close enough): same, AP 0.0,
  TP errors 1.0;
* frames missing from ``predictions`` have no predictions; frames present in ``predictions`` but
  missing from ``ground_truth`` have no GT (all their predictions are FPs);
* names not in ``class_names`` are ignored (both in predictions and GT).

Which boxes are scored follows the devkit's filter (``eval.box_filter``): ground-truth boxes whose labels
say they hold no LiDAR return (``"num_lidar_pts": 0``) are dropped, and with ``class_range`` ground truth
and predictions at or beyond their class's range are dropped (measured from the ego vehicle where
``range_transforms`` gives the frame's poses, else from the sensor).

Distance bands (``distance_bands``, the config's ``eval.distance_bands``: upper band edges in metres, the first
band starting at 0, ``inf`` for "beyond"): the same metric once per band, on the ground truth and the
predictions whose BEV centre distance (from the ego vehicle where ``range_transforms`` gives the poses, as for
``class_range``) lies in ``[low, high)``; each band is then scored exactly like the whole set (its own class
range filter, its own GT count per class). Why: calibration clipping costs far, sparse objects first, and a
mean over all distances hides it. A prediction whose centre falls across a band edge from its object is a false
positive in one band and leaves a miss in the other, as in every range-split AP.

TP errors (computed at the devkit's ``dist_th_tp = 2.0``): ATE (BEV centre distance), ASE
(1 - aligned 3D IoU of the sizes), AOE (smallest yaw difference; period pi for ``barrier``), AVE
(L2 of the velocity difference), each the nan-aware cumulative mean over the TPs, resampled on the
recall points via the confidences and averaged from recall 0.11 to the highest recall reached
(1.0 if that is below 0.11). As in the devkit, ``traffic_cone`` has no AOE/AVE and ``barrier`` no
AVE (NaN), and the means over classes ignore NaNs. The attribute error (AAE) and hence the NDS
are not computed here: the project's format carries no attributes (``eval.nuscenes_metric`` has the devkit
compute them, with attributes derived from the predicted speed). ``nds_without_aae`` is the NDS formula over
the four TP errors there are, ``(5 mAP + sum(1 - min(1, mTP))) / 9``: it weighs box quality next to mAP the
way NDS does, but it is not the nuScenes NDS (that one divides by 10 and includes the AAE).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.box_filter import centre_distance, filter_boxes

DEFAULT_DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
TP_DIST_THRESHOLD = 2.0
N_RECALL_POINTS = 101  # DetectionMetricData.nelem

TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err")
TP_METRIC_SHORT = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE"}
# Errors the devkit does not define for a class (it sets them to NaN).
_UNDEFINED_TP = {"traffic_cone": ("orient_err", "vel_err"), "barrier": ("vel_err",)}


class APInputError(UserError):
    """Predictions or ground truth that do not follow the detection format."""


def threshold_key(th: float) -> str:
    """Key of a distance threshold in the result dicts: ``0.5 -> "0.5"``, ``2 -> "2.0"``."""
    return str(float(th))


# --------------------------------------------------------------------------------------------
# Input collection
# --------------------------------------------------------------------------------------------


def _box_row(box, where: str) -> list[float]:
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError) as exc:
        raise APInputError(f"{where}: box must be a list of numbers, got {box!r}") from exc
    if len(vals) == 7:
        vals += [math.nan, math.nan]
    elif len(vals) != 9:
        raise APInputError(
            f"{where}: box must have 9 values [x, y, z, w, l, h, yaw, vx, vy] (or 7), got {len(vals)}"
        )
    if not (math.isfinite(vals[0]) and math.isfinite(vals[1])):
        raise APInputError(f"{where}: box centre x, y must be finite, got {vals[:2]}")
    return vals


def _collect(predictions, ground_truth, class_names):
    """Flatten the input into arrays (frames as integer ids, classes as indices into class_names)."""
    if not isinstance(predictions, Mapping) or not isinstance(ground_truth, Mapping):
        raise APInputError("predictions and ground_truth must be dicts keyed by frame id")
    cls_index = {name: i for i, name in enumerate(class_names)}
    frame_id: dict = {}

    p_frame, p_cls, p_score, p_box = [], [], [], []
    for frame, dets in predictions.items():
        fid = frame_id.setdefault(frame, len(frame_id))
        if dets is None:
            continue
        for k, det in enumerate(dets):
            where = f"prediction {k} of frame {frame!r}"
            try:
                name, score, box = det["name"], det["score"], det["box"]
            except (KeyError, TypeError) as exc:
                raise APInputError(f"{where}: needs keys 'box', 'score', 'name'") from exc
            c = cls_index.get(name)
            if c is None:
                continue
            score = float(score)
            if math.isnan(score):
                raise APInputError(f"{where}: score is NaN")
            p_frame.append(fid)
            p_cls.append(c)
            p_score.append(score)
            p_box.append(_box_row(box, where))

    g_frame, g_cls, g_box = [], [], []
    for frame, label in ground_truth.items():
        fid = frame_id.setdefault(frame, len(frame_id))
        try:
            boxes, names = label["boxes"], label["names"]
        except (KeyError, TypeError) as exc:
            raise APInputError(f"ground truth of frame {frame!r}: needs keys 'boxes', 'names'") from exc
        if len(boxes) != len(names):
            raise APInputError(
                f"ground truth of frame {frame!r}: {len(boxes)} boxes but {len(names)} names"
            )
        for k, (box, name) in enumerate(zip(boxes, names)):
            c = cls_index.get(name)
            if c is None:
                continue
            g_frame.append(fid)
            g_cls.append(c)
            g_box.append(_box_row(box, f"ground-truth box {k} of frame {frame!r}"))

    def arr(rows, width):
        return np.asarray(rows, dtype=np.float64).reshape(-1, width)

    return (
        np.asarray(p_frame, dtype=np.int64),
        np.asarray(p_cls, dtype=np.int64),
        np.asarray(p_score, dtype=np.float64),
        arr(p_box, 9),
        np.asarray(g_frame, dtype=np.int64),
        np.asarray(g_cls, dtype=np.int64),
        arr(g_box, 9),
    )


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _group_by_frame(frames: np.ndarray) -> dict[int, np.ndarray]:
    """frame id -> positions (ascending) of the entries of that frame."""
    if frames.size == 0:
        return {}
    order = np.argsort(frames, kind="stable")
    uniq, starts = np.unique(frames[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order, starts[1:])))


def _greedy_match(dist: np.ndarray, th: float) -> np.ndarray:
    """Greedy matching of one frame: rows are predictions in processing order, columns GTs.

    Returns for each row the matched column, or -1.
    """
    match = np.full(dist.shape[0], -1, dtype=np.int64)
    candidates = np.flatnonzero(dist.min(axis=1) < th)
    if candidates.size == 0:
        return match
    d = dist.copy()
    for r in candidates.tolist():
        row = d[r]
        j = int(row.argmin())  # first minimum: the devkit keeps the first GT on strict '<'
        if row[j] < th:
            match[r] = j
            d[:, j] = np.inf
    return match


def _bev_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise BEV centre distances, rows a, columns b."""
    dx = a[:, None, 0] - b[None, :, 0]
    dy = a[:, None, 1] - b[None, :, 1]
    return np.sqrt(dx * dx + dy * dy)


# --------------------------------------------------------------------------------------------
# Devkit metric pieces
# --------------------------------------------------------------------------------------------


def _cummean(x: np.ndarray) -> np.ndarray:
    """NaN-aware cumulative mean; all NaN -> ones (as the devkit's ``cummean``)."""
    nan = np.isnan(x)
    if nan.all():
        return np.ones(len(x))
    sums = np.nancumsum(x)
    counts = np.cumsum(~nan)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)


def _angle_diff(x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    diff = np.mod(x - y + period / 2, period) - period / 2
    return np.where(diff > np.pi, diff - 2 * np.pi, diff)


def _wrap_yaw(yaw: np.ndarray) -> np.ndarray:
    # The devkit reads yaw back from a quaternion: atan2 of the rotated x axis, in (-pi, pi].
    return np.arctan2(np.sin(yaw), np.cos(yaw))


def _calc_ap(precision: np.ndarray, min_recall: float, min_precision: float) -> float:
    prec = np.copy(precision)
    prec = prec[round(100 * min_recall) + 1 :]
    prec -= min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def _calc_tp(err: np.ndarray, confidence: np.ndarray, min_recall: float) -> float:
    first = round(100 * min_recall) + 1
    nonzero = np.flatnonzero(confidence)
    last = int(nonzero[-1]) if nonzero.size else 0
    if last < first:
        return 1.0
    return float(np.mean(err[first : last + 1]))


def _class_metric(
    tp_sorted: np.ndarray, conf_sorted: np.ndarray, npos: int, min_recall: float, min_precision: float
):
    """Precision curve at the 101 recall points, interpolated confidences and the AP.

    Returns None where the devkit returns ``no_predictions()`` (no GT or no TP).
    """
    if npos == 0 or not tp_sorted.any():
        return None
    tp = np.cumsum(tp_sorted).astype(float)
    fp = np.cumsum(~tp_sorted).astype(float)
    prec = tp / (fp + tp)
    rec = tp / float(npos)
    rec_interp = np.linspace(0, 1, N_RECALL_POINTS)
    prec_i = np.interp(rec_interp, rec, prec, right=0)
    conf_i = np.interp(rec_interp, rec, conf_sorted, right=0)
    return prec_i, conf_i, _calc_ap(prec_i, min_recall, min_precision)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def evaluate(
    predictions: Mapping[object, Sequence[Mapping]],
    ground_truth: Mapping[object, Mapping],
    class_names: Sequence[str],
    dist_thresholds: Sequence[float] = DEFAULT_DIST_THRESHOLDS,
    *,
    min_recall: float = MIN_RECALL,
    min_precision: float = MIN_PRECISION,
    tp_metrics: bool = True,
    tp_dist_threshold: float = TP_DIST_THRESHOLD,
    class_range: Mapping[str, float] | None = None,
    range_transforms: Mapping[object, np.ndarray] | None = None,
    distance_bands: Sequence[float] = (),
) -> dict:
    """nuScenes detection AP (devkit semantics; see the module docstring).

    Returns a dict::

        {"mAP": float,                                  # mean over classes and thresholds, 0..1
         "per_class": {name: AP},                       # mean over thresholds
         "per_class_threshold": {name: {"0.5": AP, "1.0": AP, ...}},
         "per_threshold": {"0.5": AP, ...},             # mean over classes
         "num_gt": {name: int}, "num_pred": {name: int}, "num_frames": int,
         "class_names": [...], "dist_thresholds": [...],
         "gt_filtered": int,                            # GT boxes not scored (out of range, no points)
         "filtered": {"gt_total", "gt_out_of_range", "gt_without_points", "pred_total", "pred_out_of_range"},
         # with tp_metrics=True:
         "tp_errors": {name: {"trans_err": .., "scale_err": .., "orient_err": .., "vel_err": ..}},
         "mean_tp_errors": {"mATE": .., "mASE": .., "mAOE": .., "mAVE": ..}}

    With `distance_bands` (upper edges, ascending) also ``"bands": evaluate_bands(...)``.
    """
    class_names = list(class_names)
    if not class_names:
        raise APInputError("class_names is empty")
    if len(set(class_names)) != len(class_names):
        raise APInputError(f"class_names has duplicates: {class_names}")
    dist_thresholds = [float(t) for t in dist_thresholds]
    if not dist_thresholds:
        raise APInputError("dist_thresholds is empty")
    if not (0 <= min_precision < 1 and 0 <= min_recall <= 1):
        raise APInputError("need 0 <= min_precision < 1 and 0 <= min_recall <= 1")

    p_frame, p_cls, p_score, p_box, g_frame, g_cls, g_box = _collect(
        predictions, ground_truth, class_names
    )
    predictions, ground_truth, filtered = filter_boxes(predictions, ground_truth, class_range or {},
                                                       range_transforms, classes=set(class_names))
    if filtered["gt_out_of_range"] or filtered["gt_without_points"] or filtered["pred_out_of_range"]:
        p_frame, p_cls, p_score, p_box, g_frame, g_cls, g_box = _collect(predictions, ground_truth, class_names)
    num_frames = len(set(predictions) | set(ground_truth))
    match_ths = list(dict.fromkeys(dist_thresholds + ([float(tp_dist_threshold)] if tp_metrics else [])))

    per_class_threshold: dict[str, dict[str, float]] = {}
    tp_errors: dict[str, dict[str, float]] = {}
    num_gt: dict[str, int] = {}
    num_pred: dict[str, int] = {}

    for c, name in enumerate(class_names):
        p_idx = np.flatnonzero(p_cls == c)
        g_idx = np.flatnonzero(g_cls == c)
        npos = int(g_idx.size)
        num_gt[name] = npos
        num_pred[name] = int(p_idx.size)

        # Devkit order: sorted((score, i)) reversed -> descending score, then descending index.
        scores = p_score[p_idx]
        order = np.lexsort((np.arange(p_idx.size), scores))[::-1]
        sp_frame = p_frame[p_idx][order]
        sp_box = p_box[p_idx][order]
        sp_score = scores[order]
        c_gframe = g_frame[g_idx]
        c_gbox = g_box[g_idx]

        # Per frame: rows = that frame's predictions in processing order, columns = its GTs.
        frames = []
        if npos and p_idx.size:
            gt_groups = _group_by_frame(c_gframe)
            for fid, rows in _group_by_frame(sp_frame).items():
                cols = gt_groups.get(fid)
                if cols is not None:
                    frames.append((rows, cols, _bev_distance(sp_box[rows], c_gbox[cols])))

        results = {}
        for th in match_ths:
            matched = np.full(p_idx.size, -1, dtype=np.int64)  # class-GT index per sorted pred
            for rows, cols, dist in frames:
                m = _greedy_match(dist, th)
                ok = m >= 0
                matched[rows[ok]] = cols[m[ok]]
            results[th] = (
                matched,
                _class_metric(matched >= 0, sp_score, npos, min_recall, min_precision),
            )

        per_class_threshold[name] = {
            threshold_key(th): (0.0 if results[th][1] is None else results[th][1][2])
            for th in dist_thresholds
        }

        if tp_metrics:
            matched, metric = results[float(tp_dist_threshold)]
            errs = {}
            for metric_name in TP_METRICS:
                if metric_name in _UNDEFINED_TP.get(name, ()):
                    errs[metric_name] = math.nan
                elif metric is None:
                    errs[metric_name] = 1.0
                else:
                    errs[metric_name] = _tp_error(
                        metric_name, name, matched, sp_box, sp_score, c_gbox, metric[1], min_recall
                    )
            tp_errors[name] = errs

    per_class = {n: float(np.mean(list(d.values()))) for n, d in per_class_threshold.items()}
    out = {
        "mAP": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "per_class_threshold": per_class_threshold,
        "per_threshold": {
            threshold_key(th): float(np.mean([per_class_threshold[n][threshold_key(th)] for n in class_names]))
            for th in dist_thresholds
        },
        "num_gt": num_gt,
        "num_pred": num_pred,
        "num_frames": num_frames,
        "class_names": class_names,
        "dist_thresholds": dist_thresholds,
        "gt_filtered": filtered["gt_out_of_range"] + filtered["gt_without_points"],
        "filtered": filtered,
    }
    if tp_metrics:
        out["tp_errors"] = tp_errors
        mean_errs = {}
        for metric_name in TP_METRICS:
            vals = np.array([tp_errors[n][metric_name] for n in class_names], dtype=float)
            mean_errs[TP_METRIC_SHORT[metric_name]] = (
                float(np.nanmean(vals)) if not np.isnan(vals).all() else math.nan
            )
        out["mean_tp_errors"] = mean_errs
        out["nds_without_aae"] = nds_without_aae(out["mAP"], mean_errs)
    if distance_bands:
        out["bands"] = evaluate_bands(predictions, ground_truth, class_names, distance_bands,
                                      dist_thresholds=dist_thresholds, min_recall=min_recall,
                                      min_precision=min_precision, tp_metrics=tp_metrics,
                                      tp_dist_threshold=tp_dist_threshold, range_transforms=range_transforms)
    return out


def band_edges(distance_bands: Sequence[float]) -> list[tuple[float, float]]:
    """[(low, high)] of the bands given by their upper edges (the first starts at 0); ascending edges > 0."""
    edges = [float(e) for e in distance_bands]
    if any(not e > 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise APInputError(f"distance bands need ascending upper edges above 0, got {list(distance_bands)}")
    return list(zip([0.0, *edges[:-1]], edges))


def band_label(low: float, high: float) -> str:
    """``0-20 m``, ``40+ m``: the band's key in the results."""
    return f"{low:g}+ m" if math.isinf(high) else f"{low:g}-{high:g} m"


def split_by_band(predictions: Mapping, ground_truth: Mapping, distance_bands: Sequence[float],
                  range_transforms: Mapping[object, np.ndarray] | None = None) -> dict[str, tuple[dict, dict]]:
    """{band label: (predictions, ground truth)} holding the boxes whose BEV centre distance lies in the band
    (per-box lists of a label, e.g. ``num_lidar_pts``, follow their boxes); every frame stays in every band."""
    transforms = range_transforms or {}
    bands = band_edges(distance_bands)
    out = {band_label(lo, hi): ({}, {}) for lo, hi in bands}
    for frame, dets in predictions.items():
        dets = list(dets or ())
        dist = centre_distance([d["box"] for d in dets], transforms.get(frame))
        for lo, hi in bands:
            out[band_label(lo, hi)][0][frame] = [d for d, r in zip(dets, dist) if lo <= r < hi]
    for frame, label in ground_truth.items():
        boxes = list(label["boxes"])
        dist = centre_distance(boxes, transforms.get(frame))
        for lo, hi in bands:
            keep = [i for i, r in enumerate(dist) if lo <= r < hi]
            part = {k: ([v[i] for i in keep] if isinstance(v, list) and len(v) == len(boxes) else v)
                    for k, v in label.items() if k != "boxes"}
            part["boxes"] = [boxes[i] for i in keep]
            out[band_label(lo, hi)][1][frame] = part
    return out


def evaluate_bands(predictions: Mapping, ground_truth: Mapping, class_names: Sequence[str],
                   distance_bands: Sequence[float], *, range_transforms: Mapping[object, np.ndarray] | None = None,
                   **kwargs) -> dict[str, dict]:
    """{band label: figures} for each distance band: ``range`` [low, high], ``mAP``, ``per_class``,
    ``per_class_threshold``, ``num_gt``, ``num_pred`` and (with TP metrics) ``mean_tp_errors``, ``tp_errors``,
    ``nds_without_aae``; keyword arguments as ``evaluate`` (the predictions and ground truth given here have
    already passed the class-range and points filters).

    Unlike the whole-set mAP, a band's means cover only the classes with ground truth in that band (``classes``):
    nuScenes cones end at 30 m, and a 0 for a class that cannot occur there would only hide the others. Their
    per-class figures are None; a band without any ground truth has mAP None."""
    out = {}
    parts = split_by_band(predictions, ground_truth, distance_bands, range_transforms)
    for (lo, hi), (label, (preds, gts)) in zip(band_edges(distance_bands), parts.items()):
        m = evaluate(preds, gts, class_names, range_transforms=range_transforms, **kwargs)
        present = [n for n in class_names if m["num_gt"][n] > 0]
        band = {"range": [lo, None if math.isinf(hi) else hi], "classes": present,
                "mAP": float(np.mean([m["per_class"][n] for n in present])) if present else None,
                "per_class": {n: (m["per_class"][n] if n in present else None) for n in class_names},
                "per_class_threshold": {n: m["per_class_threshold"][n] for n in present},
                "num_gt": m["num_gt"], "num_pred": m["num_pred"]}
        if "tp_errors" in m:
            band["tp_errors"] = {n: m["tp_errors"][n] for n in present}
            means = {}
            for metric_name in TP_METRICS:
                vals = np.array([m["tp_errors"][n][metric_name] for n in present], dtype=float)
                means[TP_METRIC_SHORT[metric_name]] = None if np.isnan(vals).all() else float(np.nanmean(vals))
            band["mean_tp_errors"] = means
            band["nds_without_aae"] = None if band["mAP"] is None else nds_without_aae(
                band["mAP"], {k: (math.nan if v is None else v) for k, v in means.items()})
        out[label] = band
    return out


def nds_without_aae(mean_ap: float, mean_tp_errors: Mapping[str, float]) -> float:
    """(5 mAP + sum over mATE, mASE, mAOE, mAVE of (1 - min(1, error))) / 9; a NaN error counts as 1 (no credit),
    as the devkit's NDS does."""
    credit = [1.0 - min(1.0, e) if e == e else 0.0 for e in mean_tp_errors.values()]
    return float((5.0 * mean_ap + sum(credit)) / (5.0 + len(credit)))


def _tp_error(metric_name, class_name, matched, sp_box, sp_score, c_gbox, conf_interp, min_recall):
    """One TP error of one class (devkit ``accumulate`` match data + ``calc_tp``)."""
    tp = np.flatnonzero(matched >= 0)
    pb = sp_box[tp]
    gb = c_gbox[matched[tp]]
    if metric_name == "trans_err":
        d = pb[:, :2] - gb[:, :2]
        err = np.sqrt(np.sum(d * d, axis=1))
    elif metric_name == "vel_err":
        d = pb[:, 7:9] - gb[:, 7:9]
        err = np.sqrt(np.sum(d * d, axis=1))
    elif metric_name == "scale_err":
        ps, gs = pb[:, 3:6], gb[:, 3:6]
        inter = np.prod(np.minimum(ps, gs), axis=1)
        err = 1 - inter / (np.prod(ps, axis=1) + np.prod(gs, axis=1) - inter)
    elif metric_name == "orient_err":
        period = np.pi if class_name == "barrier" else 2 * np.pi
        err = np.abs(_angle_diff(_wrap_yaw(gb[:, 6]), _wrap_yaw(pb[:, 6]), period))
    else:  # pragma: no cover - guarded by TP_METRICS
        raise ValueError(metric_name)
    tmp = _cummean(err)
    match_conf = sp_score[tp]
    resampled = np.interp(conf_interp[::-1], match_conf[::-1], tmp[::-1])[::-1]
    return _calc_tp(resampled, conf_interp, min_recall)


def format_table(metrics: Mapping) -> str:
    """Plain-text table of per-class AP (per threshold and mean), counts, TP errors and mAP."""
    names = list(metrics["class_names"])
    ths = [threshold_key(t) for t in metrics["dist_thresholds"]]
    has_tp = "tp_errors" in metrics
    w = max([len("class"), len("mean")] + [len(n) for n in names])

    header = [f"{'class':<{w}}"] + [f"{'AP@' + t:>7}" for t in ths] + [f"{'AP':>7}", f"{'#gt':>7}", f"{'#pred':>7}"]
    if has_tp:
        header += [f"{s:>7}" for s in ("ATE", "ASE", "AOE", "AVE")]
    lines = ["  ".join(header)]
    lines.append("-" * len(lines[0]))

    def num(v):
        return f"{'n/a':>7}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:7.4f}"

    for n in names:
        row = [f"{n:<{w}}"] + [num(metrics["per_class_threshold"][n][t]) for t in ths]
        row += [num(metrics["per_class"][n]), f"{metrics['num_gt'][n]:>7d}", f"{metrics['num_pred'][n]:>7d}"]
        if has_tp:
            row += [num(metrics["tp_errors"][n][m]) for m in TP_METRICS]
        lines.append("  ".join(row))
    lines.append("-" * len(lines[0]))
    row = [f"{'mean':<{w}}"] + [num(metrics["per_threshold"][t]) for t in ths] + [num(metrics["mAP"])]
    row += [f"{sum(metrics['num_gt'].values()):>7d}", f"{sum(metrics['num_pred'].values()):>7d}"]
    if has_tp:
        row += [num(metrics["mean_tp_errors"][TP_METRIC_SHORT[m]]) for m in TP_METRICS]
    lines.append("  ".join(row))
    lines.append(f"mAP: {metrics['mAP']:.4f}")
    bands = metrics.get("bands")
    if bands:
        lines += ["", "by distance (BEV centre distance; AP per class, mAP, ground-truth boxes):"]
        cw = max(w, *(len(b) for b in bands))
        lines.append("  ".join([f"{'band':<{cw}}"] + [f"{n:>10}" for n in names] + [f"{'mAP':>7}", f"{'#gt':>7}"]))
        for band, m in bands.items():
            lines.append("  ".join([f"{band:<{cw}}"] + [f"{'n/a':>10}" if m["per_class"][n] is None
                                                          else f"{m['per_class'][n]:10.4f}" for n in names]
                                   + [num(m["mAP"]), f"{sum(m['num_gt'].values()):>7d}"]))
        lines.append("(a band's mAP: mean over the classes with ground truth in it; n/a: none there)")
    return "\n".join(lines)
