"""The model is det3d's VoxelNet, key for key: checkpoints of tianweiy/CenterPoint load as they are."""

import json
import math
from pathlib import Path

import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.model.centerpoint import CenterPoint

KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "det3d_nuscenes_voxel0075_keys.json").read_text())


@pytest.fixture(scope="module")
def nuscenes_model():
    torch.manual_seed(0)
    return CenterPoint(load_config("nuscenes_voxel0075")).eval()


def test_state_dict_equals_det3d(nuscenes_model):
    state = nuscenes_model.state_dict()
    assert list(state) == list(KEYS)  # same keys, same order
    assert {k: list(v.shape) for k, v in state.items()} == KEYS
    assert len(state) == 557
    assert sum(p.numel() for p in nuscenes_model.parameters()) == 8_941_590
    per_part = {
        part: (sum(1 for k in KEYS if k.startswith(part + ".")),
               sum(math.prod(s) for k, s in KEYS.items() if k.startswith(part + ".") and "running" not in k
                   and "num_batches" not in k))
        for part in ("backbone", "neck", "bbox_head")
    }
    assert [n for n, _ in per_part.values()] == [142, 84, 331]
    for part, (_, params) in per_part.items():
        assert sum(p.numel() for p in getattr(nuscenes_model, part).parameters()) == params


def test_bias_placement_matches_det3d(nuscenes_model):
    state = nuscenes_model.state_dict()
    assert "backbone.conv_input.0.bias" not in state
    assert "backbone.conv2.0.bias" not in state
    assert "backbone.conv1.0.conv1.bias" in state
    assert not any(k.startswith("neck.") and k.endswith(".bias") and state[k].dim() == 1
                   and k.replace(".bias", ".running_mean") not in state for k in state)
    assert all(f"bbox_head.tasks.{t}.hm.3.bias" in state for t in range(6))
    assert torch.allclose(state["bbox_head.tasks.0.hm.3.bias"], torch.full((1,), -2.19))


def test_nuscenes_bev_and_head_shapes(nuscenes_model):
    cfg = nuscenes_model.cfg
    g = torch.Generator().manual_seed(1)
    n = 400
    coords = torch.stack([
        torch.zeros(n, dtype=torch.int32),
        torch.randint(0, 41, (n,), generator=g, dtype=torch.int32),
        torch.randint(0, 1440, (n,), generator=g, dtype=torch.int32),
        torch.randint(0, 1440, (n,), generator=g, dtype=torch.int32),
    ], 1).unique(dim=0)
    with torch.no_grad():
        bev = nuscenes_model.backbone(torch.randn(len(coords), 5, generator=g), coords, 1)
        assert list(bev.shape) == [1, 256, 180, 180]
        assert bev.abs().sum() > 0
        preds = nuscenes_model.head_from_bev(bev)
    assert len(preds) == 6
    hm_channels = [len(t) for t in cfg.head.tasks]
    for task, out in zip(preds, hm_channels):
        assert list(task) == ["reg", "height", "dim", "rot", "vel", "hm"]
        assert {k: list(v.shape) for k, v in task.items()} == {
            "reg": [1, 2, 180, 180], "height": [1, 1, 180, 180], "dim": [1, 3, 180, 180],
            "rot": [1, 2, 180, 180], "vel": [1, 2, 180, 180], "hm": [1, out, 180, 180],
        }


def test_residual_add_is_called():
    """Calibration swaps `add` for a quantized add; the block's forward must really go through it."""
    cfg = load_config("tiny")
    model = CenterPoint(cfg).eval()
    calls = []
    for name, module in model.named_modules():
        if name.endswith(".add"):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    g = torch.Generator().manual_seed(2)
    coords = torch.cat([torch.zeros(300, 1, dtype=torch.int32),
                        torch.randint(0, 33, (300, 1), generator=g, dtype=torch.int32),
                        torch.randint(0, 128, (300, 2), generator=g, dtype=torch.int32)], 1).unique(dim=0)
    with torch.no_grad():
        model(torch.randn(len(coords), 5, generator=g), coords, 1)
    expected = [n for n, _ in model.named_modules() if n.endswith(".add")]
    assert len(expected) == 4 * cfg.backbone.blocks_per_stage
    assert calls == expected
