"""spconv 2.3.8 on CPU, with trt_centerpoint's fixes, against dense torch convolutions (2 torch threads)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("spconv.pytorch")

from trt_centerpoint._compat import spconv as spconv_compat  # noqa: E402
from trt_centerpoint._compat.spconv import (  # noqa: E402
    apply_spconv_cpu_fixes,
    import_spconv,
    revert_spconv_cpu_fixes,
    spconv_fix_status,
    spconv_version_is_known_bad,
)
from trt_centerpoint.errors import UserError  # noqa: E402

spconv = import_spconv()
from cumm import tensorview as tv  # noqa: E402  (installed with spconv)

SHAPE = [9, 20, 20]
DTYPE = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)
RELU = tv.gemm.Activation.ReLU


@pytest.fixture(autouse=True)
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _sparse_input(channels: int, seed: int, shape=SHAPE, density: float = 0.08):
    gen = torch.Generator().manual_seed(seed)
    sites = (torch.rand(shape, generator=gen) < density).nonzero().int()
    coords = torch.cat([torch.zeros(len(sites), 1, dtype=torch.int32), sites], 1)
    feats = torch.randn(len(sites), channels, generator=gen, dtype=DTYPE).requires_grad_(True)
    return feats, coords


def _densify(feats: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    """[N, C] at (b=0, z, y, x) -> [1, C, D, H, W], differentiable w.r.t. feats."""
    depth, height, width = shape
    z, y, x = coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()
    flat = feats.new_zeros((feats.shape[1], depth * height * width))
    flat = flat.index_copy(1, (z * height + y) * width + x, feats.T)
    return flat.reshape(1, feats.shape[1], depth, height, width)


def _at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """[1, C, D, H, W] sampled at coords (b=0, z, y, x) -> [N, C]."""
    return dense[0][:, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()].T


def _dense_weight(conv) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)  # spconv [out, kz, ky, kx, in] -> conv3d [out, in, kz, ky, kx]


def _sorted_sites(coords: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(map(tuple, coords.tolist()))


def _grads(*tensors):
    out = [None if t is None or t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return out


def _check(sparse_fn, dense_fn, params, upstream_seed=7):
    """Run sparse and dense versions, compare outputs and grads of (input feats, weight, bias)."""
    out_feats, out_coords = sparse_fn()
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randn(out_feats.shape, generator=gen, dtype=DTYPE)
    (out_feats * upstream).sum().backward()
    sparse_grads = _grads(*params)

    ref = dense_fn(out_coords)
    torch.testing.assert_close(out_feats.detach(), ref.detach(), **TOL)
    (ref * upstream).sum().backward()
    dense_grads = _grads(*params)
    for name, gs, gd in zip(("features", "weight", "bias"), sparse_grads, dense_grads):
        if gd is None:
            assert gs is None, name
            continue
        assert gs is not None, f"no sparse grad for {name}"
        torch.testing.assert_close(gs, gd, **TOL, msg=lambda m, n=name: f"grad of {n}: {m}")


# --- fix status and guard --------------------------------------------------------------------------------


def test_fixes_active_and_idempotent():
    first = apply_spconv_cpu_fixes()
    assert first == {"scatter_add": True, "stream": True, "bias_act": True}
    from spconv.pytorch import conv, ops

    ops_obj, stream_fn, fwd_fn = ops.SpconvOps, ops.get_current_stream, conv.SparseConvolutionBase._conv_forward
    assert apply_spconv_cpu_fixes() == first
    assert import_spconv() is spconv
    assert spconv_fix_status() == first
    # re-applying does not wrap twice
    assert ops.SpconvOps is ops_obj and ops.get_current_stream is stream_fn
    assert conv.SparseConvolutionBase._conv_forward is fwd_fn
    assert isinstance(ops.SpconvOps, spconv_compat._SpconvOpsCpuScatterFix)


@pytest.mark.parametrize(
    "version,bad",
    [("2.3.8", True), ("2.3.6", True), ("2.3.0", True), ("2.3.8.post1", True), ("2.3.9", False),
     ("2.4.0", False), ("2.2.6", False), ("3.0.0", False), ("unknown", False)],
)
def test_version_guard(version, bad):
    assert spconv_version_is_known_bad(version) is bad


def test_missing_spconv_is_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(UserError, match="cu120") as info:
        import_spconv()
    assert "cpu" in str(info.value) and "\n" not in str(info.value)


def test_bugs_come_back_without_fixes():
    """Without the patches: eval-mode bias asserts and backward needs CUDA (on a CPU-only torch)."""
    feats, coords = _sparse_input(4, seed=1)
    conv = spconv.SubMConv3d(4, 8, 3, bias=True).to(DTYPE)
    try:
        revert_spconv_cpu_fixes()
        assert spconv_fix_status() == {"scatter_add": False, "stream": False, "bias_act": False}
        with pytest.raises(AssertionError, match="act and bias"):
            conv.eval()(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
        if not torch.cuda.is_available():
            out = conv.train()(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
            with pytest.raises((AssertionError, RuntimeError)):
                out.features.sum().backward()
    finally:
        apply_spconv_cpu_fixes()
    assert all(spconv_fix_status().values())


# --- numerics against dense convs --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bias", [False, True])
def test_subm_conv_matches_dense(bias, mode):
    feats, coords = _sparse_input(4, seed=2)
    conv = spconv.SubMConv3d(4, 6, 3, padding=1, bias=bias, indice_key="s").to(DTYPE).train(mode == "train")

    def sparse():
        out = conv(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
        assert _sorted_sites(out.indices) == _sorted_sites(coords)
        return out.features, out.indices

    def dense(out_coords):
        y = F.conv3d(_densify(feats, coords, SHAPE), _dense_weight(conv), conv.bias, padding=1)
        return _at(y, out_coords)

    _check(sparse, dense, (feats, conv.weight, conv.bias))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bias", [False, True])
def test_strided_conv_matches_dense(bias, mode):
    feats, coords = _sparse_input(4, seed=3)
    conv = spconv.SparseConv3d(4, 6, 3, stride=2, padding=1, bias=bias).to(DTYPE).train(mode == "train")

    def sparse():
        out = conv(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
        # output sites: every site whose receptive field holds an active input
        mask = _densify(torch.ones(len(coords), 1, dtype=DTYPE), coords, SHAPE)
        hits = F.conv3d(mask, torch.ones(1, 1, 3, 3, 3, dtype=DTYPE), stride=2, padding=1)[0, 0]
        assert list(out.spatial_shape) == list(hits.shape)
        assert _sorted_sites(out.indices[:, 1:]) == _sorted_sites(hits.nonzero())
        return out.features, out.indices

    def dense(out_coords):
        y = F.conv3d(_densify(feats, coords, SHAPE), _dense_weight(conv), conv.bias, stride=2, padding=1)
        return _at(y, out_coords)

    _check(sparse, dense, (feats, conv.weight, conv.bias))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_inverse_conv_matches_dense(mode):
    feats, coords = _sparse_input(4, seed=4)
    down = spconv.SparseConv3d(4, 6, 3, stride=2, padding=1, bias=False, indice_key="down").to(DTYPE)
    inv = spconv.SparseInverseConv3d(6, 5, 3, indice_key="down", bias=True).to(DTYPE).train(mode == "train")
    with torch.no_grad():
        mid = down(spconv.SparseConvTensor(feats.detach(), coords, SHAPE, 1))
    gen = torch.Generator().manual_seed(5)
    mid_feats = torch.randn(mid.features.shape, generator=gen, dtype=DTYPE).requires_grad_(True)
    mid_shape = list(mid.spatial_shape)

    def sparse():
        out = inv(mid.replace_feature(mid_feats))
        assert list(out.spatial_shape) == SHAPE
        assert _sorted_sites(out.indices) == _sorted_sites(coords)
        return out.features, out.indices

    def dense(out_coords):
        # transposed conv of the strided conv: weight [out, k, in] -> conv_transpose3d's [in, out, k]
        weight = inv.weight.permute(4, 0, 1, 2, 3)
        out_pad = [s - ((m - 1) * 2 - 2 + 3) for s, m in zip(SHAPE, mid_shape)]
        y = F.conv_transpose3d(_densify(mid_feats, mid.indices, mid_shape), weight, inv.bias, stride=2,
                               padding=1, output_padding=out_pad)
        return _at(y, out_coords)

    _check(sparse, dense, (mid_feats, inv.weight, inv.bias))


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_fused_relu_eval_matches_dense(kind):
    """act_type (what ReLU fusion sets) in eval mode: kernel without act, ReLU(x + bias) outside."""
    feats, coords = _sparse_input(4, seed=6)
    if kind == "subm":
        conv, stride = spconv.SubMConv3d(4, 6, 3, padding=1, bias=True), 1
    else:
        conv, stride = spconv.SparseConv3d(4, 6, 3, stride=2, padding=1, bias=True), 2
    conv = conv.to(DTYPE).eval()
    conv.act_type = RELU

    def sparse():
        out = conv(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
        assert (out.features >= 0).all() and (out.features == 0).any()
        return out.features, out.indices

    def dense(out_coords):
        y = F.conv3d(_densify(feats, coords, SHAPE), _dense_weight(conv), conv.bias, stride=stride, padding=1)
        return _at(F.relu(y), out_coords)

    _check(sparse, dense, (feats, conv.weight, conv.bias))


def test_fused_relu_with_add_input_follows_spconv():
    """With add_input, spconv computes act(act(conv + bias) + add); the CPU path must do the same."""
    feats, coords = _sparse_input(4, seed=8)
    conv = spconv.SubMConv3d(4, 4, 3, padding=1, bias=True).to(DTYPE).eval()
    conv.act_type = RELU
    x = spconv.SparseConvTensor(feats, coords, SHAPE, 1)
    got = conv(x, add_input=x).features
    y = F.conv3d(_densify(feats, coords, SHAPE), _dense_weight(conv), conv.bias, padding=1)
    want = F.relu(F.relu(_at(y, coords)) + feats)
    torch.testing.assert_close(got, want, **TOL)


def test_float32_eval_bias_matches_dense():
    feats, coords = _sparse_input(5, seed=9)
    feats = feats.detach().float()
    conv = spconv.SubMConv3d(5, 16, 3, padding=1, bias=True).eval()
    with torch.no_grad():
        out = conv(spconv.SparseConvTensor(feats, coords, SHAPE, 1))
        y = F.conv3d(_densify(feats, coords, SHAPE), _dense_weight(conv), conv.bias, padding=1)
        # both sides sum 27 x 5 products and a bias in float32, each in its own order: each is off by at most
        # (27 x 5 + 1) u x the sum of |terms| (u = eps / 2, the sum taken in float64), hence twice that apart
        terms = F.conv3d(_densify(feats.double().abs(), coords, SHAPE), _dense_weight(conv).double().abs(),
                         conv.bias.double().abs(), padding=1)
    bound = 2 * (27 * 5 + 1) * torch.finfo(torch.float32).eps / 2 * _at(terms, out.indices)
    assert out.features.dtype == torch.float32
    assert ((out.features.double() - _at(y, out.indices).double()).abs() <= bound).all()


# --- determinism at 2 threads --------------------------------------------------------------------------------


def test_strided_stack_is_bit_repeatable():
    """Without the scatter fix this races at 2 threads (different output on most runs at this size)."""
    assert spconv_fix_status()["scatter_add"]
    shape = [9, 40, 40]
    gen = torch.Generator().manual_seed(10)
    sites = (torch.rand(shape, generator=gen) < 0.1).nonzero().int()
    coords = torch.cat([torch.zeros(len(sites), 1, dtype=torch.int32), sites], 1)
    feats = torch.randn(len(sites), 16, generator=gen)
    torch.manual_seed(0)
    net = spconv.SparseSequential(
        spconv.SubMConv3d(16, 16, 3, padding=1, indice_key="a"),
        spconv.SparseConv3d(16, 32, 3, stride=2, padding=1),
        spconv.SubMConv3d(32, 32, 3, padding=1, indice_key="b"),
        spconv.SparseConv3d(32, 32, 3, stride=2, padding=1),
    ).eval()
    with torch.no_grad():
        runs = [net(spconv.SparseConvTensor(feats, coords, shape, 1)) for _ in range(4)]
    for other in runs[1:]:
        assert torch.equal(other.indices, runs[0].indices)
        assert torch.equal(other.features, runs[0].features)
