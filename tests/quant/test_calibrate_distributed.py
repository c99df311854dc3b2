"""The histogram merge of distributed calibration, without torchrun: two simulated ranks replay the range from
each other's largest values and bin their own tensors; rank 0 adds the counts in frame order. The result must be
bit for bit the histogram pytorch-quantization's calibrator builds from all tensors in one process, where summing
each rank's own histogram is not (the end-to-end run under torchrun is in tests/stages/test_distributed.py)."""

import torch
from pytorch_quantization.calib import HistogramCalibrator

from trt_centerpoint.quant.calibrate_distributed import _largest, _Range


def _tensors():
    """Activations whose range grows several times (so the calibrator re-bins), with negative values (taken as
    |x|) and repeated maxima."""
    gen = torch.Generator().manual_seed(3)
    scales = [1.0, 4.0, 2.5, 9.0, 9.0, 0.5, 30.0]
    return [torch.randn(5000, generator=gen) * s for s in scales]


def _one_process(tensors):
    calib = HistogramCalibrator(8, None, False)
    for x in tensors:
        calib.collect(x)
    return calib


def test_replayed_ranges_give_one_process_histogram_bit_for_bit():
    tensors = _tensors()
    reference = _one_process(tensors)
    ranks = [_Range(HistogramCalibrator(8, None, False)) for _ in range(2)]
    for start in range(0, len(tensors), 2):  # steps of one frame per rank, the last step with one frame
        step = tensors[start:start + 2]
        counts = {}
        for rank, r in enumerate(ranks):
            for frame, x in enumerate(step):
                if frame == rank:
                    counts[frame] = r.bin(x)
                else:
                    r.skip(_largest(x), torch.device("cpu"))
        for frame in sorted(counts):  # rank 0 adds the step's counts in frame order
            ranks[0].add(counts[frame])
    for r in ranks:  # every rank knows the range; rank 0 has the counts
        assert torch.equal(r.edges, reference._calib_bin_edges) and r.bins == reference._num_bins
    assert torch.equal(ranks[0].hist, reference._calib_hist)


def test_summing_each_rank_histogram_would_not_be_the_same():
    """Why the replay exists: each rank's own calibrator picks its bin width from its own first tensor."""
    tensors = _tensors()
    reference = _one_process(tensors)
    a, b = _one_process(tensors[0::2]), _one_process(tensors[1::2])
    assert not torch.equal(a._calib_bin_edges[:2], b._calib_bin_edges[:2])
    n = max(a._calib_hist.numel(), b._calib_hist.numel())
    summed = torch.zeros(n)
    summed[: a._calib_hist.numel()] += a._calib_hist
    summed[: b._calib_hist.numel()] += b._calib_hist
    assert summed.numel() != reference._calib_hist.numel() or not torch.equal(summed, reference._calib_hist)
