"""RPN + CenterHead -> `rpn_head.fp32.onnx` (standard ONNX, opset 17) for TensorRT, validated on CPU.

Why these names: CUDA-CenterPoint's C++ runtime binds the input `input` [1, C, H, W] and, per task i,
the outputs `reg_i, height_i, dim_i, rot_i, vel_i, hm_i` (in that order, task by task); matching them
lets its runtime load our file. The export uses the TorchScript exporter (`dynamo=False`), the one
pytorch-quantization's Q/DQ export also needs, so FP32 and INT8 files come from the same path.
BatchNorm is folded into the convs by the exporter (eval mode, constant folding).

Validation (`validate_rpn_head`): onnx.checker full check, strict shape inference, and ONNX Runtime
against PyTorch FP32 on given BEV inputs: per output, max abs error <= `RPN_HEAD_TOLERANCE` (1e-4) times
max(1, max |output|). The scale matters only for outputs beyond 1 in magnitude: FP32 itself cannot do
better there (a partly trained sample model has outputs up to ~200, where PyTorch FP32 differs from a
float64 run of the same model by ~1.5e-4, and ONNX Runtime from PyTorch by ~2e-4). The figures keep the
plain max abs error and PyTorch FP32's own error against float64 for context (on a central window of the
first BEV: `FP64_WINDOW`).
"""

from __future__ import annotations

import copy
import functools
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.export.head.passes import (
    PassReport,
    cleanup_toposort,
    fold_constants,
    infer_shapes,
    name_and_order_outputs,
    run_passes,
)
from trt_centerpoint.export.validate import ValidationError

RPN_HEAD_INPUT = "input"
RPN_HEAD_OPSET = 17
RPN_HEAD_TOLERANCE = 1e-4
# PyTorch FP32 against float64 (a context figure, not a gate) runs on a central window of the first BEV this many
# cells a side: float64 convolutions on CPU take PyTorch's slow path, about 7x FP32 (10.8 s for one whole
# nuScenes-size 180 x 180 map, the largest single cost of the export); 64 x 64 is 1/8 of that map.
FP64_WINDOW = 64

__all__ = ["RPN_HEAD_INPUT", "RpnHeadExport", "RpnHeadModule", "bev_input_shape", "export_rpn_head",
           "rpn_head_output_names", "trace_rpn_head", "validate_rpn_head"]


def rpn_head_output_names(model: nn.Module) -> list[str]:
    """`reg_0, height_0, ..., hm_0, reg_1, ...`: the head's output names per task, in its order."""
    return [f"{name}_{i}" for i, task in enumerate(model.bbox_head.tasks) for name in task.names]


class RpnHeadModule(nn.Module):
    """neck + bbox_head with a flat tuple output in `rpn_head_output_names` order (what ONNX exports)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.neck, self.bbox_head = model.neck, model.bbox_head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tasks = self.bbox_head(self.neck(x))
        return tuple(out[name] for task, out in zip(self.bbox_head.tasks, tasks) for name in task.names)


@dataclass
class RpnHeadExport:
    model: onnx.ModelProto
    output_names: list[str]
    passes: list[PassReport] = field(default_factory=list)
    validation: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def bev_input_shape(cfg: ModelConfig) -> list[int]:
    return [1, cfg.bev_channels, *cfg.bev_shape]


def trace_rpn_head(wrapper: RpnHeadModule, cfg: ModelConfig) -> onnx.ModelProto:
    """The raw TorchScript export (module doc: why `dynamo=False`) of `wrapper` on a zero BEV, opset 17, the
    input and output names fixed, constants folded; before any pass. The FP32 and the INT8 exports share it."""
    dummy = torch.zeros(bev_input_shape(cfg))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: silence its deprecation notices, and its note about
        # ZeroPad2d's Slice (the fold_constants pass folds it).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=RPN_HEAD_OPSET,
                          input_names=[RPN_HEAD_INPUT], output_names=rpn_head_output_names(wrapper),
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def export_rpn_head(model: nn.Module, cfg: ModelConfig) -> RpnHeadExport:
    """Export the 2D part of `model` (eval mode, CPU) and run the graphsurgeon passes."""
    names = rpn_head_output_names(model)
    exported = trace_rpn_head(RpnHeadModule(model).eval(), cfg)
    passes = [fold_constants, functools.partial(name_and_order_outputs, names=names), cleanup_toposort, infer_shapes]
    out, reports = run_passes(exported, passes)
    out.producer_name = "trt-centerpoint"
    return RpnHeadExport(out, names, reports)


def check_onnx(proto: onnx.ModelProto, what: str) -> None:
    """onnx.checker's full check and strict shape inference, as one ValidationError line naming `what`."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ValidationError(f"{what}: {str(exc).strip().splitlines()[0]}") from None


