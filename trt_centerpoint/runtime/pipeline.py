"""`points -> detections` (`Pipeline`): voxelize -> backbone runner -> head runner -> decode + NMS.

`make_pipeline(cfg, backend, precision, ...)` picks the runners (`runtime.base` says what each part does):

    backend  backbone (BackboneRunner)               head (HeadRunner, a Polygraphy runner)
    torch    TorchBackbone: PyTorch + spconv          TorchHead: PyTorch
    onnx     ScnRunner on scn.*.onnx (CPU)            OnnxHead: ONNX Runtime on rpn_head.*.onnx (CPU)
    trt      ScnRunner on scn.*.onnx (GPU if spconv   TrtEngineRunner: the TensorRT engine rpn_head.*.plan
             has CUDA)
    libspconv  LibspconvBackbone: NVIDIA's libspconv    the TensorRT engine where it exists and a GPU is
             on scn.*.onnx (GPU; --libspconv DIR)     here, else ONNX Runtime on rpn_head.*.onnx

FP32 or INT8 (fake quant for torch, the INT8 files for onnx / trt). The trt backend runs the sparse part in
the reference runner; the libspconv backend runs NVIDIA's library (in a child process, `runtime/libspconv`).
Why a module above export/ and eval/: it composes both; nothing below imports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trt_centerpoint.artifacts import BACKBONE_FILES, ENGINE_FILES, HEAD_FILES, PRECISIONS
from trt_centerpoint.config import ModelConfig
from trt_centerpoint.errors import UserError
from trt_centerpoint.export.head.export import RPN_HEAD_INPUT
from trt_centerpoint.model.decode import Detections, decode
from trt_centerpoint.model.voxelizer import Voxelizer, VoxelStats, collate
from trt_centerpoint.quant.ptq import load_model_pair
from trt_centerpoint.runtime.base import BackboneRunner, HeadRunner, split_tasks
from trt_centerpoint.runtime.libspconv.locate import ENV_LIBSPCONV, configured_libspconv
from trt_centerpoint.runtime.libspconv.runner import LibspconvBackbone
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.onnxrt import OnnxHead
from trt_centerpoint.runtime.scn_runner import ScnRunner
from trt_centerpoint.runtime.torch_runners import TorchBackbone, TorchHead
from trt_centerpoint.runtime.trt.runner import TrtEngineRunner

BACKENDS = ("torch", "onnx", "trt", "libspconv")
STAGES = ("voxelize", "backbone", "rpn_head", "decode")

__all__ = ["BACKENDS", "PRECISIONS", "STAGES", "Pipeline", "make_pipeline", "split_tasks"]


@dataclass
class Pipeline:
    """voxelize -> backbone -> rpn_head -> decode + NMS; each stage timed when a timer is given.

    The head is activated on first use and deactivated by `close()` (or leaving `with`, or garbage
    collection); until its first frame it can be handed to Polygraphy's `Comparator.run` as it is.
    """

    cfg: ModelConfig
    backbone: BackboneRunner
    head: HeadRunner
    label: str = ""

    def __post_init__(self) -> None:
        self.voxelizer = Voxelizer(self.cfg.voxel)
        self.last_stats = VoxelStats()  # where the points of the last voxelized frame went


    def _stage(self, timer, name: str):
        return timer.stage(name) if timer is not None else contextlib.nullcontext()

    def voxelize(self, points: np.ndarray):
        """One frame's points -> a collated voxel batch (batch index 0); its counts are kept in `last_stats`."""
        batch = collate([self.voxelizer(torch.as_tensor(points, dtype=torch.float32))])
        self.last_stats = batch.stats
        return batch

    def bev(self, points: np.ndarray) -> torch.Tensor | None:
        """The backbone's BEV map for one frame (on the CPU); None when no point falls in range."""
        voxels = self.voxelize(points)
        return self.backbone.run(voxels.features, voxels.coords).cpu() if voxels.num_voxels else None

    def run_head(self, bev: torch.Tensor) -> dict[str, np.ndarray]:
        """The head's outputs for one BEV, as float32 arrays of their own."""
        if not self.head.is_active:
            self.head.activate()
        outputs = self.head.infer({RPN_HEAD_INPUT: bev.float().cpu().numpy()})
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}

    def head_outputs(self, points: np.ndarray, timer=None) -> dict[str, np.ndarray] | None:
        """The head's outputs for one frame; None when no point falls in range."""
        with self._stage(timer, "voxelize"):
            voxels = self.voxelize(points)
        if voxels.num_voxels == 0:
            return None
        with self._stage(timer, "backbone"):
            bev = self.backbone.run(voxels.features, voxels.coords).cpu()
        with self._stage(timer, "rpn_head"):
            return self.run_head(bev)

    def detect(self, points: np.ndarray, timer=None) -> Detections:
        """One frame's points -> its decoded, NMS-filtered detections."""
        outputs = self.head_outputs(points, timer)
        if outputs is None:
            return Detections.empty(self.cfg.class_names)
        with self._stage(timer, "decode"):
            return decode(split_tasks(outputs), self.cfg)[0]

    def close(self) -> None:
        """Deactivate the head (Polygraphy runners hold sessions / engine contexts while active) and end a backbone
        that runs in a child process (libspconv)."""
        if self.head.is_active:
            self.head.deactivate()
        close_backbone = getattr(self.backbone, "close", None)
        if close_backbone is not None:
            close_backbone()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit, when anything may be gone
            self.close()


