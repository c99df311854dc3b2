"""Calibration: run frames through the model with quantizers collecting statistics, then set every amax.

Steps (CUDA-CenterPoint's calibration recipe): (1) calibration mode: fake quant off, calibrators on;
(2) forward frames; (3) compute amax: activations from their histogram with ``mse`` (default), ``percentile``
or ``entropy`` (or the running max with ``max``), weights from their per-channel max; (4) quant on, calibrators
off.

Under torchrun (``calibrate_files`` with a distributed context) the ranks share the frames and the amax are
those of one process on the same frames (``calibrate_distributed`` says how).

Histograms longer than ``mse.MAX_SEARCH_BINS`` are merged before the quadratic mse / entropy searches,
and quantizers with identical histograms (the head branches all read the shared conv's output) share one
search.

Every amax is checked: NaN / infinite, or zero for an activation, is a ``CalibrationError`` naming the
quantizer. A weight channel whose weights are all zero (amax 0; e.g. a BN with gamma 0 folded in) is a
warned fallback instead: its amax becomes the largest amax of the layer's other channels (any positive
value quantizes an all-zero channel exactly; zero would be an invalid TensorRT / libspconv scale).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from torch import nn
from tqdm import tqdm

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers, quiet_library_logs
from trt_centerpoint.data.sampling import evenly_spaced
from trt_centerpoint.data.source import DataSource, FrameRef, list_frames, read_frame
from trt_centerpoint.distributed import DistContext
from trt_centerpoint.errors import UserError
from trt_centerpoint.quant.calibrate_distributed import collect_distributed, share_amax
from trt_centerpoint.quant.mse import merge_bins, mse_amax

METHODS = ("mse", "percentile", "entropy", "max")
_ZERO = 1.0 / (1 << 24)  # pytorch-quantization quantizes everything to 0 at or below this amax


class CalibrationError(UserError):
    """Calibration could not produce a usable amax."""


class ZeroWeightChannelWarning(UserWarning):
    """A weight channel is all zeros; its amax was set from the layer's other channels."""


@dataclass
class CalibrationResult:
    method: str
    frames_used: int = 0
    frames_empty: int = 0  # frames with no voxel in range (nothing to run)
    amax: dict[str, list[float]] = field(default_factory=dict)  # quantizer path -> flattened amax


def select_calibration_files(path: DataSource, num_frames: int | None = None) -> list[FrameRef]:
    """The frames of `path` (a point file or folder, see ``list_point_files``, or a nuScenes selection); with
    `num_frames`, that many spread evenly over the list (neighbouring frames of a sequence are near-duplicates)."""
    files = list_frames(path)
    if num_frames is None or num_frames >= len(files):
        return files
    if num_frames < 1:
        raise UserError(f"--num-frames must be >= 1, got {num_frames}")
    return evenly_spaced(files, num_frames)


def iter_points(files: Iterable[FrameRef], num_features: int) -> Iterator[torch.Tensor]:
    for f in files:
        yield torch.from_numpy(read_frame(f, num_features).points)


@contextlib.contextmanager
def calibration_mode(model: nn.Module) -> Iterator[None]:
    """Quantizers with a calibrator collect and pass data through unquantized; others are bypassed."""
    quantizers = list(iter_quantizers(model))
    disabled = {name: q._disabled for name, q in quantizers}
    with quiet_library_logs():
        for _, q in quantizers:
            if getattr(q, "_calibrator", None) is not None:
                q.disable_quant()
                q.enable_calib()
            else:
                q.disable()
    try:
        yield
    finally:
        with quiet_library_logs():
            for name, q in quantizers:
                if getattr(q, "_calibrator", None) is not None:
                    q.disable_calib()
                    q.enable_quant()
                if not disabled[name]:
                    q.enable()


@torch.no_grad()
def run_frame(model: nn.Module, points, on_output: Callable[[object], None] | None = None) -> bool:
    """One point cloud through `model` (a batch of one); False when no voxel is in range (nothing ran).
    `on_output` receives the model's outputs: in calibration mode those of the float model (quantizers pass
    their inputs through), which the `ptq` recipe keeps as its distillation targets instead of running the
    FP32 model again."""
    device = next(model.parameters()).device
    voxels = model.voxelize([torch.as_tensor(points, dtype=torch.float32)])
    if voxels.num_voxels == 0:
        return False
    outputs = model(voxels.features.to(device), voxels.coords.to(device), 1)
    if on_output is not None:
        on_output(outputs)
    return True


