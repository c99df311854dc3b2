"""Post-training quantization: float checkpoint -> fuse BN -> quantizers -> calibrate -> ``ptq.pth``.

The saved file is a det3d-style checkpoint (``{"state_dict", "meta"}``, tensors and plain containers only,
so ``torch.load(weights_only=True)`` reads it). ``meta`` records what is needed to rebuild the model
exactly: the model config, whether BN was folded, the skip list and the activation calibrator, plus the
amax method, the calibration frame count and the library versions. ``load_quantized_model`` rebuilds a
fresh model the same way (fuse -> quantize -> load) and reproduces the outputs bit for bit.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trt_centerpoint import __version__
from trt_centerpoint._compat.pytorch_quantization import (
    iter_quantizers,
    library_version,
    quiet_library_logs,
    register_amax_buffers,
)
from trt_centerpoint._compat.spconv import import_spconv, spconv_version
from trt_centerpoint.config import MODEL_NEUTRAL, ModelConfig, config_from_dict, config_to_dict, load_config
from trt_centerpoint.distributed import DistContext, barrier, context, rank_device, shutdown
from trt_centerpoint.model.centerpoint import CenterPoint, load_model
from trt_centerpoint.model.checkpoint import CheckpointError, atomic_torch_save, match_state_dict, read_checkpoint
from trt_centerpoint.quant.calibrate import METHODS, CalibrationError, calibrate_files, select_calibration_files
from trt_centerpoint.quant.fuse_bn import fuse_bn
from trt_centerpoint.quant.quantize import DEFAULT_SKIP, check_weight_amax, quantize_model

spconv = import_spconv()

FORMAT = "trt_centerpoint.ptq"
FORMAT_VERSION = 1
DEFAULT_NUM_FRAMES = 100


def library_versions() -> dict[str, str]:
    return {
        "trt_centerpoint": __version__,
        "torch": str(torch.__version__),
        "pytorch_quantization": library_version(),
        "spconv": spconv_version(),
        "python": platform.python_version(),
    }


def prepare_model(cfg: ModelConfig, skip=DEFAULT_SKIP, input_calib: str = "histogram", bn_fused: bool = True,
                  model: nn.Module | None = None) -> tuple[nn.Module, list[str]]:
    """(Fold BN and) insert quantizers into `model` (a fresh float model of `cfg` if None), in eval mode."""
    model = CenterPoint(cfg) if model is None else model
    model.eval()
    if bn_fused:
        fuse_bn(model)
    return model, quantize_model(model, skip=skip, input_calib=input_calib)


def round_sparse_weights_fp16(model: nn.Module) -> int:
    """Round every sparse conv's weight and bias to the nearest FP16 value (storage stays FP32); returns
    how many convs were rounded.

    Why: libspconv stores sparse weights in FP16, so `scn.int8.onnx` holds the rounded weights. Rounding
    once here (after BN folding, before calibration) makes the fake-quant model compute exactly what the
    file holds; otherwise INT8 amplifies the rounding (a weight that moves by an FP16 ulp can cross a
    quantization boundary): on the sample model the file then differs from PyTorch with cosine 0.99986
    instead of 0.999997. The 2D head is unaffected (its Q/DQ file stores INT8 weights and FP32 biases).
    """
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, spconv.conv.SparseConvolution):
                for tensor in (module.weight, module.bias):
                    if tensor is not None:
                        tensor.copy_(tensor.half().float())
                count += 1
    return count


def ptq_model(cfg: ModelConfig, checkpoint: str | Path, files: list[Path], method: str = "mse", skip=DEFAULT_SKIP,
              percentile: float = 99.99, bn_fused: bool = True, device: str = "cpu",
              progress: bool = True, ctx: DistContext | None = None,
              on_output: Callable[[int, object], None] | None = None) -> tuple[nn.Module, dict]:
    """Load `checkpoint`, (fold BN,) quantize and calibrate on the point files `files` (`on_output`: see
    `calibrate.calibrate_files`).

    Returns the calibrated model (on `device`) and the ``meta`` to save with it. ``method="max"`` gives
    activations a max calibrator; the other methods use one histogram calibrator per activation. Under torchrun
    (`ctx`) the ranks share the frames and every rank returns the same model.
    """
    if method not in METHODS:
        raise CalibrationError(f"--method {method}: unknown amax method (one of {', '.join(METHODS)})")
    input_calib = "max" if method == "max" else "histogram"
    skip = list(skip)
    model = load_model(cfg, checkpoint)
    model, swapped = prepare_model(cfg, skip, input_calib, bn_fused, model=model)
    rounded = round_sparse_weights_fp16(model) if bn_fused else 0  # the weights scn files deploy
    model.to(device)
    result = calibrate_files(model, files, cfg.voxel.num_point_features, method=method, percentile=percentile,
                             progress=progress, ctx=ctx, on_output=on_output)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(cfg),
        "source_checkpoint": str(checkpoint),
        "bn_fused": bool(bn_fused),
        "sparse_weights_fp16": rounded > 0,
        "skip": skip,
        "activation_calibrator": input_calib,
        "amax_method": method,
        "percentile": float(percentile) if method == "percentile" else None,
        "num_frames": result.frames_used,
        "num_frames_empty": result.frames_empty,
        "quantized_layers": swapped,
        "num_quantizers": len(result.amax),
        "versions": library_versions(),
    }
    return model, meta


def run_ptq(config: str | Path | ModelConfig, checkpoint: str | Path, calib_data: str | Path, out: str | Path,
            num_frames: int | None = DEFAULT_NUM_FRAMES, method: str = "mse", skip=DEFAULT_SKIP,
            percentile: float = 99.99, bn_fused: bool = True, device: str = "cpu", progress: bool = True) -> dict:
    """Calibrate on `num_frames` frames of `calib_data`, write `out`; returns meta. Calibration only (`ptq --recipe
    calibrate`); `quant.recipe.run_recipe` is what `trt-centerpoint ptq` runs (by default it also learns the ranges).
    Under torchrun the ranks share the calibration frames and rank 0 writes `out`."""
    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    files = select_calibration_files(calib_data, num_frames)
    ctx = context()
    try:
        model, meta = ptq_model(cfg, checkpoint, files, method, skip, percentile, bn_fused, rank_device(device),
                                progress, ctx)
        meta["calib_data"] = str(calib_data)
        save_on_rank0(model, out, meta, ctx)
        return meta
    finally:
        shutdown(ctx)


def save_on_rank0(model: nn.Module, path: str | Path, meta: dict, ctx: DistContext) -> None:
    """Rank 0 writes `path` and every rank waits until it is there (one process: just the write)."""
    if ctx.is_main:
        save_quantized_model(model, path, meta)
    barrier(ctx)


def save_quantized_model(model: nn.Module, path: str | Path, meta: dict) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (CPU tensors; loadable with weights_only=True)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "meta": meta}, path)


def read_ptq_meta(path: str | Path) -> dict:
    """The ``meta`` of a PTQ checkpoint; ``CheckpointError`` if the file is not one."""
    return _read(path)[1]


def _read(path: str | Path) -> tuple[dict, dict]:
    ckpt = read_checkpoint(path)
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a quantized (PTQ) checkpoint: make one with `trt-centerpoint ptq`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: PTQ checkpoint format version {meta.get('format_version')} "
                              f"(this version reads {FORMAT_VERSION})")
    return ckpt["state_dict"], meta


def _config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = config_to_dict(a), config_to_dict(b)
    return [k for k in da if k not in MODEL_NEUTRAL and da[k] != db.get(k)]


def load_quantized_model(path: str | Path, expect_config: ModelConfig | None = None,
                         device: str = "cpu") -> nn.Module:
    """Rebuild the quantized model saved by ``run_ptq`` (fuse -> quantize with the recorded skip list ->
    load), in eval mode on `device`. With `expect_config`, a checkpoint for another model is refused."""
    state, meta = _read(path)
    cfg = config_from_dict(meta["config"], f"{path} (meta.config)")
    if expect_config is not None:
        diff = _config_differences(expect_config, cfg)
        if diff:
            raise CheckpointError(f"{path}: quantized for another model config than {expect_config.name} "
                                  f"(differs in: {', '.join(diff)})")
    model, _ = prepare_model(cfg, meta["skip"], meta.get("activation_calibrator", "histogram"), meta["bn_fused"])
    register_amax_buffers(model, state)  # pytorch-quantization <= 2.1.3 would call .cuda() (compat.py)
    state = match_state_dict(model, state, str(path))
    with quiet_library_logs():
        model.load_state_dict(state)
    check_weight_amax(model, str(path))  # a ptq.pth from a version with other weight axes is refused by name
    missing = [name for name, q in iter_quantizers(model) if not q._disabled and q.amax is None]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} quantizer(s) have no calibrated amax, e.g. {missing[0]}")
    model.ptq_meta = meta
    return model.eval().to(device)


def is_quantized_checkpoint(checkpoint: Path) -> bool:
    """True for a `trt-centerpoint ptq` / `qat` file (meta format "trt_centerpoint.ptq")."""
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return str(meta.get("format", "")).endswith(".ptq")


def load_model_pair(cfg: ModelConfig, checkpoint: Path):
    """(float model, quantized model or None). For a quantized checkpoint the float model is a copy of it
    with every quantizer disabled: the same (BN-folded) weights, so FP32 and INT8 files differ only by
    quantization."""
    if not is_quantized_checkpoint(checkpoint):
        return load_model(cfg, checkpoint), None
    qmodel = load_quantized_model(checkpoint, expect_config=cfg)
    float_model = copy.deepcopy(qmodel)
    for _, quantizer in iter_quantizers(float_model):
        quantizer.disable()
    return float_model.eval(), qmodel