def _artifact(artifacts, name: str) -> Path:
    if artifacts is None:
        raise UserError(f"this backend runs the exported files: give --artifacts BUILD_DIR (holding {name})")
    path = Path(artifacts) / name
    if not path.is_file():
        raise UserError(f"{path}: missing; {_how_to_make(name, artifacts)}")
    return path


def _how_to_make(name: str, artifacts) -> str:
    """Which command writes `name`: INT8 files need a quantized checkpoint first (`export` of a float one
    writes only the FP32 files), engines need `engine`."""
    if name.endswith(".plan"):
        return f"run `trt-centerpoint build` (or `engine`) into {artifacts} first"
    if ".int8." in name:
        return (f"INT8 files come from a quantized checkpoint: run `trt-centerpoint ptq`, then `export` of its "
                f"ptq.pth into {artifacts} (or `build`)")
    return f"run `trt-centerpoint export` (or `build`) into {artifacts} first"


def make_pipeline(cfg: ModelConfig, backend: str, precision: str, checkpoint=None, artifacts=None,
                  model=None, allow_overflow: bool = False) -> Pipeline:
    """A pipeline for `backend` x `precision`. torch needs `model` or `checkpoint` (int8 needs a quantized
    checkpoint; fp32 takes either: a quantized one runs with its quantizers off); onnx / trt need
    `artifacts` (the build folder); there a frame that overflows a sparse conv's output_bound is an error unless
    `allow_overflow` (`runtime.scn_runner`)."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise UserError(f"--backend {backend} --precision {precision}: choose from {BACKENDS} x {PRECISIONS}")
    label = f"{backend}/{precision}"
    if backend == "torch":
        if model is None:
            if checkpoint is None:
                raise UserError("the torch backend needs --checkpoint")
            float_model, qmodel = load_model_pair(cfg, Path(checkpoint))
            if precision == "int8" and qmodel is None:
                raise UserError(f"{checkpoint}: a float checkpoint; --precision int8 needs a quantized one "
                                "(`trt-centerpoint ptq`)")
            model = qmodel if precision == "int8" else float_model
        return Pipeline(cfg, TorchBackbone(model), TorchHead(model), label)
    if backend == "libspconv":
        return _libspconv_pipeline(cfg, precision, artifacts, label)
    # the sparse part runs where the head runs: CPU for onnx; the GPU for trt when spconv has CUDA there
    device = "cuda" if backend == "trt" and torch.cuda.is_available() else "cpu"
    backbone = ScnRunner(_artifact(artifacts, BACKBONE_FILES[precision]), precision="fp32", device=device,
                         allow_overflow=allow_overflow)
    if backend == "onnx":
        return Pipeline(cfg, backbone, OnnxHead(_artifact(artifacts, HEAD_FILES[precision])), label)
    plan = _artifact(artifacts, ENGINE_FILES[precision])
    return Pipeline(cfg, backbone, TrtEngineRunner(plan, name=f"tensorrt:{plan.name}"), label)


def _libspconv_pipeline(cfg: ModelConfig, precision: str, artifacts, label: str) -> Pipeline:
    """NVIDIA's libspconv on the scn file (gated; needs a GPU: without one no kernel would run), the head on the
    TensorRT engine where one was built and a GPU is here, else on ONNX Runtime."""
    folder = configured_libspconv(None)
    if folder is None:
        raise UserError(f"--backend libspconv needs --libspconv DIR (or {ENV_LIBSPCONV}): the folder with "
                        "include/spconv/*.hpp and lib/libspconv.so")
    spconv = open_libspconv(folder)
    if not spconv.verdict.ok:
        raise UserError(spconv.verdict.line)
    if spconv.host_side:
        raise UserError(f"--backend libspconv runs NVIDIA's kernels and needs a GPU; none here (`check --libspconv "
                        f"{folder}` runs its host-side engine build without one)")
    backbone = LibspconvBackbone(_artifact(artifacts, BACKBONE_FILES[precision]), spconv)
    plan = Path(artifacts) / ENGINE_FILES[precision]
    if plan.is_file():
        return Pipeline(cfg, backbone, TrtEngineRunner(plan, name=f"tensorrt:{plan.name}"), label)
    return Pipeline(cfg, backbone, OnnxHead(_artifact(artifacts, HEAD_FILES[precision])), label)