def collect(model: nn.Module, frames: Iterable[torch.Tensor], total: int | None = None,
            progress: bool = True, on_output: Callable[[int, object], None] | None = None) -> tuple[int, int]:
    """Run each point cloud through `model` (one frame per batch); returns (frames used, frames empty).
    `on_output(k, outputs)`: the outputs of the k-th frame (frames with no voxel in range give none)."""
    used = empty = 0
    for k, points in enumerate(tqdm(frames, total=total, desc="calibrate", unit="frame", disable=not progress)):
        if run_frame(model, points, None if on_output is None else functools.partial(on_output, k)):
            used += 1
        else:
            empty += 1
    return used, empty


def _histogram_amax(calib, method: str, percentile: float) -> torch.Tensor | None:
    hist, edges = calib._calib_hist, calib._calib_bin_edges
    if hist is None:
        return None
    if method == "max":  # the histogram's top edge: the largest |value| seen (up to one bin width)
        return torch.as_tensor(edges)[-1].float()
    if method == "percentile":  # O(bins): the library's own code, on the full histogram
        with quiet_library_logs():
            return calib.compute_amax(method, percentile=percentile)
    hist, edges, _ = merge_bins(hist, edges)  # mse / entropy are quadratic in the bin count (mse.py)
    if method == "mse":
        return mse_amax(hist, edges, calib._num_bits, calib._unsigned)
    merged = HistogramCalibrator(calib._num_bits, None, calib._unsigned)
    merged._calib_hist, merged._calib_bin_edges = hist, edges
    with quiet_library_logs():
        return merged.compute_amax(method)


class _SearchCache:
    """Quantizers that see the same tensor (every head branch reads the shared conv's output) collect
    identical histograms: search each distinct histogram once."""

    def __init__(self) -> None:
        self._done: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def amax(self, calib, method: str, percentile: float) -> torch.Tensor | None:
        if calib._calib_hist is None:
            return None
        hist, edges = torch.as_tensor(calib._calib_hist), torch.as_tensor(calib._calib_bin_edges)
        for h, e, amax in self._done:
            if h.shape == hist.shape and torch.equal(h, hist) and torch.equal(e, edges):
                return amax
        amax = _histogram_amax(calib, method, percentile)
        if amax is not None:
            amax = torch.as_tensor(amax, dtype=torch.float32).to(hist.device)
        self._done.append((hist, edges, amax))
        return amax


def _calibrator_amax(name: str, quantizer, method: str, percentile: float, cache: _SearchCache) -> torch.Tensor:
    calib = quantizer._calibrator
    if isinstance(calib, MaxCalibrator):
        amax = calib.compute_amax()
    elif isinstance(calib, HistogramCalibrator):
        amax = cache.amax(calib, method, percentile)
    else:
        raise CalibrationError(f"{name}: unsupported calibrator {type(calib).__name__}")
    if amax is None:
        raise CalibrationError(f"{name}: saw no data during calibration (its layer never ran)")
    return torch.as_tensor(amax, dtype=torch.float32).detach().clone()


def check_amax(name: str, amax: torch.Tensor, is_weight: bool) -> torch.Tensor:
    """Refuse NaN / inf (and zero activations); fix all-zero weight channels with a warning."""
    bad = ~torch.isfinite(amax)
    if bad.any():
        raise CalibrationError(f"{name}: calibrated amax is not finite ({int(bad.sum())} of {amax.numel()} values "
                               "NaN or infinite): the calibration data or the model produced NaN / inf")
    zero = amax <= _ZERO
    if not zero.any():
        return amax
    if not is_weight:
        raise CalibrationError(f"{name}: calibrated amax is {float(amax.max()):g} (every calibration value was 0): "
                               "calibrate with more or other frames, or leave the layer in float (--skip)")
    fallback = float(amax[~zero].max()) if (~zero).any() else 1.0
    warnings.warn(
        f"{name}: {int(zero.sum())} of {amax.numel()} weight channels are all zero; their amax is set to {fallback:g}",
        ZeroWeightChannelWarning,
        stacklevel=2,
    )
    return torch.where(zero, torch.full_like(amax, fallback), amax)


