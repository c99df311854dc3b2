"""Insert quantizers into a CenterPoint by walking its module tree; layers are picked by glob patterns.

``quantize_model(model, skip=DEFAULT_SKIP)`` swaps, in place:

- spconv ``SubMConv3d`` / ``SparseConv3d`` / ``SparseInverseConv3d`` -> the quantized spconv classes,
- ``nn.Conv2d`` / ``nn.ConvTranspose2d`` / ``nn.Linear`` -> pytorch-quantization's Quant* modules,
- ``ResidualAdd`` (``SparseBasicBlock.add``, which the block's forward calls) -> ``QuantAdd``,
- ``Concat`` (``neck.concat``) -> ``QuantConcat``.

Module paths and parameter names stay det3d's, so a float checkpoint loads the same; quantizers add only
``_amax`` buffers (after calibration). A module is skipped (left float) when a pattern of `skip` matches
its path or the path of one of its parents (``fnmatch``, e.g. ``backbone.conv1.0.*`` or ``neck``).

``check_weight_amax`` refuses a calibrated weight amax whose shape does not match its quantizer's axis
(a ``ptq.pth`` from an older version, whose ConvTranspose weights were calibrated per input channel).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from pytorch_quantization.nn import TensorQuantizer
from torch import nn

from trt_centerpoint._compat.pytorch_quantization import fast_module_init, quiet_library_logs
from trt_centerpoint.artifacts import PTQ_CHECKPOINT
from trt_centerpoint.model.backbone import ResidualAdd
from trt_centerpoint.model.checkpoint import CheckpointError
from trt_centerpoint.model.rpn import Concat
from trt_centerpoint.quant import modules as qm

# CUDA-CenterPoint keeps the input conv and the first residual block in FP16: INT8 there costs accuracy.
# CUDA-CenterPoint leaves the whole head in FP16; we quantize it except the conv that predicts the
# sub-cell centre offset ("reg"): on the sample model (2 m BEV cells) quantizing its input alone cost
# 4.7 mAP points (0.740 -> 0.693, all localisation), while everything else together costs < 0.1.
DEFAULT_SKIP = ("backbone.conv_input*", "backbone.conv1.0.*", "bbox_head.tasks.*.reg.3")


def _converter(module: nn.Module):
    kind = type(module)
    if kind in qm.SPARSE_QUANT_CLASSES:
        return qm.quantize_sparse_conv
    if kind is nn.Conv2d:
        return qm.quantize_conv2d
    if kind is nn.ConvTranspose2d:
        return qm.quantize_conv_transpose2d
    if kind is nn.Linear:
        return qm.quantize_linear
    if kind is ResidualAdd:
        return lambda m, calib: qm.QuantAdd(calib).train(m.training)
    if kind is Concat:
        return lambda m, calib: qm.QuantConcat(calib).train(m.training)
    return None


def is_skipped(name: str, skip: Iterable[str]) -> bool:
    """True if a pattern matches `name` or one of its parent paths (`a.b.c` -> `a`, `a.b`, `a.b.c`)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(prefix, pattern) for pattern in skip for prefix in prefixes)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Paths of every module `quantize_model` can swap (whatever the skip list)."""
    return [name for name, module in model.named_modules() if name and _converter(module) is not None]


def quantize_model(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP, input_calib: str = "histogram") -> list[str]:
    """Swap every quantizable, non-skipped module for its quantized version, in place.

    `input_calib` is the activation calibrator ("histogram" or "max"); weights always use max.
    Returns the paths of the swapped modules. Already-quantized modules are left alone, so calling it
    twice changes nothing.
    """
    skip = tuple(skip)
    qm.input_descriptor(input_calib)  # validates the name
    swapped = []
    with quiet_library_logs(), fast_module_init():
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                convert = _converter(child)
                if convert is None or is_skipped(name, skip):
                    continue
                quant = convert(child, input_calib)
                if quant is not child:
                    parent._modules[child_name] = quant
                swapped.append(name)
    return swapped


def _amax_axes(amax_shape: tuple[int, ...]) -> list[int]:
    return [i for i, n in enumerate(amax_shape) if n > 1]


def check_weight_amax(model: nn.Module, source: str) -> None:
    """Every calibrated weight amax holds one value per channel along its quantizer's axis (or one value).

    Why: pytorch-quantization quantizes along whatever axis the stored amax has, and exports that axis; a
    ConvTranspose calibrated per input channel (axis 0, amax [C_in, 1, 1, 1]) by an older version would run
    and export per input channel, silently. Its scales cannot be turned into per-output-channel ones
    (each output mixes every input channel), so the only fix is a new calibration.
    Raises CheckpointError (one line, `source` first) naming the first wrong layer.
    """
    for name, module in model.named_modules():
        quantizer = getattr(module, "_weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if not isinstance(quantizer, TensorQuantizer) or weight is None or quantizer._disabled:
            continue
        amax = quantizer._buffers.get("_amax")
        axis = quantizer.axis
        if amax is None or amax.numel() == 1 or axis is None:
            continue  # uncalibrated (reported elsewhere) or one scale for the whole weight
        axes = sorted(a % weight.dim() for a in ((axis,) if isinstance(axis, int) else axis))
        want = tuple(weight.shape[i] if i in axes else 1 for i in range(weight.dim()))
        if tuple(amax.shape) != want:
            got_axes = _amax_axes(tuple(amax.shape))
            raise CheckpointError(
                f"{source}: {name} ({type(module).__name__}) weight amax has shape {list(amax.shape)} (per channel "
                f"on axis {', '.join(map(str, got_axes)) or '?'}) but this version quantizes that weight on axis "
                f"{', '.join(map(str, axes))} (shape {list(want)}): calibrated by an older version, re-run "
                f"`trt-centerpoint ptq` (and `qat`) to make a new {PTQ_CHECKPOINT}")
