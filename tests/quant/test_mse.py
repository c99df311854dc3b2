"""The device-agnostic MSE amax search against pytorch-quantization 2.1.3's own algorithm.

The reference is the library's `_compute_amax_mse` itself, run on CPU with `Tensor.cuda` patched to the
identity (its only CUDA dependency): the same code, the same histograms. Besides the chosen amax we
capture the library's list of per-candidate errors (the argument of its `np.argmin`) and compare it
with ours element for element.
"""

from unittest import mock

import numpy as np
import pytest
import torch
from calib_helpers import frame_points, make_tiny_model
from pytorch_quantization.calib import HistogramCalibrator
from pytorch_quantization.calib import histogram as lib_histogram

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers
from trt_centerpoint.quant import mse as mse_module
from trt_centerpoint.quant.calibrate import CalibrationError, calibration_mode, check_amax, collect
from trt_centerpoint.quant.mse import merge_bins, mse_amax
from trt_centerpoint.quant.ptq import prepare_model


def library_mse(hist: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(amax, per-candidate errors) from the library's code, on CPU."""
    seen = {}
    real_argmin = np.argmin

    def spy(values, *args, **kwargs):
        seen["errors"] = torch.stack([torch.as_tensor(v) for v in values])
        return real_argmin(values, *args, **kwargs)

    # compute_amax's own conversion: counts -> int -> numpy, edges -> numpy
    counts, bin_edges = hist.int().cpu().numpy(), edges.cpu().numpy()
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), mock.patch.object(np, "argmin", spy):
        amax = lib_histogram._compute_amax_mse(counts, bin_edges, 8, False, 1, 128)
    return amax, seen["errors"]


def ours_mse(hist, edges):
    seen = {}
    real_argmin = torch.argmin

    def spy(values, *args, **kwargs):
        seen["errors"] = values.clone()
        return real_argmin(values, *args, **kwargs)

    with mock.patch.object(mse_module.torch, "argmin", spy):
        amax = mse_amax(hist, edges)
    return amax, seen["errors"]


def _histogram(batches):
    calib = HistogramCalibrator(8, None, False)
    for x in batches:
        calib.collect(x)
    return calib._calib_hist, calib._calib_bin_edges


def _synthetic_histograms():
    gen = torch.Generator().manual_seed(7)
    yield _histogram([torch.randn(40000, generator=gen)])  # 2048 bins
    yield _histogram([torch.rand(30000, generator=gen) ** 3 * 5])  # skewed
    yield _histogram([torch.randn(20000, generator=gen), torch.randn(20000, generator=gen) * 3])  # grown bins
    relu = torch.relu(torch.randn(30000, generator=gen))
    relu[:5] = 40.0  # a few outliers far out: MSE should clip them
    yield _histogram([relu])


def test_mse_equals_the_library_on_synthetic_histograms():
    for hist, edges in _synthetic_histograms():
        ref_amax, ref_errors = library_mse(hist, edges)
        amax, errors = ours_mse(hist, edges)
        assert torch.equal(errors, ref_errors)  # every candidate's error, bit for bit
        assert amax.dtype == torch.float32 and amax.device == hist.device
        assert float(amax) == float(ref_amax)


def test_mse_equals_the_library_on_model_activation_histograms(tiny_cfg, tiny_data):
    model, _ = prepare_model(tiny_cfg, model=make_tiny_model(tiny_cfg))
    with calibration_mode(model):
        collect(model, frame_points(tiny_data), progress=False)
    checked = 0
    for name, q in iter_quantizers(model):
        calib = q._calibrator
        if isinstance(calib, HistogramCalibrator) and name.startswith(
            ("backbone.conv3", "neck.blocks.0", "neck.concat")
        ):
            ref_amax, ref_errors = library_mse(calib._calib_hist, calib._calib_bin_edges)
            amax, errors = ours_mse(calib._calib_hist, calib._calib_bin_edges)
            assert torch.equal(errors, ref_errors), name
            assert float(amax) == float(ref_amax), name
            checked += 1
    assert checked >= 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="demonstrates the CPU-only failure")
def test_library_mse_needs_cuda_which_is_why_we_have_our_own():
    hist, edges = next(_synthetic_histograms())
    calib = HistogramCalibrator(8, None, False)
    calib._calib_hist, calib._calib_bin_edges = hist, edges
    with pytest.raises((AssertionError, RuntimeError)):
        calib.compute_amax("mse")


def test_all_zero_histogram_gives_zero_amax_which_is_refused():
    hist, edges = _histogram([torch.zeros(1000)])
    amax = mse_amax(hist, edges)
    assert float(amax) == float(library_mse(hist, edges)[0]) == 0.0
    with pytest.raises(CalibrationError, match="neck.x._input_quantizer: calibrated amax is 0"):
        check_amax("neck.x._input_quantizer", amax, is_weight=False)


def test_merge_bins_sums_adjacent_bins_of_a_grown_histogram():
    gen = torch.Generator().manual_seed(3)
    hist, edges = _histogram([torch.rand(5000, generator=gen), torch.rand(5000, generator=gen) * 9.3])
    assert hist.numel() > 10000  # grown: the second batch had a 9x larger maximum
    merged, merged_edges, factor = merge_bins(hist, edges, max_bins=4096)
    assert factor == -(-hist.numel() // 4096) and merged.numel() <= 4096
    assert merged.numel() * factor >= hist.numel() > (merged.numel() - 1) * factor
    padded = torch.cat([hist, hist.new_zeros(merged.numel() * factor - hist.numel())])
    assert torch.equal(merged, padded.view(-1, factor).sum(1)) and merged.sum() == hist.sum() == 10000
    assert torch.equal(merged_edges[:-1], edges[::factor][: merged.numel()])
    widths = merged_edges[1:] - merged_edges[:-1]
    assert torch.allclose(widths, widths[0].expand_as(widths), rtol=1e-3)  # still uniform (float32 edges)
    ref_amax, ref_errors = library_mse(merged, merged_edges)
    amax, errors = ours_mse(merged, merged_edges)
    assert torch.equal(errors, ref_errors) and float(amax) == float(ref_amax)
    same = merge_bins(hist, edges, max_bins=hist.numel())
    assert same[0] is hist and same[2] == 1
