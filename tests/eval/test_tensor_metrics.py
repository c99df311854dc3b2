"""tensor_metrics / merge_metrics / error_histogram against brute-force numpy (float64, element by element)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trt_centerpoint.eval.tensor_metrics import (
    error_histogram,
    log_abs_error,
    merge_metrics,
    tensor_metrics,
)


def _brute(ref: np.ndarray, got: np.ndarray) -> dict:
    r = [float(v) for v in ref.ravel()]
    g = [float(v) for v in got.ravel()]
    dot = sum(a * b for a, b in zip(r, g))
    nr = math.sqrt(sum(a * a for a in r))
    ng = math.sqrt(sum(b * b for b in g))
    errs = sorted(abs(a - b) for a, b in zip(r, g))
    n = len(errs)
    median = errs[n // 2] if n % 2 else (errs[n // 2 - 1] + errs[n // 2]) / 2
    noise = sum((a - b) ** 2 for a, b in zip(r, g))
    return {"cosine": dot / (nr * ng), "max_abs": errs[-1], "mean_abs": sum(errs) / n, "median_abs": median,
            "snr_db": 10 * math.log10(sum(a * a for a in r) / noise), "ref_max_abs": max(abs(a) for a in r),
            "numel": n}


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 5, 7)).astype(np.float32)
    got = (ref + rng.normal(scale=0.05, size=ref.shape)).astype(np.float32)
    return ref, got


def test_matches_brute_force(pair):
    ref, got = pair
    m, b = tensor_metrics(ref, got), _brute(ref, got)
    assert set(m) == set(b)
    for key in b:
        assert m[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


def test_torch_inputs_equal_numpy(pair):
    ref, got = pair
    assert tensor_metrics(torch.from_numpy(ref), torch.from_numpy(got)) == tensor_metrics(ref, got)


def test_identical_is_perfect(pair):
    ref, _ = pair
    m = tensor_metrics(ref, ref.copy())
    assert m["cosine"] == 1.0 and m["max_abs"] == 0.0 and m["median_abs"] == 0.0
    assert m["snr_db"] == math.inf


def test_zero_tensors():
    z = np.zeros(4, np.float32)
    assert tensor_metrics(z, z)["cosine"] == 1.0
    assert tensor_metrics(z, np.ones(4))["cosine"] == 0.0
    assert tensor_metrics(z, np.ones(4))["snr_db"] == -math.inf


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        tensor_metrics(np.zeros((2, 3)), np.zeros((3, 2)))


def test_merge_is_worst_case(pair):
    ref, got = pair
    frames = [tensor_metrics(ref, got), tensor_metrics(ref, ref + 0.5), tensor_metrics(ref[:1], ref[:1])]
    merged = merge_metrics(frames)
    assert merged["cosine"] == min(f["cosine"] for f in frames)
    assert merged["snr_db"] == min(f["snr_db"] for f in frames)
    assert merged["max_abs"] == max(f["max_abs"] for f in frames)
    assert merged["median_abs"] == max(f["median_abs"] for f in frames)
    assert merged["numel"] == ref.size * 2 + ref[:1].size and merged["frames"] == 3
    all_err = np.concatenate([np.abs(ref - got).ravel(), np.full(ref.size, 0.5), np.zeros(ref[:1].size)])
    assert merged["mean_abs"] == pytest.approx(all_err.astype(np.float64).mean(), rel=1e-6)
    assert merged["median_abs"] >= np.median(all_err)  # the documented upper bound
    with pytest.raises(ValueError):
        merge_metrics([])


def test_histogram_on_log10_error(pair):
    ref, got = pair
    hist = error_histogram(ref, got, bins=20)
    assert len(hist["edges"]) == 21 and len(hist["counts"]) == 20
    assert sum(hist["counts"]) == ref.size
    logs = np.log10(np.abs(ref.astype(np.float64) - got.astype(np.float64)))
    assert hist["edges"][0] == pytest.approx(logs.min()) and hist["edges"][-1] == pytest.approx(logs.max())
    expected, _ = np.histogram(logs, bins=np.asarray(hist["edges"]))
    assert hist["counts"] == expected.tolist()


def test_histogram_exact_match_lands_at_floor():
    x = np.arange(5, dtype=np.float32)
    hist = error_histogram(x, x, bins=4, floor=1e-9)
    assert hist["counts"][0] == 5 and hist["edges"][0] == pytest.approx(-9.0)
    assert np.all(log_abs_error(x, x, floor=1e-9) == -9.0)


def test_histogram_fixed_range_sums_across_frames(pair):
    ref, got = pair
    a = error_histogram(ref[0], got[0], bins=8, value_range=(-6.0, 0.0))
    b = error_histogram(ref[1:], got[1:], bins=8, value_range=(-6.0, 0.0))
    whole = error_histogram(ref, got, bins=8, value_range=(-6.0, 0.0))
    assert [x + y for x, y in zip(a["counts"], b["counts"])] == whole["counts"]
