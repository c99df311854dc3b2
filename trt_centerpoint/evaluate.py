"""`trt-centerpoint eval`: run a model on every labeled frame and score it with nuScenes-style AP.

A backend is anything that maps a point cloud to `Detections`; today that is the PyTorch model in FP32.
The runner stage adds the ONNX Runtime / TensorRT / fake-quant backends behind the same callable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.model.centerpoint import load_model
from trt_centerpoint.model.decode import Detections

Detector = Callable[[np.ndarray], Detections]
BACKENDS = ("torch",)
PRECISIONS = ("fp32", "int8")  # int8: fake-quant PyTorch from a `trt-centerpoint ptq` checkpoint


def make_detector(cfg: ModelConfig, checkpoint: str | Path, backend: str = "torch", precision: str = "fp32") -> Detector:
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise UserError(f"--backend {backend} --precision {precision}: available: {BACKENDS} x {PRECISIONS}")
    if precision == "int8":
        from trt_centerpoint.calib.ptq import load_quantized_model

        model = load_quantized_model(checkpoint, expect_config=cfg)
    else:
        model = load_model(cfg, checkpoint)
    return lambda points: model.detect([torch.from_numpy(points)])[0]


def detect_dataset(detector: Detector, frames: LabeledFrames, progress: bool = True) -> dict[str, list[dict]]:
    results = {}
    for i in tqdm(range(len(frames)), desc="eval", unit="frame", disable=not progress):
        stem, points, _, _ = frames[i]
        results[stem] = detector(points).to_json_list()
    return results


def run_eval(cfg: ModelConfig, checkpoint: str | Path, data: str | Path, out: str | Path | None = None,
             dump_detections: str | Path | None = None, backend: str = "torch", precision: str = "fp32",
             progress: bool = True) -> dict:
    frames = LabeledFrames(data, cfg.voxel.num_point_features)
    detector = make_detector(cfg, checkpoint, backend, precision)
    predictions = detect_dataset(detector, frames, progress)
    metrics = evaluate(predictions, frames.ground_truth(), cfg.class_names)
    metrics["model"] = {"config": cfg.name, "checkpoint": str(checkpoint), "backend": backend, "precision": precision}
    metrics["config"] = config_to_dict(cfg)
    if dump_detections:
        write_detections(dump_detections, predictions)
    if out:
        atomic_write_json(out, metrics)
    return metrics