def central_window(x: torch.Tensor, size: int, align: int = 8) -> torch.Tensor:
    """The central `size` x `size` cells of a BEV map [.., H, W] (the whole map where it is smaller), its corner
    on a multiple of `align` cells so every stride of the RPN sees the same grid as on the whole map."""
    h, w = x.shape[-2:]
    top, left = (max(0, (n - size) // 2) // align * align for n in (h, w))
    return x[..., top:top + size, left:left + size]


@torch.no_grad()
def fp32_vs_fp64(wrapper: nn.Module, x: torch.Tensor) -> float:
    """Max |PyTorch FP32 - PyTorch float64| over the head outputs on `x`: what FP32 itself cannot do better than."""
    ref, ref64 = wrapper(x.float()), copy.deepcopy(wrapper).double()(x.double())
    return max((float((r.double() - r64).abs().max()) for r, r64 in zip(ref, ref64)), default=0.0)


def validate_rpn_head(exported: RpnHeadExport, model: nn.Module, inputs: list[torch.Tensor],
                      tolerance: float = RPN_HEAD_TOLERANCE, runs: dict | None = None) -> dict:
    """Checker + shape inference + ONNX Runtime vs PyTorch; returns figures, raises ValidationError.

    `runs`, when given, receives both runs' outputs per input ({"onnxrt": [...], "pytorch": [...]}, each a
    {name: array} per input): a second comparison (Polygraphy's) then needs no second run."""
    proto = exported.model
    check_onnx(proto, "rpn_head")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # --threads (MLAS splits outputs, not sums)
    options.enable_cpu_mem_arena = False  # a nuScenes-size head: the arena would stay at its GB-size peak
    session = ort.InferenceSession(exported.to_bytes(), options, providers=["CPUExecutionProvider"])
    got_names = [o.name for o in session.get_outputs()]
    if got_names != exported.output_names:
        raise ValidationError(f"rpn_head: outputs {got_names}, expected {exported.output_names}")
    wrapper = RpnHeadModule(model).eval()
    worst = {name: 0.0 for name in exported.output_names}
    scaled = dict(worst)
    for x in inputs:
        with torch.no_grad():
            ref = wrapper(x.float())
        got = session.run(None, {RPN_HEAD_INPUT: x.float().numpy()})
        if runs is not None:
            runs.setdefault("onnxrt", []).append(dict(zip(exported.output_names, got)))
            runs.setdefault("pytorch", []).append({n: r.numpy() for n, r in zip(exported.output_names, ref)})
        for name, r, g in zip(exported.output_names, ref, got):
            err = float(np.abs(r.numpy() - g).max())
            worst[name] = max(worst[name], err)
            scaled[name] = max(scaled[name], err / max(1.0, float(r.abs().max())))
    window = central_window(inputs[0], FP64_WINDOW) if inputs else None
    figures = {"frames": len(inputs), "max_abs_error": max(worst.values(), default=0.0),
               "max_scaled_error": max(scaled.values(), default=0.0), "per_output_max_abs_error": worst,
               "pytorch_fp32_vs_fp64_max_abs": fp32_vs_fp64(wrapper, window) if window is not None else 0.0,
               "pytorch_fp32_vs_fp64_window": list(window.shape[-2:]) if window is not None else None,
               "tolerance": tolerance}
    bad = max(scaled, key=scaled.get) if scaled else None
    if bad is not None and scaled[bad] > tolerance:
        raise ValidationError(f"rpn_head: ONNX Runtime differs from PyTorch by {worst[bad]:.3g} on {bad} "
                              f"({scaled[bad]:.3g} relative to max(1, |{bad}|), tolerance {tolerance})")
    exported.validation = figures
    return figures
