"""BN folding: the folded model computes what the unfolded one does (eval mode), BN is gone."""

import copy

import pytest
import torch
from calib_helpers import frame_points, make_tiny_model, run_model

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.quant.calibrate import set_amax
from trt_centerpoint.quant.fuse_bn import fold_bn, fuse_bn, has_batchnorm
from trt_centerpoint.quant.modules import quantize_sparse_conv

spconv = import_spconv()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_fused_model_matches_unfused_model(tiny_cfg, tiny_data):
    model = make_tiny_model(tiny_cfg, seed=3)
    fused = copy.deepcopy(model)
    names = fuse_bn(fused)
    assert not has_batchnorm(fused)
    for expected in ("backbone.conv_input.0", "backbone.conv2.0", "backbone.conv2.3.conv1", "backbone.conv2.3.conv2",
                     "backbone.extra_conv.0", "neck.blocks.0.1", "neck.deblocks.0.0", "neck.deblocks.1.0",
                     "bbox_head.shared_conv.0", "bbox_head.tasks.1.hm.0"):
        assert expected in names
    assert isinstance(fused.backbone.conv2[1], torch.nn.Identity) and isinstance(
        fused.backbone.conv2[3].bn1, torch.nn.Identity
    )
    assert fused.backbone.conv2[0].bias is not None  # a bias-free conv got one
    # the algebra, in float64: both models then differ by rounding only, a few float64 unit roundoffs (1.1e-16)
    # per term summed (at most 27 x 64 per output) through ~20 layers: far below 1e-9 on any CPU, where a wrong
    # fold is off by percents. (In float32 the same comparison would hang on the CPU's summation order.)
    model64 = copy.deepcopy(model).double()
    fused64 = copy.deepcopy(model64)
    fuse_bn(fused64)
    for points in frame_points(tiny_data)[:2]:
        voxels = model.voxelize([points])
        features = voxels.features.double()
        with torch.no_grad():
            bev_ref = model64.backbone(features, voxels.coords, 1)
            bev = fused64.backbone(features, voxels.coords, 1)
            ref, out = model64(features, voxels.coords, 1), fused64(features, voxels.coords, 1)
        assert bev.dtype == torch.float64 and _rel_err(bev, bev_ref) <= 1e-9
        for task_ref, task_out in zip(ref, out, strict=True):
            for key in task_ref:
                assert _rel_err(task_out[key], task_ref[key]) <= 1e-9, key
    assert run_model(fused, points)  # and the float32 fused model runs


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_fold_2d_in_float64_is_exact(kind):
    torch.manual_seed(0)
    if kind == "conv":
        conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=True).double()
    else:
        conv = torch.nn.ConvTranspose2d(3, 5, 2, stride=2, bias=False).double()  # weight [in, out, kh, kw]
    bn = torch.nn.BatchNorm2d(5).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_bn(conv, bn)
        assert torch.allclose(conv(x), ref, rtol=1e-12, atol=1e-12)


def test_fold_sparse_conv_keeps_indices():
    """In float64, as the 2D fold above: the folded conv is off by a few roundoffs of its 27 x 4 products."""
    torch.manual_seed(0)
    conv = spconv.SubMConv3d(4, 6, 3, padding=1, bias=False, indice_key="k").double().eval()
    bn = torch.nn.BatchNorm1d(6).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 2)
        bn.weight.uniform_(0.5, 2)
    coords = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4], [0, 2, 2, 3], [0, 4, 4, 4]], dtype=torch.int32)
    x = spconv.SparseConvTensor(torch.randn(4, 4, dtype=torch.float64), coords, [6, 6, 6], 1)
    with torch.no_grad():
        ref = bn(conv(x).features)
        fold_bn(conv, bn)
        out = conv(x)
    assert torch.equal(out.indices, coords) and _rel_err(out.features, ref) <= 1e-12


def test_fold_after_calibration_is_refused():
    conv = quantize_sparse_conv(spconv.SubMConv3d(4, 6, 3, padding=1, bias=False))
    set_amax(conv.weight_quantizer, torch.ones(6, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="fold BatchNorm before calibration"):
        fold_bn(conv, torch.nn.BatchNorm1d(6).eval())
