"""`trt-centerpoint eval`: run a model on every labeled frame (or read its detection JSON) and score it.

Any backend x precision of `runtime.pipeline.make_pipeline`: torch (the PyTorch model, FP32 or fake-quant
INT8 from a `trt-centerpoint ptq` checkpoint; a `ptq` / `qat` checkpoint is scored at INT8 unless the
precision says fp32, and every eval names what it scores in one line), onnx (the exported files: scn
reference runner + ONNX Runtime) or trt (scn reference runner + a TensorRT engine of the head); onnx / trt
read a build folder (`--artifacts`). With `detections`, no model runs: an existing detection JSON is scored.

Two metrics: "builtin" (`eval.ap`, the devkit's AP re-implemented, with the config's `eval.class_range`) and
"nuscenes" (the nuScenes devkit itself, `eval.nuscenes_metric`; needs nuScenes data: a dataroot split, or a
`convert nuscenes` folder, whose meta.json names the dataroot and split).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from trt_centerpoint import __version__
from trt_centerpoint.artifacts import BACKBONE_FILES, ENGINE_FILES, HEAD_FILES, PRECISIONS
from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.detections import read_detections, write_detections
from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.source import frame_stem
from trt_centerpoint.distributed import DistContext, broadcast, context, gather, lockstep, shutdown
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.eval.box_filter import ego_centred_transform
from trt_centerpoint.eval.detection_stream import DetectionPart, part_path
from trt_centerpoint.eval.nuscenes_metric import evaluate_nuscenes, read_converted_meta, selection_from_meta
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.manifest import file_sha256, json_sha256
from trt_centerpoint.quant.ptq import is_quantized_checkpoint, read_ptq_meta
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline

__all__ = ["METRICS", "checkpoint_kind", "default_precision", "describe_subject", "detect_dataset", "eval_notes",
           "range_transforms", "run_eval", "run_key", "score"]

METRICS = ("builtin", "nuscenes")


def detect_dataset(pipe: Pipeline, frames: LabeledFrames, part: DetectionPart | None, ctx: DistContext,
                   progress: bool = True) -> None:
    """Detect on every frame not yet in `part` (rank 0's part file; None on the other ranks), frame by frame.

    Under torchrun each step runs one frame per rank and rank 0 appends the step's detections in frame order,
    so the part file (and everything computed from it) is the same as one process's."""
    stems = [frame_stem(f) for f in frames.files]
    done = broadcast(part.open() if part is not None else None, ctx)
    todo = [i for i, stem in enumerate(stems) if stem not in done]
    bar = tqdm(total=len(stems), initial=len(stems) - len(todo), desc="eval", unit="frame",
               disable=not (progress and ctx.is_main))
    with bar:
        for indices, mine in lockstep(todo, ctx):
            result = None
            if mine is not None:
                i = todo[mine]
                result = (i, pipe.detect(frames[i][1]).to_json_list())
            for row in gather(result, ctx) or []:
                if row is not None:
                    part.append(stems[row[0]], row[1])
            bar.update(len(indices))


def run_key(cfg: ModelConfig, frames: LabeledFrames, backend: str, precision: str, checkpoint=None, artifacts=None,
            allow_overflow: bool = False) -> str:
    """A hash of what decides the detections: the model's files, the frames, the config and the options. A part
    file of another key is not resumed. Point files count by name, size and modification time (hashing 6,019
    frames' contents would take longer than reading them once)."""
    files = {}
    if backend == "torch":
        files["checkpoint"] = file_sha256(checkpoint)
    else:
        heads = HEAD_FILES if backend == "onnx" else ENGINE_FILES
        files = {name: file_sha256(Path(artifacts) / name) for name in (BACKBONE_FILES[precision], heads[precision])}
    if isinstance(frames.root, NuScenesSelection):
        data = {"nuscenes": frames.root.fingerprint}
    else:
        data = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in frames.files]
    return json_sha256({"version": __version__, "config": config_to_dict(cfg), "backend": backend,
                        "precision": precision, "allow_overflow": allow_overflow, "files": files, "frames": data})


def _detect_streamed(cfg: ModelConfig, frames: LabeledFrames, part_file: Path, ctx: DistContext, backend: str,
                     precision: str, checkpoint, artifacts, allow_overflow: bool, progress: bool,
                     log: Callable[[str], None]) -> tuple[dict | None, DetectionPart | None]:
    """(predictions, the part file to remove once the results are written) on rank 0; (None, None) elsewhere."""
    with make_pipeline(cfg, backend, precision, checkpoint=checkpoint, artifacts=artifacts,
                       allow_overflow=allow_overflow) as pipe:
        part = None
        if ctx.is_main:
            key = run_key(cfg, frames, backend, precision, checkpoint, artifacts, allow_overflow)
            part = DetectionPart(part_file, key, [frame_stem(f) for f in frames.files], log)
        try:
            detect_dataset(pipe, frames, part, ctx, progress)
        finally:
            if part is not None:
                part.close()
    return (part.read(), part) if part is not None else (None, None)


