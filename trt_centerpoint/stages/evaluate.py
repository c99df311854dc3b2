"""`trt-centerpoint eval`: run a model on every labeled frame (or read its detection JSON) and score it.

Any backend x precision of `runtime.pipeline.make_pipeline`: torch (the PyTorch model, FP32 or fake-quant
INT8 from a `trt-centerpoint ptq` checkpoint), onnx (the exported files: scn reference runner + ONNX
Runtime) or trt (scn reference runner + a TensorRT engine of the head); onnx / trt read a build folder
(`--artifacts`). With `detections`, no model runs: an existing detection JSON is scored.

Two metrics: "builtin" (`eval.ap`, the devkit's AP re-implemented, with the config's `eval.class_range`) and
"nuscenes" (the nuScenes devkit itself, `eval.nuscenes_metric`; needs nuScenes data: a dataroot split, or a
`convert nuscenes` folder, whose meta.json names the dataroot and split).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.detections import read_detections, write_detections
from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.source import frame_stem
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.eval.box_filter import ego_centred_transform
from trt_centerpoint.eval.nuscenes_metric import evaluate_nuscenes, read_converted_meta, selection_from_meta
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline

__all__ = ["METRICS", "detect_dataset", "eval_notes", "range_transforms", "run_eval", "score"]

METRICS = ("builtin", "nuscenes")


def detect_dataset(pipe: Pipeline, frames: LabeledFrames, progress: bool = True) -> dict[str, list[dict]]:
    results = {}
    for i in tqdm(range(len(frames)), desc="eval", unit="frame", disable=not progress):
        stem, points, _, _ = frames[i]
        results[stem] = pipe.detect(points).to_json_list()
    return results


def range_transforms(root) -> dict | None:
    """{stem: LiDAR -> ego-centred global axes} from the poses of a nuScenes split (a selection, or a `convert
    nuscenes` folder's meta.json), so the class ranges are measured from the ego vehicle as the devkit measures
    them; None (from the sensor) for other folders."""
    if isinstance(root, NuScenesSelection):
        poses = root.poses()
    else:
        meta = read_converted_meta(root)
        poses = None if meta is None else meta["poses"]
    return None if poses is None else {stem: ego_centred_transform(pose) for stem, pose in poses.items()}


def score(predictions: dict[str, list[dict]], frames: LabeledFrames, cfg: ModelConfig, metric: str) -> dict:
    """Score `predictions` on `frames` with the built-in AP or the nuScenes devkit."""
    if metric == "nuscenes":
        selection = frames.root if isinstance(frames.root, NuScenesSelection) else selection_from_meta(frames.root)
        if selection is None:
            raise UserError(f"{frames.root}: --metric nuscenes needs nuScenes data: a dataroot (with --split) or a "
                            "folder made by `trt-centerpoint convert nuscenes` (its meta.json names the dataroot)")
        return evaluate_nuscenes(predictions, selection, cfg.eval.stationary_attribute)
    return evaluate(predictions, frames.ground_truth(), cfg.class_names, class_range=cfg.eval.class_range,
                    range_transforms=range_transforms(frames.root))


def run_eval(cfg: ModelConfig, checkpoint: str | Path | None, data: str | Path, out: str | Path | None = None,
             dump_detections: str | Path | None = None, backend: str = "torch", precision: str = "fp32",
             progress: bool = True, artifacts: str | Path | None = None, metric: str = "builtin",
             detections: str | Path | None = None, allow_overflow: bool = False) -> dict:
    """Score the model (or, with `detections`, that detection JSON) on the labeled frames of `data`."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    frames = LabeledFrames(data, cfg.voxel.num_point_features)
    if detections is not None:
        predictions = read_detections(detections, stems=[frame_stem(f) for f in frames.files])
    else:
        with make_pipeline(cfg, backend, precision, checkpoint=checkpoint, artifacts=artifacts,
                           allow_overflow=allow_overflow) as pipe:
            predictions = detect_dataset(pipe, frames, progress)
    metrics = score(predictions, frames, cfg, metric)
    metrics["metric"] = metric
    if detections is not None:
        metrics["model"] = {"config": cfg.name, "detections": str(detections)}
    else:
        metrics["model"] = {"config": cfg.name, "checkpoint": None if checkpoint is None else str(checkpoint),
                            "artifacts": None if artifacts is None else str(artifacts), "backend": backend,
                            "precision": precision}
    metrics["config"] = config_to_dict(cfg)
    if dump_detections:
        write_detections(dump_detections, predictions)
    if out:
        atomic_write_json(out, metrics)
    return metrics


def eval_notes(metrics: dict) -> list[str]:
    """Lines to print under the AP table: the NDS and the attribute error (devkit only), what was not scored."""
    lines = []
    if "NDS" in metrics:
        lines.append(f"NDS: {metrics['NDS']:.4f}  (mAAE {metrics['mAAE']:.4f})")
    filtered = metrics.get("filtered")
    if filtered and (metrics["gt_filtered"] or filtered["pred_out_of_range"]):
        lines.append(f"not scored: {filtered['gt_out_of_range']} GT box(es) out of range, "
                     f"{filtered['gt_without_points']} without points, {filtered['pred_out_of_range']} "
                     "detection(s) out of range")
    elif metrics.get("gt_filtered"):
        lines.append(f"not scored: {metrics['gt_filtered']} GT box(es) (the devkit's range, points and bicycle-rack "
                     "filters)")
    dropped = metrics.get("dropped") or {}
    if dropped.get("unknown_classes"):
        named = ", ".join(f"{n} ({c})" for n, c in sorted(dropped["unknown_classes"].items()))
        lines.append(f"not scored: detections of classes the devkit does not know: {named}")
    if dropped.get("over_limit"):
        lines.append(f"not scored: {dropped['over_limit']} detection(s) beyond the devkit's limit per sample")
    return lines
