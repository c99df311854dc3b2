"""INT8 fake quantization as the deployed files define it: scale = amax / 127, ONNX Q/DQ arithmetic.

Why our own and not pytorch-quantization's: the reference runner executes the *files*, and the files
carry `amax` (libspconv dynamic ranges) or `scale = amax / 127` (Q/DQ), so a value is quantized as

    q = clamp(round_half_even(x / scale), -128, 127)        y = q * scale        (float32)

which is ONNX QuantizeLinear / DequantizeLinear exactly. The `scn.int8.onnx` (ranges) and the
`scn.int8.qdq.onnx` (Q/DQ nodes) therefore execute bit-identically. pytorch-quantization computes
`round(x * (127 / amax)) / (127 / amax)`: the same grid, but multiplying by the reciprocal can land on the
other side of a rounding boundary for values within an ulp of one, so a rare element differs by one
quantization step (measured by `tests/exporter/test_fake_quant.py`).

amax <= 2**-24 (a channel whose weights are all zero): the library quantizes everything to 0; so do we,
and `qdq_scale` writes scale 1 there (any scale maps zeros to zero; ONNX needs a positive scale).
"""

from __future__ import annotations

import numpy as np
import torch

QMIN, QMAX = -128, 127
EPSILON = 1.0 / (1 << 24)  # pytorch-quantization's "amax is zero" threshold

__all__ = ["QMAX", "QMIN", "dequantize_linear", "fake_quant", "qdq_scale", "quantize_int8", "quantize_linear"]


def qdq_scale(amax) -> np.ndarray:
    """float32 scale(s) amax / 127 (computed in float32); 1.0 where amax is zero."""
    amax = np.asarray(amax, dtype=np.float32)
    scale = amax / np.float32(QMAX)
    return np.where(amax <= EPSILON, np.float32(1.0), scale).astype(np.float32)


def _broadcast(values: np.ndarray, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(values)).to(x.device)
    if axis is None or t.ndim == 0:
        return t
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.reshape(shape)


def quantize_linear(x: torch.Tensor, scale, axis: int | None = None) -> torch.Tensor:
    """ONNX QuantizeLinear to int8 with zero point 0: clamp(round_half_even(x / scale), -128, 127)."""
    scale = _broadcast(np.asarray(scale, dtype=np.float32), x, axis)
    return torch.clamp(torch.round(x.float() / scale), QMIN, QMAX).to(torch.int8)


def dequantize_linear(q: torch.Tensor, scale, axis: int | None = None) -> torch.Tensor:
    """ONNX DequantizeLinear with zero point 0: q * scale in float32."""
    return q.float() * _broadcast(np.asarray(scale, dtype=np.float32), q, axis)


def quantize_int8(x: torch.Tensor, amax, axis: int | None = None) -> torch.Tensor:
    """int8 codes of `x` (ONNX QuantizeLinear with scale amax / 127, zero point 0); per channel on `axis`."""
    amax = np.asarray(amax, dtype=np.float32)
    q = quantize_linear(x, qdq_scale(amax), axis)
    if (amax <= EPSILON).any():
        q = torch.where(_broadcast(amax <= EPSILON, x, axis), torch.zeros_like(q), q)
    return q


def fake_quant(x: torch.Tensor, amax, axis: int | None = None) -> torch.Tensor:
    """float32 `q * scale` for the codes of `quantize_int8` (ONNX DequantizeLinear of QuantizeLinear)."""
    amax = np.asarray(amax, dtype=np.float32)
    return dequantize_linear(quantize_int8(x, amax, axis), qdq_scale(amax), axis)
