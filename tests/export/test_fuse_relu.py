"""BN folding + ReLU fusion: the fused backbone computes what the unfused one does, in libspconv's shape."""

import copy

import pytest
import torch
from torch import nn

from trt_centerpoint.export.scn.fuse import NO_ACT, RELU, FusedBasicBlock, fuse_backbone, fusion_summary, is_sparse_conv
from trt_centerpoint.quant.fuse_bn import fuse_bn


@pytest.fixture(scope="module")
def fused(model):
    return fuse_backbone(model.backbone)


def test_fused_backbone_equals_unfused(model, frames):
    """In float64: then the two differ by rounding only, a few float64 unit roundoffs (1.1e-16) per term summed
    (at most 27 x 64 per output) through the backbone's layers, far below 1e-9 of the output's scale on any CPU;
    a wrong fusion is off by percents. (In float32 the comparison would hang on the CPU's summation order.)"""
    backbone = copy.deepcopy(model.backbone).double()
    fused64 = fuse_backbone(backbone)
    with torch.no_grad():
        for features, coords in frames:
            ref = backbone(features.double(), coords, 1)
            got = fused64(features.double(), coords, 1)
            assert got.shape == ref.shape and got.dtype == torch.float64
            assert (got - ref).abs().max() <= 1e-9 * max(1.0, float(ref.abs().max()))
            assert ref.abs().max() > 0.05  # the comparison is not between zeros


def test_structure_is_what_libspconv_takes(fused):
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fused.modules())
    # The only ReLU modules left are the ones after a residual Add.
    relus = [name for name, m in fused.named_modules() if isinstance(m, nn.ReLU)]
    assert relus and all(name.endswith(".relu") and isinstance(fused.get_submodule(name[:-5]), FusedBasicBlock)
                         for name in relus)
    act = {name: m.act_type for name, m in fused.named_modules() if is_sparse_conv(m)}
    assert act["conv_input.0"] == RELU and act["extra_conv.0"] == RELU
    assert act["conv2.0"] == RELU and act["conv2.3.conv1"] == RELU and act["conv2.3.conv2"] == NO_ACT
    assert all(m.bias is not None for m in fused.modules() if is_sparse_conv(m))
    # module paths are those of the unfused model (calibration ranges are keyed by them)
    assert isinstance(fused.get_submodule("conv2.3.add"), nn.Module)
    assert isinstance(fused.get_submodule("conv2.1"), nn.Identity) and isinstance(
        fused.get_submodule("conv2.2"), nn.Identity
    )


def test_input_model_is_untouched(model, fused):
    assert isinstance(model.backbone.conv_input[1], nn.BatchNorm1d)
    assert model.backbone.conv_input[0].act_type == NO_ACT and model.backbone.conv_input[0].bias is None
    assert "13 BatchNorm folded into 13 sparse convs, 9 ReLU fused" in fusion_summary(model.backbone, fused)
    assert "4 ReLU kept after residual Add" in fusion_summary(model.backbone, fused)


def test_bn_already_folded_by_calibration_gives_the_same_model(model, fused, frames):
    import copy

    prefolded = copy.deepcopy(model.backbone).eval()
    fuse_bn(prefolded)
    again = fuse_backbone(prefolded)
    features, coords = frames[0]
    with torch.no_grad():
        assert torch.equal(again(features, coords, 1), fused(features, coords, 1))


def test_a_conv_with_another_activation_is_refused(model):
    import copy

    from cumm import tensorview as tv

    backbone = copy.deepcopy(model.backbone)
    backbone.conv_input[0].act_type = tv.gemm.Activation.Sigmoid
    with pytest.raises(ValueError, match="already has activation"):
        fuse_backbone(backbone)


def test_summary_of_an_already_folded_backbone_says_so(model):
    once = fuse_backbone(model.backbone)
    assert "BatchNorm already folded into the 13 sparse convs" in fusion_summary(once, fuse_backbone(once))
