"""The backbone walk (the hand trace) and the per-layer output_bound plan."""

import math

import pytest
import torch

from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.output_bound import (
    DEFAULT_MARGIN,
    Observed,
    observe_active_voxels,
    plan_output_bounds,
    safe_bounds,
)
from trt_centerpoint.export.scn.walk import NotFusedError, walk_backbone


@pytest.fixture(scope="module")
def fused(model):
    return fuse_backbone(model.backbone)


@pytest.fixture(scope="module")
def ops(fused):
    return walk_backbone(fused)


def test_walk_lists_the_forward_in_order(ops, cfg):
    kinds = [op.kind for op in ops]
    assert kinds[:5] == ["conv", "conv", "conv", "add", "relu"] and kinds[-2:] == ["scatter", "reshape"]
    assert kinds.count("conv") == 13 and kinds.count("add") == 4 and kinds.count("relu") == 4
    add = next(op for op in ops if op.path == "conv1.0.add")
    assert add.inputs == (3, 1)  # conv1.0.conv2's output + the block input (conv_input's output)
    assert [op.output for op in ops] == list(range(1, len(ops) + 1))
    assert ops[-1].dense_shape == (1, cfg.bev_channels, *cfg.bev_shape)
    assert ops[-2].dense_shape == (1, cfg.backbone.channels[-1], cfg.backbone_out_depth, *cfg.bev_shape)


def test_walk_spatial_shapes_match_spconv(fused, ops, frames):
    seen = {}
    handles = [op.module.register_forward_hook(lambda m, i, o, p=op.path: seen.__setitem__(p, list(o.spatial_shape)))
               for op in ops if op.kind == "conv"]
    try:
        with torch.no_grad():
            fused(*frames[0], 1)
    finally:
        for h in handles:
            h.remove()
    assert seen == {op.path: list(op.out_spatial) for op in ops if op.kind == "conv"}


def test_walk_refuses_an_unfused_backbone(model):
    with pytest.raises(NotFusedError, match=r"conv_input\.0: sparse conv without a bias \(run fuse_backbone first\)"):
        walk_backbone(model.backbone)


def test_safe_bounds_hold_on_real_frames(fused, ops, frames, cfg):
    observed = observe_active_voxels(fused, ops, frames)
    safe = safe_bounds(ops, cfg.voxel.max_voxels)
    assert set(observed) == set(safe) and all(0 < observed[p].active <= safe[p] for p in safe)
    assert observed["conv_input.0"].ratio == 1.0  # a subm conv on the graph input keeps its sites
    assert safe["conv_input.0"] == cfg.voxel.max_voxels  # subm keeps the input's sites
    grid = math.prod(next(op for op in ops if op.path == "extra_conv.0").out_spatial)
    assert safe["extra_conv.0"] <= grid


def test_plan_scales_the_ratio_to_max_voxels_with_floor_cap_and_override(ops, cfg):
    mv = cfg.voxel.max_voxels
    observed = {"conv_input.0": Observed(1000, 1.0), "conv2.0": Observed(10, 0.001), "extra_conv.0": Observed(9, 50.0)}
    plan = plan_output_bounds(ops, mv, observed)
    assert plan["conv_input.0"].bound == mv and plan["conv_input.0"].source == "safe"  # 1.5 x 1.0 x mv > safe
    assert plan["conv2.0"].bound == math.ceil(DEFAULT_MARGIN * 0.001 * mv) and plan["conv2.0"].source == "scaled"
    assert plan["extra_conv.0"].bound == plan["extra_conv.0"].safe  # never above what the grid can hold
    assert plan["conv3.0"].source == "safe" and plan["conv3.0"].bound == plan["conv3.0"].safe  # not observed
    floored = plan_output_bounds(ops, mv, observed, floor=100)
    assert floored["conv2.0"].bound == 100 and floored["conv2.0"].source == "floor"
    fixed = plan_output_bounds(ops, mv, observed, override=12345)
    assert {b.bound for b in fixed.values()} == {12345} and {b.source for b in fixed.values()} == {"override"}
    with pytest.raises(ValueError, match="margin must be >= 1"):
        plan_output_bounds(ops, mv, observed, margin=0.5)


def test_bounds_from_sparse_frames_hold_on_dense_frames(model, fused, ops, cfg, tmp_path):
    """The failure users report: bounds taken from sparse calibration frames (one sweep of an 8-beam sensor)
    and frames three times denser (3 sweeps of 32 beams) at run time. The old rule (1.5 x the counts seen)
    is exceeded here; the plan's bounds are not, on any layer."""
    from trt_centerpoint.data.synth.dataset import generate_frame
    from trt_centerpoint.data.synth.sensor import SensorConfig

    def voxelized(sensor, indices):
        out = []
        for i in indices:
            points, _ = generate_frame(5, i, sensor)
            v = model.voxelize([torch.from_numpy(points)])
            out.append((v.features, v.coords))
        return out

    sparse = voxelized(SensorConfig(beams=8, num_sweeps=1), [0, 1])
    dense = voxelized(SensorConfig(beams=32, num_sweeps=3), [2, 3])
    assert min(len(f) for f, _ in dense) > 2 * max(len(f) for f, _ in sparse)
    calibrated = observe_active_voxels(fused, ops, sparse)
    plan = plan_output_bounds(ops, cfg.voxel.max_voxels, calibrated)
    seen = observe_active_voxels(fused, ops, dense)
    assert all(seen[p].active <= plan[p].bound for p in plan), {p: (seen[p].active, plan[p].bound) for p in plan}
    assert any(seen[p].active > DEFAULT_MARGIN * calibrated[p].active for p in plan)  # the old rule would drop voxels


def test_walk_refuses_a_leftover_batchnorm(model):
    import copy

    backbone = copy.deepcopy(model.backbone)
    for m in backbone.modules():
        if hasattr(m, "act_type") and m.bias is None:
            m.bias = torch.nn.Parameter(torch.zeros(m.out_channels))
    with pytest.raises(NotFusedError, match=r"conv_input\.1: BatchNorm1d left in the backbone; fuse BN / ReLU"):
        walk_backbone(backbone)


def test_observed_counts_are_spconv_s_own(fused, ops, frames):
    """The geometry-only count of every conv's active output voxels equals what spconv produces in a forward pass."""
    counts: dict[str, int] = {}
    handles = [op.module.register_forward_hook(
        lambda _m, _i, out, path=op.path: counts.__setitem__(path, max(counts.get(path, 0), out.features.shape[0])))
        for op in ops if op.kind == "conv"]
    try:
        with torch.no_grad():
            for features, coords in frames:
                fused(features, coords, 1)
    finally:
        for handle in handles:
            handle.remove()
    observed = observe_active_voxels(fused, ops, frames)
    assert {p: o.active for p, o in observed.items()} == counts
    assert any(o.ratio != 1.0 for o in observed.values())  # strided convs were counted, not only subm ones
