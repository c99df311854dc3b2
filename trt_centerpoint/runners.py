"""Backends behind one small interface, composed into `points -> detections` (`Pipeline`).

Two parts, each with `run`:
- backbone: `run(features [N, C], coords [N, 4]) -> BEV [1, C*D, H, W]` float32 torch tensor;
  `TorchBackbone` (PyTorch + spconv, FP32 or fake-quant) or `ScnBackbone` (the reference runner
  executing `scn.*.onnx`);
- head: `run(bev) -> {output name: float32 numpy array}` in CUDA-CenterPoint's names (`reg_0` ...
  `hm_0`, ...); `TorchHead`, `OnnxHead` (ONNX Runtime, CPU) or `TrtHead` (a TensorRT engine through
  Polygraphy, imported lazily).

`make_pipeline(backend, precision, ...)` picks them: torch = PyTorch for both parts; onnx = the exported
files (scn reference runner + ONNX Runtime); trt = scn reference runner + the TensorRT engine of the head
(libspconv is a C++ library with no Python binding, so the sparse part runs in the reference runner).
Why a module above exporter/ and engine/: it composes both; nothing below imports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.decode import Detections, decode
from trt_centerpoint.model.voxelizer import Voxelizer, collate

BACKENDS = ("torch", "onnx", "trt")
PRECISIONS = ("fp32", "int8")
STAGES = ("voxelize", "backbone", "rpn_head", "decode")
FILES = {  # (backend part, precision) -> artifact name in the build folder
    ("scn", "fp32"): "scn.fp16.onnx", ("scn", "int8"): "scn.int8.onnx",
    ("onnx", "fp32"): "rpn_head.fp32.onnx", ("onnx", "int8"): "rpn_head.int8.onnx",
    ("trt", "fp32"): "rpn_head.fp32.plan", ("trt", "int8"): "rpn_head.int8.plan",
}

__all__ = ["BACKENDS", "FILES", "PRECISIONS", "STAGES", "OnnxHead", "Pipeline", "ScnBackbone", "TorchBackbone",
           "TorchHead", "TrtHead", "make_pipeline", "split_tasks"]


class TorchBackbone:
    def __init__(self, model):
        self.model, self.name = model, "torch"

    @torch.no_grad()
    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(features, coords, 1).float()


class ScnBackbone:
    def __init__(self, path, device: str = "cpu"):
        from trt_centerpoint.exporter.scn_runner import ScnRunner

        self.runner, self.name = ScnRunner(path, precision="fp32", device=device), f"scn:{Path(str(path)).name}"

    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.runner.run(features, coords).cpu()


class TorchHead:
    def __init__(self, model):
        from trt_centerpoint.exporter.rpn_head import RpnHeadModule, rpn_head_output_names

        self.module, self.names, self.name = RpnHeadModule(model).eval(), rpn_head_output_names(model), "torch"

    @torch.no_grad()
    def run(self, bev: torch.Tensor) -> dict[str, np.ndarray]:
        return {n: t.float().cpu().numpy() for n, t in zip(self.names, self.module(bev))}


class OnnxHead:
    def __init__(self, path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX file (run `trt-centerpoint export` first)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types)
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime:{path.name}"

    def run(self, bev: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input: bev.float().cpu().numpy()})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.names, outputs)}


class TrtHead:
    def __init__(self, plan):
        from trt_centerpoint.engine.trt_runner import TrtEngineRunner

        self.runner = TrtEngineRunner(plan).activate()
        self.names, self.name = self.runner.output_names, f"tensorrt:{Path(plan).name}"

    def run(self, bev: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = self.runner.infer({self.runner.input_names[0]: bev.float().cpu().numpy()})
        return {n: np.asarray(outputs[n], dtype=np.float32) for n in self.names}


def split_tasks(outputs: dict[str, np.ndarray], device="cpu") -> list[dict[str, torch.Tensor]]:
    """Flat `{reg_0: ..., hm_0: ..., reg_1: ...}` -> decode's per-task dicts."""
    tasks: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in outputs.items():
        head, _, index = name.rpartition("_")
        if not index.isdigit():
            raise UserError(f"head output {name!r} is not named <head>_<task> (e.g. hm_0)")
        tasks.setdefault(int(index), {})[head] = torch.as_tensor(value, device=device)
    return [tasks[i] for i in sorted(tasks)]