def set_amax(quantizer, amax: torch.Tensor) -> None:
    """Store `amax` as the quantizer's ``_amax`` buffer (replacing one of another shape)."""
    current = quantizer._buffers.get("_amax")
    if current is not None and current.shape == amax.shape:
        current.copy_(amax.to(current.device))
        return
    quantizer._buffers.pop("_amax", None)
    quantizer.register_buffer("_amax", amax.clone())


def compute_amax(model: nn.Module, method: str = "mse", percentile: float = 99.99) -> dict[str, list[float]]:
    """Set every calibrated quantizer's amax from its calibrator; returns {quantizer path: amax values}."""
    if method not in METHODS:
        raise CalibrationError(f"unknown amax method {method!r} (one of {', '.join(METHODS)})")
    result, cache = {}, _SearchCache()
    for name, quantizer in iter_quantizers(model):
        if getattr(quantizer, "_calibrator", None) is None or quantizer._disabled:
            continue
        amax = _calibrator_amax(name, quantizer, method, percentile, cache)
        amax = check_amax(name, amax, is_weight=name.endswith("weight_quantizer"))
        set_amax(quantizer, amax)
        result[name] = [float(v) for v in amax.flatten().tolist()]
    return result


def _check_calibration_inputs(model: nn.Module, method: str) -> None:
    if method not in METHODS:
        raise CalibrationError(f"unknown amax method {method!r} (one of {', '.join(METHODS)})")
    if not any(True for _ in iter_quantizers(model)):
        raise CalibrationError("the model has no quantizers: call quantize_model first")


def _no_frame_ran(empty: int) -> CalibrationError:
    return CalibrationError(f"no calibration frame had a point inside the model's range ({empty} empty frames)")


def calibrate(model: nn.Module, frames: Iterable[torch.Tensor], method: str = "mse", percentile: float = 99.99,
              total: int | None = None, progress: bool = True,
              on_output: Callable[[int, object], None] | None = None) -> CalibrationResult:
    """Collect statistics over `frames` (point clouds [N, F]) and set every amax. Model in eval mode.
    `on_output`: see `collect`."""
    _check_calibration_inputs(model, method)
    model.eval()
    with calibration_mode(model):
        used, empty = collect(model, frames, total=total, progress=progress, on_output=on_output)
    if used == 0:
        raise _no_frame_ran(empty)
    amax = compute_amax(model, method, percentile)
    return CalibrationResult(method=method, frames_used=used, frames_empty=empty, amax=amax)


def calibrate_files(model: nn.Module, files: list[FrameRef], num_features: int, method: str = "mse",
                    percentile: float = 99.99, progress: bool = True, ctx: DistContext | None = None,
                    on_output: Callable[[int, object], None] | None = None) -> CalibrationResult:
    """`calibrate` on the frames `files`. Under torchrun (`ctx` distributed) the ranks share the frames and every
    rank ends with the amax one process would compute on them (`calibrate_distributed`). `on_output(k, outputs)`:
    the float outputs of `files[k]`, one process only (not called under torchrun)."""
    if ctx is None or not ctx.distributed:
        return calibrate(model, iter_points(files, num_features), method=method, percentile=percentile,
                         total=len(files), progress=progress, on_output=on_output)
    _check_calibration_inputs(model, method)
    model.eval()
    with calibration_mode(model):
        used, empty = collect_distributed(
            model, len(files), lambda i: run_frame(model, read_frame(files[i], num_features).points), ctx, progress)
    if used == 0:
        raise _no_frame_ran(empty)
    names = list(compute_amax(model, method, percentile)) if ctx.is_main else []
    amax = share_amax(model, names, ctx, set_amax)
    return CalibrationResult(method=method, frames_used=used, frames_empty=empty, amax=amax)
