"""det3d checkpoint IO: round trip, spconv 1.x layout, key errors, refusal of pickled code and NaN weights."""

import collections
import dataclasses
import zipfile

import pytest
import torch

from trt_centerpoint.config import config_to_dict, load_config
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


def _fresh(cfg, seed):
    torch.manual_seed(seed)
    model = CenterPoint(cfg)
    with torch.no_grad():  # make BN statistics non-trivial too
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    return model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(tmp_path, cfg):
    src, dst = _fresh(cfg, 0), _fresh(cfg, 1)
    assert not _same(src, dst)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(src, path, meta={"epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "meta"} and list(raw["state_dict"]) == list(src.state_dict())
    assert load_checkpoint(dst, path) == {"epoch": 3}
    assert _same(src, dst)
    assert not list(tmp_path.glob("*.tmp"))


def test_half_storage_loads_into_float_model(tmp_path, cfg):
    src, dst = _fresh(cfg, 0), _fresh(cfg, 1)
    save_checkpoint(src, tmp_path / "h.pth", half=True)
    load_checkpoint(dst, tmp_path / "h.pth")
    for k, v in src.state_dict().items():
        got = dst.state_dict()[k]
        assert got.dtype == v.dtype
        if v.is_floating_point():
            assert torch.equal(got, v.half().to(v.dtype))


def test_spconv1_layout_is_permuted(tmp_path, cfg):
    src, dst = _fresh(cfg, 0), _fresh(cfg, 1)
    state = collections.OrderedDict()
    for k, v in src.state_dict().items():
        state[k] = v.permute(1, 2, 3, 4, 0).contiguous() if v.dim() == 5 else v  # 2.x -> 1.x layout
    # det3d files: {"meta", "state_dict", "optimizer"}, saved from a DDP model
    torch.save({"meta": {"epoch": 20}, "state_dict": {"module." + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "v1.pth")
    load_checkpoint(dst, tmp_path / "v1.pth")
    assert _same(src, dst)


def test_mixed_layouts_refused(tmp_path, cfg):
    src = _fresh(cfg, 0)
    state = dict(src.state_dict())
    key = "backbone.conv_input.0.weight"
    state[key] = state[key].permute(1, 2, 3, 4, 0).contiguous()
    torch.save(state, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="mixed sparse weight layouts"):
        load_checkpoint(_fresh(cfg, 1), tmp_path / "mixed.pth")


def test_key_mismatch_lists_missing_and_unexpected(tmp_path, cfg):
    state = dict(_fresh(cfg, 0).state_dict())
    for k in [k for k in state if k.startswith("bbox_head.tasks.1.")]:
        del state[k]
    state["reader.weird.weight"] = torch.zeros(2)
    state["neck.blocks.0.1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_fresh(cfg, 1), tmp_path / "bad.pth")
    msg = str(info.value)
    assert "bad.pth" in msg and "\n" not in msg
    assert "missing: bbox_head.tasks.1.reg.0.weight" in msg and "more)" in msg
    assert "1 unexpected: reader.weird.weight" in msg
    assert "neck.blocks.0.1.weight [3, 3, 3, 3]" in msg


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_pickled_code_is_refused(tmp_path, cfg, capsys):
    torch.save({"state_dict": _fresh(cfg, 0).state_dict(), "hook": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: .*arbitrary pickled code"):
        load_checkpoint(_fresh(cfg, 1), tmp_path / "evil.pth")
    assert "this ran" not in capsys.readouterr().out


def test_unreadable_files(tmp_path, cfg):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(_fresh(cfg, 0), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(_fresh(cfg, 0), tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_checkpoint(_fresh(cfg, 0), tmp_path / "list.pth")


def test_a_zip_that_is_not_a_checkpoint_is_one_readable_line(tmp_path, cfg):
    with zipfile.ZipFile(tmp_path / "notes.pth", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_fresh(cfg, 0), tmp_path / "notes.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'notes.pth'}: not a readable PyTorch checkpoint: a zip archive")
    assert "enforce fail" not in message and "\n" not in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_keys(tmp_path, cfg, bad):
    """NaN weights would make every output NaN and every frame silently empty: refuse them by name."""
    state = _fresh(cfg, 0).state_dict()
    keys = ["backbone.conv_input.0.weight", "neck.blocks.0.1.weight"]
    for key in keys:
        state[key] = state[key].clone()
        state[key].view(-1)[3] = bad
    torch.save({"state_dict": state}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: 2 tensor\(s\) hold NaN or Inf values: "
                                              r"backbone\.conv_input\.0\.weight, neck\.blocks\.0\.1\.weight$"):
        load_checkpoint(_fresh(cfg, 1), tmp_path / "nan.pth")


@pytest.mark.parametrize("command", ["infer", "ptq"])
def test_nan_checkpoint_is_a_one_line_error_in_the_cli(tmp_path, cfg, command, capsys):
    import numpy as np

    from trt_centerpoint.cli import main

    state = _fresh(cfg, 0).state_dict()
    state["bbox_head.shared_conv.0.weight"] = torch.full_like(state["bbox_head.shared_conv.0.weight"], float("nan"))
    torch.save({"state_dict": state}, tmp_path / "nan.pth")
    points = tmp_path / "frame.npy"
    np.save(points, np.zeros((10, 5), np.float32))
    args = {"infer": ["--points", str(points)], "ptq": ["--calib-data", str(points), "--out", str(tmp_path / "q.pth")]}
    assert main([command, "--config", "tiny", "--checkpoint", str(tmp_path / "nan.pth"), *args[command]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bbox_head.shared_conv.0.weight" in err[0] and "NaN or Inf" in err[0]
    assert not (tmp_path / "q.pth").exists()


MMENGINE_CFG = """point_cloud_range = [{r}]
voxel_size = [{v}]
model = dict(
    type='CenterPoint',
    pts_voxel_layer=dict(
        max_num_points=10, voxel_size=[{v}], max_voxels=(90000, 120000),
        point_cloud_range=[{r}]))
"""


def _text(values) -> str:
    return ", ".join(str(x) for x in values)


@pytest.mark.parametrize("key", ["cfg", "config"])  # mmengine's config text / mmcv-era trainers'
def test_a_checkpoint_trained_on_another_voxel_grid_is_refused_by_name(tmp_path, cfg, key):
    model, path = _fresh(cfg, 0), tmp_path / "ckpt.pth"
    voxel, pcr = list(cfg.voxel.voxel_size), list(cfg.voxel.point_cloud_range)
    save_checkpoint(model, path, meta={key: MMENGINE_CFG.format(v=_text(voxel), r=_text(pcr)), "seed": 0})
    assert load_checkpoint(_fresh(cfg, 1), path)[key]  # the same geometry: loads
    other = [voxel[0] * 4 / 3, voxel[1] * 4 / 3, voxel[2]]
    save_checkpoint(model, path, meta={key: MMENGINE_CFG.format(v=_text(other), r=_text(pcr))})
    with pytest.raises(CheckpointError, match=rf"trained with voxel_size .* \(its meta\['{key}'\]\), config tiny"):
        load_checkpoint(_fresh(cfg, 1), path)
    wider = [pcr[0] - 8, *pcr[1:3], pcr[3] + 8, *pcr[4:]]
    save_checkpoint(model, path, meta={key: MMENGINE_CFG.format(v=_text(voxel), r=_text(wider))})
    with pytest.raises(CheckpointError, match="trained with point_cloud_range"):
        load_checkpoint(_fresh(cfg, 1), path)


def test_our_own_config_record_is_checked_and_openpcdet_style_files_pass(tmp_path, cfg):
    model, path = _fresh(cfg, 0), tmp_path / "ckpt.pth"
    other = dataclasses.replace(cfg, voxel=dataclasses.replace(cfg.voxel, voxel_size=[0.3, 0.3, 0.5]))
    save_checkpoint(model, path, meta={"config": config_to_dict(other)})
    with pytest.raises(CheckpointError, match=r"trained with voxel_size \[0.3, 0.3, 0.5\]"):
        load_checkpoint(_fresh(cfg, 1), path)
    save_checkpoint(model, path, meta={"config": config_to_dict(cfg)})
    load_checkpoint(_fresh(cfg, 1), path)
    save_checkpoint(model, path, meta={"config": "voxel_size = cfg_voxel  # not literals", "epoch": 1})
    load_checkpoint(_fresh(cfg, 1), path)  # nothing to compare: loads
