"""Calibration under torchrun: every rank runs its share of the frames, and the amax come out identical to one
process's on the same frames (in the same order).

Why not simply add up the ranks' histograms: pytorch-quantization's ``HistogramCalibrator`` (torch path) fixes its
bin width on the first tensor it sees and, when a later tensor exceeds the range, re-bins with more bins; each
tensor is binned by ``torch.histc`` against the range *at that moment*, and the counts are float32 sums, which
lose exactness past 2**24 and then depend on the order of the additions. So one process's histogram depends on the
order of the frames, and per-rank histograms summed afterwards would differ from it in the last counts (and an
amax searched on them could move).

What this module does instead, per step (one frame per rank, `distributed.lockstep`):

1. each rank runs its frame with a recorder in place of each histogram calibrator (the tensors it would have
   collected are kept alive for this one frame);
2. the ranks exchange the largest value of each collected tensor (a few floats): the range of every calibrator
   evolves with those alone, so every rank replays the range through the step's frames in frame order, and bins
   its own tensors with the library's own ``collect`` at exactly the range one process would have had then;
3. rank 0 gathers the step's per-tensor histograms and adds them in frame order, as one process does.

Max calibrators (weights, and activations with ``--method max``) merge exactly with an elementwise max. Rank 0
then computes every amax once (`calibrate.compute_amax`) and broadcasts them. Cost: one frame's collected tensors
held per rank, one small all-gather and one gather per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from torch import nn
from tqdm import tqdm

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers
from trt_centerpoint.distributed import DistContext, all_gather, broadcast, gather, lockstep

__all__ = ["collect_distributed", "share_amax"]


class _Recorder:
    """Stands in for a histogram calibrator during one frame: keeps what it is given (a reference, with its
    version: `tensors` checks that nothing changed it in place since), bins nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, int]] = []

    def collect(self, x: torch.Tensor) -> None:
        self.calls.append((x.detach(), x._version))

    def tensors(self) -> list[torch.Tensor]:
        for x, version in self.calls:
            if x._version != version:
                raise RuntimeError("distributed calibration: a calibrated tensor was changed in place after it was "
                                   "collected; its histogram would not be the one a single process collects")
        return [x for x, _ in self.calls]


def _largest(x: torch.Tensor) -> float:
    """The value the library's ``collect`` takes as the tensor's range (the max of |x| as float32)."""
    return float(x.float().abs().max())


class _Range:
    """One histogram calibrator's range (bin edges, bin count) as one process would have it, replayed from the
    largest values alone; `hist`: the summed counts (rank 0 only)."""

    def __init__(self, calibrator: HistogramCalibrator) -> None:
        self.calibrator = calibrator
        self.edges, self.bins = calibrator._calib_bin_edges, calibrator._num_bins
        self.hist: torch.Tensor | None = None

    def _scratch(self) -> HistogramCalibrator:
        scratch = copy.copy(self.calibrator)
        scratch._calib_bin_edges, scratch._num_bins = self.edges, self.bins
        scratch._calib_hist = None if self.edges is None else torch.zeros(self.bins, device=self.edges.device)
        return scratch

    def bin(self, x: torch.Tensor) -> torch.Tensor:
        """`x`'s counts at the current range (the library's own binning; it widens the range as it would)."""
        scratch = self._scratch()
        scratch.collect(x)
        self.edges, self.bins = scratch._calib_bin_edges, scratch._num_bins
        return scratch._calib_hist.detach().cpu()

    def skip(self, largest: float, device: torch.device) -> None:
        """Advance the range past another rank's tensor, of which only the largest value is needed."""
        self.bin(torch.tensor([largest], dtype=torch.float32, device=device))

    def add(self, counts: torch.Tensor) -> None:
        """Sum as the library does, new counts first: new[:old] += old."""
        total = counts.clone()
        if self.hist is not None:
            total[: self.hist.numel()] += self.hist
        self.hist = total


def collect_distributed(model: nn.Module, count: int, run_frame: Callable[[int], bool], ctx: DistContext,
                        progress: bool = True) -> tuple[int, int]:
    """Calibration statistics over frames 0..count-1 shared by the ranks (the model in calibration mode).

    `run_frame(i)` runs frame i through the model and returns False for a frame with nothing to run. On rank 0
    every calibrator ends as one process's would after the frames in order; on the other ranks they are
    meaningless (amax come from rank 0: `share_amax`). Returns (frames used, frames empty), over all ranks."""
    hist = [(name, q) for name, q in iter_quantizers(model) if isinstance(q._calibrator, HistogramCalibrator)]
    ranges = [_Range(q._calibrator) for _, q in hist]
    device = next(model.parameters()).device
    used = empty = 0
    bar = tqdm(total=count, desc="calibrate", unit="frame", disable=not (progress and ctx.is_main))
    try:
        for indices, mine in lockstep(range(count), ctx):
            recorders = [_Recorder() for _ in hist]
            for (_, q), rec in zip(hist, recorders):
                q._calibrator = rec
            try:
                ran = run_frame(mine) if mine is not None else None
            finally:
                for (_, q), r in zip(hist, ranges):
                    q._calibrator = r.calibrator
            largest = [[_largest(x) for x in rec.tensors()] for rec in recorders] if ran else None
            step = all_gather((ran, largest), ctx)[: len(indices)]
            counts = None
            for rank, (frame_ran, frame_largest) in enumerate(step):
                used, empty = used + bool(frame_ran), empty + (frame_ran is False)
                if not frame_ran:
                    continue
                if rank == ctx.rank:
                    counts = [[r.bin(x) for x in rec.tensors()] for r, rec in zip(ranges, recorders)]
                else:
                    for r, values in zip(ranges, frame_largest):
                        for value in values:
                            r.skip(value, device)
            del recorders
            for frame_counts in gather(counts, ctx) or []:
                for r, calls in zip(ranges, frame_counts or []):
                    for c in calls:
                        r.add(c)
            bar.update(len(indices))
    finally:
        bar.close()
    if ctx.is_main:
        for r in ranges:
            if r.hist is not None:
                r.calibrator._calib_hist, r.calibrator._calib_bin_edges = r.hist, r.edges
                r.calibrator._num_bins = r.bins
    _merge_max_calibrators(model, ctx)
    return used, empty


def _merge_max_calibrators(model: nn.Module, ctx: DistContext) -> None:
    """Elementwise max of every max calibrator's running amax over the ranks, on rank 0 (exact in any order)."""
    calibrators = [q._calibrator for _, q in iter_quantizers(model) if isinstance(q._calibrator, MaxCalibrator)]
    mine = [None if c._calib_amax is None else c._calib_amax.detach().cpu() for c in calibrators]
    for other in (gather(mine, ctx) or [])[1:]:
        for c, amax in zip(calibrators, other):
            if amax is None:
                continue
            ours = c._calib_amax
            c._calib_amax = amax if ours is None else torch.max(ours, amax.to(ours.device))


def share_amax(model: nn.Module, names: Sequence[str], ctx: DistContext, set_amax: Callable) -> dict:
    """Rank 0's amax of the quantizers `names` on every rank; returns {name: amax values}."""
    quantizers = dict(iter_quantizers(model))
    amax = broadcast({n: quantizers[n].amax.detach().cpu() for n in names} if ctx.is_main else None, ctx)
    for name, value in amax.items():
        set_amax(quantizers[name], value)
    return {name: [float(v) for v in value.flatten().tolist()] for name, value in amax.items()}