def checkpoint_kind(checkpoint: str | Path) -> str:
    """"float" for a det3d-layout checkpoint; for a quantized one the stage that wrote it ("ptq" or "qat")."""
    if not is_quantized_checkpoint(Path(checkpoint)):
        return "float"
    return str(read_ptq_meta(checkpoint).get("stage") or "ptq")


def default_precision(backend: str, kind: str | None) -> str:
    """The precision an eval without `--precision` runs: INT8 for a quantized checkpoint on the torch backend (a
    user who calibrated expects the quantized model, not the float one inside it), else FP32."""
    return "int8" if backend == "torch" and kind in ("ptq", "qat") else "fp32"


def describe_subject(backend: str, precision: str, kind: str | None, checkpoint=None, artifacts=None,
                     detections=None) -> str:
    """One line saying what an eval scores: the file, its kind, the precision and the backend."""
    if detections is not None:
        return f"scoring the detections in {detections} (no model runs)"
    if backend == "torch":
        how = {"int8": "INT8 (fake quant)", "fp32": "FP32"}[precision]
        if precision == "fp32" and kind != "float":
            how += ", its quantizers off"
        return f"evaluating {checkpoint} ({kind} checkpoint) at {how} on the torch backend (PyTorch)"
    runs = ENGINE_FILES[precision] if backend == "trt" else HEAD_FILES[precision]
    return (f"evaluating the {precision.upper()} files of {artifacts} ({BACKBONE_FILES[precision]} + {runs}) on the "
            f"{backend} backend")


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
                    range_transforms=range_transforms(frames.root), distance_bands=cfg.eval.distance_bands)


def run_eval(cfg: ModelConfig, checkpoint: str | Path | None, data: str | Path, out: str | Path | None = None,
             dump_detections: str | Path | None = None, backend: str = "torch", precision: str | None = None,
             progress: bool = True, artifacts: str | Path | None = None, metric: str = "builtin",
             detections: str | Path | None = None, allow_overflow: bool = False,
             max_frames: int | None = None, announce: Callable[[str], None] | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Score the model (or, with `detections`, that detection JSON) on the labeled frames of `data` (`max_frames`
    of them, evenly spread; None: all). `precision` None: `default_precision`. `announce` gets one line saying
    what is scored (`describe_subject`, also in the metrics' "model" record) before the frames run.

    The detections are streamed to `<out or dump_detections>.part.jsonl` (`eval.detection_stream`), so a killed
    run resumes there. Under torchrun the ranks share the frames and rank 0 scores and writes; every rank returns
    the metrics."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--frames must be >= 1, got {max_frames}")
    if max_frames is not None and metric == "nuscenes":
        raise UserError("--frames with --metric nuscenes: the nuScenes devkit scores a whole split; use --metric "
                        "builtin for a subset")
    frames = LabeledFrames(data, cfg.voxel.num_point_features, limit=max_frames)
    kind = None
    if detections is None and backend == "torch" and checkpoint is not None:
        kind = checkpoint_kind(checkpoint)
    precision = precision or default_precision(backend, kind)
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    subject = describe_subject(backend, precision, kind, checkpoint, artifacts, detections)
    ctx = context()
    if announce is not None and ctx.is_main:
        announce(f"{subject}, {len(frames)} frame(s)")
    scratch = None
    try:
        part = None
        if detections is not None:
            predictions = read_detections(detections, stems=[frame_stem(f) for f in frames.files]) \
                if ctx.is_main else None
        else:
            target = out or dump_detections
            if target is None:  # nothing to resume into: a part file of this run only
                scratch = Path(tempfile.mkdtemp(prefix="trt_centerpoint_eval_"))
            part_file = part_path(target) if target is not None else scratch / "detections.part.jsonl"
            predictions, part = _detect_streamed(cfg, frames, part_file, ctx, backend, precision, checkpoint,
                                                 artifacts, allow_overflow, progress, log)
        metrics = None
        if ctx.is_main:
            metrics = _score_and_write(predictions, frames, cfg, metric, out, dump_detections, checkpoint, backend,
                                       precision, artifacts, detections, kind, subject)
            if part is not None:
                part.remove()  # the results are written: nothing left to resume
        return broadcast(metrics, ctx)
    finally:
        if scratch is not None:
            for leftover in scratch.iterdir():
                leftover.unlink()
            scratch.rmdir()
        shutdown(ctx)


def _score_and_write(predictions, frames, cfg, metric, out, dump_detections, checkpoint, backend, precision,
                     artifacts, detections, kind, subject) -> dict:
    metrics = score(predictions, frames, cfg, metric)
    metrics["metric"] = metric
    if detections is not None:
        metrics["model"] = {"config": cfg.name, "detections": str(detections), "evaluated": subject}
    else:
        metrics["model"] = {"config": cfg.name, "checkpoint": None if checkpoint is None else str(checkpoint),
                            "artifacts": None if artifacts is None else str(artifacts), "backend": backend,
                            "precision": precision, "checkpoint_kind": kind, "evaluated": subject}
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
