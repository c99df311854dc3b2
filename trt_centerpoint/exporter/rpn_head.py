"""RPN + CenterHead -> `rpn_head.fp32.onnx` (standard ONNX, opset 17) for TensorRT, validated on CPU.

Why these names: CUDA-CenterPoint's C++ runtime binds the input `input` [1, C, H, W] and, per task i,
the outputs `reg_i, height_i, dim_i, rot_i, vel_i, hm_i` (in that order, task by task); matching them
lets its runtime load our file. The export uses the TorchScript exporter (`dynamo=False`), the one
pytorch-quantization's Q/DQ export also needs, so FP32 and INT8 files come from the same path.
BatchNorm is folded into the convs by the exporter (eval mode, constant folding).

Validation (`validate_rpn_head`): onnx.checker full check, strict shape inference, and ONNX Runtime
against PyTorch on given BEV inputs (max abs error <= `RPN_HEAD_TOLERANCE` per output).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from torch import nn

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.exporter.passes import PassReport, cleanup_toposort, fold_constants, name_and_order_outputs, run_passes
from trt_centerpoint.exporter.validate import ValidationError

RPN_HEAD_INPUT = "input"
RPN_HEAD_OPSET = 17
RPN_HEAD_TOLERANCE = 1e-4

__all__ = ["RPN_HEAD_INPUT", "RpnHeadExport", "RpnHeadModule", "bev_input_shape", "export_rpn_head",
           "rpn_head_output_names", "validate_rpn_head"]


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


def export_rpn_head(model: nn.Module, cfg: ModelConfig) -> RpnHeadExport:
    """Export the 2D part of `model` (eval mode, CPU) and run the graphsurgeon passes."""
    wrapper = RpnHeadModule(model).eval()
    names = rpn_head_output_names(model)
    dummy = torch.zeros(bev_input_shape(cfg))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (module doc): silence its deprecation notices, and
        # its note about ZeroPad2d's Slice (fold_constants below folds it).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=RPN_HEAD_OPSET,
                          input_names=[RPN_HEAD_INPUT], output_names=names, do_constant_folding=True)
    exported = onnx.load_from_string(buffer.getvalue())
    passes = [fold_constants, functools.partial(name_and_order_outputs, names=names), cleanup_toposort]
    out, reports = run_passes(exported, passes)
    out.producer_name = "trt-centerpoint"
    return RpnHeadExport(out, names, reports)


def validate_rpn_head(exported: RpnHeadExport, model: nn.Module, inputs: list[torch.Tensor],
                      tolerance: float = RPN_HEAD_TOLERANCE) -> dict:
    """Checker + shape inference + ONNX Runtime vs PyTorch; returns figures, raises ValidationError."""
    import onnxruntime as ort

    proto = exported.model
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ValidationError(f"rpn_head: {str(exc).strip().splitlines()[0]}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(exported.to_bytes(), options, providers=["CPUExecutionProvider"])
    got_names = [o.name for o in session.get_outputs()]
    if got_names != exported.output_names:
        raise ValidationError(f"rpn_head: outputs {got_names}, expected {exported.output_names}")
    wrapper = RpnHeadModule(model).eval()
    worst = {name: 0.0 for name in exported.output_names}
    for x in inputs:
        with torch.no_grad():
            ref = wrapper(x.float())
        got = session.run(None, {RPN_HEAD_INPUT: x.float().numpy()})
        for name, r, g in zip(exported.output_names, ref, got):
            worst[name] = max(worst[name], float(np.abs(r.numpy() - g).max()))
    max_abs = max(worst.values()) if worst else 0.0
    figures = {"frames": len(inputs), "max_abs_error": max_abs, "per_output_max_abs_error": worst,
               "tolerance": tolerance}
    if max_abs > tolerance:
        bad = max(worst, key=worst.get)
        raise ValidationError(f"rpn_head: ONNX Runtime differs from PyTorch by {max_abs:.3g} on {bad} "
                              f"(tolerance {tolerance})")
    exported.validation = figures
    return figures
