"""`trt-centerpoint eval`: run a model on every labeled frame and score it with nuScenes-style AP.

Any backend x precision of `runtime.pipeline.make_pipeline`: torch (the PyTorch model, FP32 or fake-quant
INT8 from a `trt-centerpoint ptq` checkpoint), onnx (the exported files: scn reference runner + ONNX
Runtime) or trt (scn reference runner + a TensorRT engine of the head); onnx / trt read a build folder
(`--artifacts`).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline

__all__ = ["detect_dataset", "run_eval"]


def detect_dataset(pipe: Pipeline, frames: LabeledFrames, progress: bool = True) -> dict[str, list[dict]]:
    results = {}
    for i in tqdm(range(len(frames)), desc="eval", unit="frame", disable=not progress):
        stem, points, _, _ = frames[i]
        results[stem] = pipe.detect(points).to_json_list()
    return results


def run_eval(cfg: ModelConfig, checkpoint: str | Path, data: str | Path, out: str | Path | None = None,
             dump_detections: str | Path | None = None, backend: str = "torch", precision: str = "fp32",
             progress: bool = True, artifacts: str | Path | None = None) -> dict:
    frames = LabeledFrames(data, cfg.voxel.num_point_features)
    with make_pipeline(cfg, backend, precision, checkpoint=checkpoint, artifacts=artifacts) as pipe:
        predictions = detect_dataset(pipe, frames, progress)
    metrics = evaluate(predictions, frames.ground_truth(), cfg.class_names)
    metrics["model"] = {"config": cfg.name, "checkpoint": None if checkpoint is None else str(checkpoint),
                        "artifacts": None if artifacts is None else str(artifacts), "backend": backend,
                        "precision": precision}
    metrics["config"] = config_to_dict(cfg)
    if dump_detections:
        write_detections(dump_detections, predictions)
    if out:
        atomic_write_json(out, metrics)
    return metrics