@dataclass
class Pipeline:
    """voxelize -> backbone -> rpn_head -> decode + NMS; each stage timed when a timer is given."""

    cfg: ModelConfig
    backbone: object
    head: object
    label: str = ""

    def __post_init__(self) -> None:
        self.voxelizer = Voxelizer(self.cfg.voxel)

    def _stage(self, timer, name: str):
        return timer.stage(name) if timer is not None else contextlib.nullcontext()

    def voxelize(self, points: np.ndarray):
        """One frame's points -> a collated voxel batch (batch index 0)."""
        return collate([self.voxelizer(torch.as_tensor(points, dtype=torch.float32))])

    def bev(self, points: np.ndarray) -> torch.Tensor | None:
        """The backbone's BEV map for one frame; None when no point falls in range."""
        voxels = self.voxelize(points)
        return self.backbone.run(voxels.features, voxels.coords) if voxels.num_voxels else None

    def head_outputs(self, points: np.ndarray, timer=None) -> dict[str, np.ndarray] | None:
        """The head's outputs for one frame; None when no point falls in range."""
        with self._stage(timer, "voxelize"):
            voxels = self.voxelize(points)
        if voxels.num_voxels == 0:
            return None
        with self._stage(timer, "backbone"):
            bev = self.backbone.run(voxels.features, voxels.coords)
        with self._stage(timer, "rpn_head"):
            return self.head.run(bev)

    def detect(self, points: np.ndarray, timer=None) -> Detections:
        outputs = self.head_outputs(points, timer)
        if outputs is None:
            return Detections.empty(self.cfg.class_names)
        with self._stage(timer, "decode"):
            return decode(split_tasks(outputs), self.cfg)[0]

    __call__ = detect


def _artifact(artifacts, name: str) -> Path:
    if artifacts is None:
        raise UserError(f"this backend runs the exported files: give --artifacts BUILD_DIR (holding {name})")
    path = Path(artifacts) / name
    if not path.is_file():
        raise UserError(f"{path}: missing; run `trt-centerpoint build` (or export / engine) into {artifacts} first")
    return path


def make_pipeline(cfg: ModelConfig, backend: str, precision: str, checkpoint=None, artifacts=None,
                  model=None) -> Pipeline:
    """A pipeline for `backend` x `precision`. torch needs `model` or `checkpoint` (int8 needs a quantized
    checkpoint; fp32 takes either: a quantized one runs with its quantizers off); onnx / trt need
    `artifacts` (the build folder)."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise UserError(f"--backend {backend} --precision {precision}: choose from {BACKENDS} x {PRECISIONS}")
    label = f"{backend}/{precision}"
    if backend == "torch":
        if model is None:
            if checkpoint is None:
                raise UserError("the torch backend needs --checkpoint")
            from trt_centerpoint.exporter.stage import load_export_models

            float_model, qmodel = load_export_models(cfg, Path(checkpoint))
            if precision == "int8" and qmodel is None:
                raise UserError(f"{checkpoint}: a float checkpoint; --precision int8 needs a quantized one "
                                "(`trt-centerpoint ptq`)")
            model = qmodel if precision == "int8" else float_model
        return Pipeline(cfg, TorchBackbone(model), TorchHead(model), label)
    # the sparse part runs where the head runs: CPU for onnx; the GPU for trt when spconv has CUDA there
    device = "cuda" if backend == "trt" and torch.cuda.is_available() else "cpu"
    backbone = ScnBackbone(_artifact(artifacts, FILES[("scn", precision)]), device=device)
    if backend == "onnx":
        return Pipeline(cfg, backbone, OnnxHead(_artifact(artifacts, FILES[("onnx", precision)])), label)
    return Pipeline(cfg, backbone, TrtHead(_artifact(artifacts, FILES[("trt", precision)])), label)
