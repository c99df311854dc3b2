"""The INT8 recipes of `trt-centerpoint ptq`: what is quantized, and how its ranges are found.

- ``learn-ranges`` (the default): every layer the deployment runtimes run in INT8 is quantized (only
  ``FLOAT_LAYERS`` stay float), calibrated, then the activation ranges of the RPN and head (``RANGE_KIND``) are
  learned on the same calibration frames, label-free: one epoch of ``qat``'s distillation from the FP32 model with
  only those ranges training (the weights stay the calibrated model's). Why: calibration alone sets some
  ranges by rare background values; on the sample model the head's ``dim`` / ``rot`` / ``reg`` output convs
  then get an INT8 step as large as their signal at object centres (calibration only, everything but the sparse
  input layers INT8: mASE +39 %, and 4.9 mAP points lost at ``reg.3``). Learning the ranges against the FP32
  outputs moves them to where the objects are: every TP error within 1.2 % of FP32 with the whole RPN and head INT8
  (sample: mAP 0.7397, FP32 0.7373). The FP32 outputs are those calibration computed on the same frames
  (`calib_outputs`): the FP32 model does not run again.
- ``calibrate``: calibration only, with ``quantize.DEFAULT_SKIP`` float (the input conv, the first residual
  block and the head's centre-offset convs, which calibration alone cannot keep accurate); the behaviour of
  earlier versions.

`qat` (the full recipe: weights and ranges, supervised or distilled, several epochs) starts from either file.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from trt_centerpoint.config import ModelConfig, load_config
from trt_centerpoint.data.sampling import evenly_spaced_indices
from trt_centerpoint.data.source import DataSource, list_frames
from trt_centerpoint.distributed import context, rank_device, shutdown
from trt_centerpoint.errors import UserError
from trt_centerpoint.quant.calib_outputs import CalibrationOutputs
from trt_centerpoint.quant.calibrate import select_calibration_files
from trt_centerpoint.quant.ptq import DEFAULT_NUM_FRAMES, ptq_model, save_on_rank0, save_quantized_model
from trt_centerpoint.quant.qat import QATOptions, run_qat
from trt_centerpoint.quant.quantize import DEFAULT_SKIP, is_skipped, quantizable_layers

RECIPES = ("learn-ranges", "calibrate")
DEFAULT_RECIPE = "learn-ranges"
RANGE_EPOCHS = 1  # sample, 64 calibration frames: every TP error within 1.2 % of FP32 after one epoch
# The ranges learned: the activations of the RPN and head (the sparse backbone keeps its calibrated ranges). The
# backbone's ranges are not where calibration fails (sample: INT8 backbone + float 2D part within 0.15 mAP of FP32),
# and leaving them alone means no backward pass through the sparse convs, the step's memory and time at nuScenes
# size (all ranges: 7.8 GiB there). On the sample (64 + 200 frames) both give the same accuracy: mAP 0.7398 (2D)
# vs 0.7388 (all), every TP error within 1 % of FP32.
RANGE_KIND = "2d-inputs"
# One frame a step: at nuScenes size a step of two 10-sweep frames peaked at 7.1 GiB, one frame at 3.4 GiB (the
# rest of the build needs 3.5); on the sample one frame a step gives the same accuracy (mAP 0.7388 vs 0.7398 with
# two, every TP error within 1 % of FP32).
RANGE_BATCH = 1
# The calibration frames as calibration saw them, no flip / rotation / scaling: the ranges are fitted to what the
# deployed model sees, and the FP32 outputs calibration computed on these very inputs are the distillation targets
# (`calib_outputs`), so the FP32 model never runs again.
# Measured on the sample (64 + 200 frames): mAP 0.7397, TP errors +1.0 / +1.2 / -0.8 / -0.4 % of FP32 (with augmentation
# and the FP32 model run again: 0.7388, within 1 %); the range learning 32 s instead of 61 s (48 -> 30 s at nuScenes
# size, 4 frames).
RANGE_AUGMENT = False

# The layers the default recipe keeps float, each with the reason (the report prints it). Change the list
# here: it is the only place. NVIDIA's libspconv (1.0.1 and 1.1.10, host-side engine build) accepts every sparse
# conv and add of the backbone in INT8, the 5-channel input conv included, so this is an accuracy choice, not a
# runtime limit. The input conv reads the raw point features (x, y, z, intensity, time lag: metres next to 0..255
# next to seconds) through one INT8 scale per tensor; on the sample model (64 calibration frames, 200 held-out
# frames) quantizing it too keeps the mean AP (0.7395 vs 0.7388) but loses 1.3 AP points beyond 40 m (0.244 vs
# 0.257, FP32 0.257), where points are sparse. NVIDIA's CUDA-CenterPoint keeps its first sparse convs FP16 too.
FLOAT_LAYERS: dict[str, str] = {
    "backbone.conv_input*": "sparse input conv, kept FP16: raw 5-channel point features (metres, intensity, "
                            "seconds) in one INT8 scale cost far objects AP (sample: -1.3 pt beyond 40 m); libspconv "
                            "would accept it in INT8 (`ptq --skip` quantizes it too)",
}

# Why the `calibrate` recipe's list (`quantize.DEFAULT_SKIP`) keeps each of its patterns float.
CALIBRATE_REASONS: dict[str, str] = {
    "backbone.conv_input*": FLOAT_LAYERS["backbone.conv_input*"],
    "backbone.conv1.0.*": "first residual block: kept FP16 as in NVIDIA's CUDA-CenterPoint",
    "bbox_head.tasks.*.reg.3": "centre-offset convs: their calibrated input range is set by background cells, "
                               "the INT8 step would be as large as the offsets (sample: -4.7 mAP points)",
}


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise UserError(f"--recipe {recipe}: one of {', '.join(RECIPES)}")
    return recipe


def default_skip(recipe: str = DEFAULT_RECIPE) -> list[str]:
    """The patterns left float when the user gives no `--skip`."""
    return list(FLOAT_LAYERS) if check_recipe(recipe) == "learn-ranges" else list(DEFAULT_SKIP)


def float_layer_reasons(skip, float_layers: list[str] | None = None) -> dict[str, str]:
    """{pattern: why it stays float} for the patterns of `skip` (a user's own pattern: "--skip"). With
    `float_layers` (the layer paths left float) a pattern that matches none of them is left out."""
    known = {**CALIBRATE_REASONS, **FLOAT_LAYERS}
    out = {}
    for pattern in skip:
        if float_layers is not None and not any(is_skipped(name, [pattern]) for name in float_layers):
            continue
        out[pattern] = known.get(pattern, "left float by --skip / --skip-from")
    return out


def run_recipe(config: str | Path | ModelConfig, checkpoint: str | Path, calib_data: DataSource, out: str | Path,
               recipe: str = DEFAULT_RECIPE, num_frames: int | None = DEFAULT_NUM_FRAMES, method: str = "mse",
               skip=None, percentile: float = 99.99, bn_fused: bool = True, device: str = "cpu",
               progress: bool = True, ranges: str = RANGE_KIND) -> dict:
    """`trt-centerpoint ptq`: quantize, calibrate on `num_frames` frames of `calib_data` and (recipe
    learn-ranges) learn the activation ranges on them; write `out`; returns its meta. `skip` None: the
    recipe's float list."""
    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    check_recipe(recipe)
    skip = default_skip(recipe) if skip is None else list(skip)
    files = select_calibration_files(calib_data, num_frames)
    ctx = context()  # under torchrun: the ranks share the calibration frames, rank 0 writes `out`
    with tempfile.TemporaryDirectory(prefix="trt_centerpoint_ptq_") as tmp:
        try:
            return _run_recipe(cfg, checkpoint, calib_data, files, Path(tmp), out, recipe, num_frames, method, skip,
                               percentile, bn_fused, device, progress, ranges, ctx)
        finally:
            shutdown(ctx)


def _run_recipe(cfg: ModelConfig, checkpoint, calib_data, files, tmp: Path, out, recipe: str, num_frames, method: str,
                skip: list[str], percentile: float, bn_fused: bool, device: str, progress: bool, ranges: str,
                ctx) -> dict:
    # one process: the float outputs of the calibration passes become the range learning's targets (under torchrun
    # a rank calibrates other frames than its range steps read, and the teacher runs)
    targets = None
    if recipe == "learn-ranges" and not ctx.distributed and not RANGE_AUGMENT:
        targets = CalibrationOutputs(tmp, evenly_spaced_indices(len(list_frames(calib_data)), num_frames))
    model, meta = ptq_model(cfg, checkpoint, files, method, skip, percentile, bn_fused, rank_device(device),
                            progress, ctx, on_output=targets.save if targets is not None else None)
    meta["calib_data"] = str(calib_data)
    meta["recipe"] = recipe
    # quantizable_layers lists the layers still float (a quantized layer is no longer a plain Conv2d / spconv)
    meta["float_layers"] = float_layer_reasons(skip, quantizable_layers(model))
    if recipe == "calibrate":
        save_on_rank0(model, out, meta, ctx)
        return meta
    start = time.perf_counter()
    # every rank holds the same calibrated model (amax broadcast): each keeps its own temporary copy, and
    # `run_qat` joins this process group (DDP over the ranks' frames)
    calibrated = tmp / "calibrated.pth"
    save_quantized_model(model, calibrated, meta)
    del model
    opts = QATOptions(objective="distill", epochs=RANGE_EPOCHS, ranges=ranges, train_weights=False,
                      batch_size=RANGE_BATCH, augment=RANGE_AUGMENT,
                      teacher=str(checkpoint), device=device, num_frames=num_frames)  # the calibration frames
    model, qat_meta = run_qat(calibrated, calib_data, tmp / "ranges.pth", opts, progress=progress,
                              teacher_outputs=targets)
    record = qat_meta.pop("qat")
    qat_meta.pop("stage", None)
    record.pop("init_checkpoint", None)  # a temporary file
    record["seconds"] = round(time.perf_counter() - start, 1)
    qat_meta["learned_ranges"] = record
    save_on_rank0(model, out, qat_meta, ctx)
    return qat_meta


__all__ = ["DEFAULT_RECIPE", "FLOAT_LAYERS", "RECIPES", "default_skip", "float_layer_reasons", "run_recipe"]
