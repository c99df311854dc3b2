"""MSE amax search over a calibration histogram, on the histogram's own device (CPU included).

pytorch-quantization 2.1.3's ``HistogramCalibrator.compute_amax("mse")`` moves the histogram to the GPU
with ``.cuda()``, so it fails on CPU-only machines. This computes the same thing: for every candidate
amax = bin centre i (i = start_bin, start_bin + stride, ...), fake-quantize all bin centres with that
amax (scale = 127 / amax, round half to even, clamp to [-127, 127]: the library's MSE search uses
``fake_tensor_quant``'s narrow range, irrelevant here because centres are >= 0), and weight the squared
error by the bin counts; the amax with the smallest mean error wins (the first one on ties). The
library loops over candidates one at a time; here they go in chunks, with the same float32 element
operations, so the errors (and the chosen amax) are the same numbers (tests compare with the library).

The search is quadratic in the bin count, and a histogram grows past its first 2048 bins whenever a later
frame has a larger maximum than the first (bins keep the first frame's width): 100 frames of a model with
a wide frame-to-frame range gave ~70k bins and 9 minutes of search on CPU. ``merge_bins`` first sums
groups of adjacent bins down to at most ``MAX_SEARCH_BINS`` (a histogram of the same data with a wider,
still uniform bin); the smallest amax tried is then 128 merged bins, 1/128 of the largest value.
"""

from __future__ import annotations

import torch

_EPSILON = 1.0 / (1 << 24)  # the library treats amax at or below this as zero
_CHUNK_ELEMENTS = 1 << 22
MAX_SEARCH_BINS = 16384


def merge_bins(hist: torch.Tensor, bin_edges: torch.Tensor, max_bins: int = MAX_SEARCH_BINS
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(hist, edges, factor): `hist` with every `factor` adjacent bins summed, so it has <= `max_bins` bins.

    Bins must be uniform (``HistogramCalibrator`` keeps them so); the last group is padded with empty
    bins of the same width. factor 1 returns the inputs unchanged.
    """
    hist, bin_edges = torch.as_tensor(hist), torch.as_tensor(bin_edges)
    bins = hist.numel()
    factor = -(-bins // max_bins)
    if factor <= 1:
        return hist, bin_edges, 1
    pad = -bins % factor
    width = bin_edges[1] - bin_edges[0]
    if pad:
        hist = torch.cat([hist, hist.new_zeros(pad)])
        extra = bin_edges[-1] + width * torch.arange(1, pad + 1, dtype=bin_edges.dtype, device=bin_edges.device)
        bin_edges = torch.cat([bin_edges, extra])
    return hist.view(-1, factor).sum(dim=1), bin_edges[::factor].clone(), factor


def mse_amax(hist: torch.Tensor, bin_edges: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
             stride: int = 1, start_bin: int = 128) -> torch.Tensor | None:
    """The amax (0-d float32 tensor, on `hist`'s device) minimising the histogram's quantization MSE.

    `hist` has B counts, `bin_edges` B + 1 edges (as ``HistogramCalibrator`` keeps them). Returns None
    for an empty histogram, like the library.
    """
    if hist is None or bin_edges is None:
        return None
    hist = torch.as_tensor(hist)
    device = hist.device
    # The library converts counts to int then float32, and edges to float32.
    counts = hist.to(torch.int32).to(torch.float32)
    edges = torch.as_tensor(bin_edges).to(device=device, dtype=torch.float32)
    centers = (edges[1:] + edges[:-1]) / 2
    candidates = torch.arange(start_bin, centers.numel(), stride, device=device)
    if candidates.numel() == 0:
        raise ValueError(f"histogram has {centers.numel()} bins, fewer than start_bin={start_bin}")
    max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1.0
    min_bound = 0.0 if unsigned else -max_bound
    chunk = max(1, _CHUNK_ELEMENTS // max(1, centers.numel()))
    row, weights = centers.unsqueeze(0), counts.unsqueeze(0)
    errors = []
    for start in range(0, candidates.numel(), chunk):
        amax = centers[candidates[start:start + chunk]].unsqueeze(1)
        zero = amax <= _EPSILON
        # A true division, as the library does (`127.0 / tensor` would be reciprocal * 127: other bits).
        scale = torch.where(zero, torch.zeros_like(amax), torch.full_like(amax, max_bound) / amax)
        # In place, element for element the library's float32 ops: x * scale, round, clamp, / scale.
        quant = (row * scale).round_().clamp_(min_bound, max_bound)
        quant.div_(torch.where(zero, torch.ones_like(scale), scale))
        errors.append(quant.sub_(row).square_().mul_(weights).mean(dim=1))
    best = int(torch.argmin(torch.cat(errors)).item())
    return centers[candidates[best]].clone()
