"""How far one tensor is from its reference: the numbers `compare` and the report print per output.

Why these: cosine says whether the pattern survived (scale-free), SNR says how big the error is relative to
the signal (in dB, comparable across heads with very different ranges), and max / mean / median absolute
error say how big it is in the tensor's own units. All arithmetic is float64, so an FP32 reference compared
with itself gives exactly cosine 1 and SNR +inf.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["error_histogram", "log_abs_error", "merge_metrics", "tensor_metrics"]


def _as_float64(x, what: str) -> np.ndarray:
    """numpy array or torch tensor (any device, any dtype) -> float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{what}: cannot compare an object array")
    return arr.astype(np.float64, copy=False)


def _pair(ref, got) -> tuple[np.ndarray, np.ndarray]:
    r, g = _as_float64(ref, "ref"), _as_float64(got, "got")
    if r.shape != g.shape:
        raise ValueError(f"shape mismatch: ref {tuple(r.shape)} vs got {tuple(g.shape)}")
    return r.ravel(), g.ravel()


def _cosine(r: np.ndarray, g: np.ndarray) -> float:
    """Cosine similarity; two all-zero tensors are identical (1.0), one all-zero tensor is orthogonal (0.0)."""
    if np.array_equal(r, g):
        return 1.0  # exactly, not 1 - 1 ulp of rounding
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0.0 and ng == 0.0:
        return 1.0
    if nr == 0.0 or ng == 0.0:
        return 0.0
    return float(np.clip(np.dot(r, g) / (nr * ng), -1.0, 1.0))


def _snr_db(r: np.ndarray, diff: np.ndarray) -> float:
    """10*log10(signal energy / error energy): +inf when identical, -inf when the reference is all zeros."""
    noise = float(np.dot(diff, diff))
    signal = float(np.dot(r, r))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def tensor_metrics(ref, got) -> dict:
    """Error of `got` against `ref` (same shape; numpy or torch): cosine, abs-error stats, SNR, size."""
    r, g = _pair(ref, got)
    if r.size == 0:
        return {"cosine": 1.0, "max_abs": 0.0, "mean_abs": 0.0, "median_abs": 0.0, "snr_db": math.inf,
                "ref_max_abs": 0.0, "numel": 0}
    diff = r - g
    abs_err = np.abs(diff)
    out = {
        "cosine": _cosine(r, g),
        "max_abs": float(abs_err.max()),
        "mean_abs": float(abs_err.mean()),
        "median_abs": 0.0,
        "snr_db": _snr_db(r, diff),
        "ref_max_abs": float(np.abs(r).max()),
        "numel": int(r.size),
    }
    out["median_abs"] = float(np.median(abs_err, overwrite_input=True))  # last: it reorders abs_err (no copy)
    return out


def merge_metrics(per_frame: list[dict]) -> dict:
    """Worst case over frames, so one bad frame cannot hide behind many good ones.

    cosine and snr_db: minimum. max_abs and ref_max_abs: maximum. mean_abs: numel-weighted mean (the exact
    mean over all elements). median_abs: the *maximum of the per-frame medians*, an approximation of the
    median over all elements that needs no element kept, and errs high (the pooled median lies between
    the smallest and the largest per-frame median, up to the averaging of two middle elements).
    numel: total. `frames` is added.
    """
    if not per_frame:
        raise ValueError("merge_metrics: no frames to merge")
    numel = sum(int(m["numel"]) for m in per_frame)
    if numel:
        mean_abs = sum(m["mean_abs"] * int(m["numel"]) for m in per_frame) / numel
    else:
        mean_abs = 0.0
    return {
        "cosine": min(m["cosine"] for m in per_frame),
        "max_abs": max(m["max_abs"] for m in per_frame),
        "mean_abs": float(mean_abs),
        "median_abs": max(m["median_abs"] for m in per_frame),
        "snr_db": min(m["snr_db"] for m in per_frame),
        "ref_max_abs": max(m["ref_max_abs"] for m in per_frame),
        "numel": numel,
        "frames": len(per_frame),
    }


def log_abs_error(ref, got, floor: float = 1e-12) -> np.ndarray:
    """log10(max(|ref - got|, floor)), flattened: the quantity `error_histogram` counts."""
    r, g = _pair(ref, got)
    return np.log10(np.maximum(np.abs(r - g), floor))


def error_histogram(ref, got, bins: int = 50, floor: float = 1e-12,
                    value_range: tuple[float, float] | None = None) -> dict:
    """Histogram of log10(|ref - got|): INT8 errors span decades, so a linear axis would show one bar.

    Errors below `floor` (exact matches included) are clipped to `floor`, so they land in the first bin
    instead of at -inf. `value_range` (log10 units) fixes the edges, so histograms of several frames can
    be summed; by default it spans the data. Returns {"edges": [bins + 1 floats, log10 units],
    "counts": [bins ints], "floor": floor}.
    """
    logs = log_abs_error(ref, got, floor)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
    elif logs.size:
        lo, hi = float(logs.min()), float(logs.max())
    else:
        lo = hi = math.log10(floor)
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "floor": floor}
