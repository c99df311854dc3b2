"""OpenPCDet and MMDetection3D checkpoints: their file layouts and key names, in and out, and clear refusals."""

from __future__ import annotations

import dataclasses
import zipfile

import pytest
import torch

from trt_centerpoint.config import config_to_dict, load_config
from trt_centerpoint.eval.nuscenes_metric import default_attribute
from trt_centerpoint.model.centerpoint import CenterPoint, load_model
from trt_centerpoint.model.checkpoint import SPCONV1_TO_2, CheckpointError, save_checkpoint
from trt_centerpoint.model.decode import decode
from trt_centerpoint.model.random_init import save_random_checkpoint
from trt_centerpoint.model.sources import detect_source, from_det3d


def _tiny(source: str, **backbone):
    cfg = load_config("tiny")
    return dataclasses.replace(cfg, name=f"tiny_{source}", source=source,
                               backbone=dataclasses.replace(cfg.backbone, **backbone),
                               head=dataclasses.replace(cfg.head, conv_bias=source != "mmdetection3d"))


def _full_keys(name: str) -> dict[str, list[int]]:
    cfg = load_config(name)
    with torch.device("meta"):
        state = CenterPoint(cfg).state_dict()
    return {k: list(v.shape) for k, v in from_det3d(state, cfg.source, cfg).items()}


def test_full_size_key_lists_are_the_projects():
    # OpenPCDet's CenterPoint: 558 keys (det3d's 557 under its names plus the detector's global_step buffer);
    # MMDetection3D's: 504 (no conv bias before a BatchNorm). Shapes as their modules define them.
    pcdet = _full_keys("openpcdet_voxel0075")
    assert len(pcdet) == 558
    assert pcdet["global_step"] == [1]
    assert pcdet["backbone_3d.conv2.0.0.weight"] == [32, 3, 3, 3, 16]  # post_act_block (conv, bn, relu)
    assert pcdet["backbone_3d.conv2.1.conv1.bias"] == [32]
    assert pcdet["backbone_3d.conv_out.0.weight"] == [128, 3, 1, 1, 128]
    assert pcdet["backbone_2d.blocks.0.1.weight"] == [128, 256, 3, 3]  # ZeroPad2d at index 0
    assert pcdet["backbone_2d.deblocks.0.0.weight"] == [128, 256, 1, 1]  # ConvTranspose2d [in, out, 1, 1]
    assert pcdet["backbone_2d.deblocks.1.0.weight"] == [256, 256, 2, 2]
    assert pcdet["dense_head.shared_conv.0.bias"] == [64]
    assert pcdet["dense_head.heads_list.0.center.0.0.weight"] == [64, 64, 3, 3]
    assert pcdet["dense_head.heads_list.1.hm.1.weight"] == [2, 64, 3, 3]
    assert pcdet["dense_head.heads_list.5.center_z.0.1.running_var"] == [64]

    mm = _full_keys("mmdet3d_voxel0075")
    assert len(mm) == 504
    assert not any(k.endswith(("conv1.bias", "conv2.bias", "conv.bias")) for k in mm)
    assert mm["pts_middle_encoder.conv_input.0.weight"] == [16, 3, 3, 3, 5]
    assert mm["pts_middle_encoder.encoder_layers.encoder_layer1.2.0.weight"] == [32, 3, 3, 3, 16]  # closing stride
    assert mm["pts_middle_encoder.encoder_layers.encoder_layer4.1.conv2.weight"] == [128, 3, 3, 3, 128]
    assert mm["pts_middle_encoder.conv_out.0.weight"] == [128, 3, 1, 1, 128]
    assert mm["pts_backbone.blocks.0.0.weight"] == [128, 256, 3, 3]  # no ZeroPad2d
    assert mm["pts_backbone.blocks.1.15.weight"] == [256, 256, 3, 3]  # conv k at 3k, BN at 3k + 1
    assert mm["pts_neck.deblocks.0.0.weight"] == [256, 128, 1, 1]  # Conv2d (use_conv_for_no_stride)
    assert mm["pts_bbox_head.shared_conv.conv.weight"] == [64, 512, 3, 3]
    assert mm["pts_bbox_head.task_heads.2.heatmap.1.bias"] == [2]
    assert mm["pts_bbox_head.task_heads.0.reg.0.bn.running_mean"] == [64]


@pytest.mark.parametrize("source", ["openpcdet", "mmdetection3d"])
def test_init_checkpoint_writes_the_projects_file_and_loads_back(tmp_path, source):
    cfg = _tiny(source, block_bias=source != "mmdetection3d")
    path = tmp_path / "ckpt.pth"
    save_random_checkpoint(cfg, path, seed=3)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if source == "openpcdet":
        assert not zipfile.is_zipfile(path)  # OpenPCDet writes the legacy pickle
        assert {"epoch", "it", "model_state", "optimizer_state", "version"} <= set(raw)
        state = raw["model_state"]
    else:
        assert {"state_dict", "meta"} <= set(raw)
        state = raw["state_dict"]
        sparse = [k[: -len(".weight")] for k, v in state.items() if v.dim() == 5]
        assert sparse and all(state._metadata[p] == {"version": 2} for p in sparse)
    assert detect_source(state) == source
    torch.manual_seed(3)
    want = CenterPoint(cfg).state_dict()
    got = load_model(cfg, path).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_mmdetection3d_spconv1_layout_loads_by_shape(tmp_path):
    # A checkpoint from MMDetection3D's spconv 1.x days: kernels [kz, ky, kx, in, out], no version-2 tag.
    cfg = _tiny("mmdetection3d", block_bias=False)
    model = CenterPoint(cfg)
    state = from_det3d(model.state_dict(), "mmdetection3d", cfg)
    old = {k: (v.permute(1, 2, 3, 4, 0).contiguous() if v.dim() == 5 else v) for k, v in state.items()}
    assert all(torch.equal(old[k].permute(*SPCONV1_TO_2), state[k]) for k in state if state[k].dim() == 5)
    path = tmp_path / "old.pth"
    torch.save({"state_dict": old, "meta": {}}, path)
    got = load_model(cfg, path).state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_of_another_project_is_one_line_naming_it(tmp_path):
    det3d = tmp_path / "det3d.pth"
    save_checkpoint(CenterPoint(load_config("tiny")), det3d)
    with pytest.raises(CheckpointError) as info:
        load_model(_tiny("openpcdet"), det3d)
    text = str(info.value)
    assert "\n" not in text
    assert "checkpoint of det3d" in text and "takes OpenPCDet checkpoints" in text
    assert "fits config tiny (--config tiny)" in text

    pcdet = tmp_path / "pcdet.pth"
    save_random_checkpoint(_tiny("openpcdet"), pcdet)
    with pytest.raises(CheckpointError, match="checkpoint of OpenPCDet .* no bundled config of that project fits"):
        load_model(load_config("tiny"), pcdet)
    with pytest.raises(CheckpointError, match="checkpoint of OpenPCDet .*takes MMDetection3D checkpoints"):
        load_model(_tiny("mmdetection3d"), pcdet)


def test_a_checkpoint_of_the_right_project_but_another_size_names_the_bundled_config(tmp_path):
    path = tmp_path / "small.pth"
    save_checkpoint(CenterPoint(load_config("synthetic_small")), path)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(tiny\).*fits config synthetic_small"):
        load_model(load_config("tiny"), path)


def test_det3d_config_records_as_before():
    # the new keys stay out of a det3d config's record (and hash) at their defaults
    data = config_to_dict(load_config("nuscenes_voxel0075"))
    assert "source" not in data and "max_candidates" not in data["post"]
    assert "block_bias" not in data["backbone"] and "conv_bias" not in data["head"]
    assert config_to_dict(load_config("mmdet3d_voxel0075"))["source"] == "mmdetection3d"


def test_top_candidates_take_class_cell_pairs():
    # OpenPCDet / MMDetection3D decode the best (class, cell) pairs: one cell can take a slot once per class
    # (NMS then drops the copy), so a pair beyond the best `max_candidates` is never a box, even above the
    # threshold; det3d (max_candidates 0) takes the best class of every cell.
    cfg = _tiny("openpcdet")
    logits = torch.full((1, 2, 4, 4), -10.0)
    logits[0, 0, 1, 1], logits[0, 1, 1, 1], logits[0, 0, 3, 3], logits[0, 1, 2, 0] = 3.0, 2.0, 1.0, 0.5
    zeros = {k: torch.zeros(1, c, 4, 4) for k, c in {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}.items()}

    def run(max_candidates: int) -> tuple[list[int], list[float]]:
        post = dataclasses.replace(cfg.post, max_candidates=max_candidates, nms_type="circle", circle_radius=[1e-6])
        test_cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, tasks=[["car", "truck"]]), post=post)
        dets = decode([{**zeros, "hm": logits}], test_cfg)[0]
        return dets.labels.tolist(), pytest.approx(torch.logit(dets.scores).tolist(), abs=1e-4)

    assert run(3) == ([0, 0], [3.0, 1.0])  # the truck copy of cell (1, 1) took the third slot
    assert run(4) == ([0, 0, 1], [3.0, 1.0, 0.5])
    assert run(0) == ([0, 0, 1], [3.0, 1.0, 0.5])


def test_their_nuscenes_export_calls_a_stationary_bus_stopped():
    # OpenPCDet's and MMDetection3D's nuScenes export: a bus at <= 0.2 m/s is `vehicle.stopped` (as det3d's own
    # export writes it too); moving, and every other class, as before.
    for name in ("openpcdet_voxel0075", "mmdet3d_voxel0075"):
        stationary = load_config(name).eval.stationary_attribute
        assert default_attribute("bus", [0.1, 0.1], stationary) == "vehicle.stopped"
        assert default_attribute("bus", [0.3, 0.0], stationary) == "vehicle.moving"
        assert default_attribute("car", [0.0, 0.0], stationary) == "vehicle.parked"
        assert default_attribute("pedestrian", [0.0, 0.0], stationary) == "pedestrian.standing"
    assert default_attribute("bus", [0.0, 0.0], load_config("nuscenes_voxel0075").eval.stationary_attribute) == \
        "vehicle.stopped"
    assert default_attribute("truck", [0.0, 0.0], {"truck": "vehicle.stopped"}) == "vehicle.stopped"  # the override


def test_a_trained_checkpoint_is_saved_in_the_configs_project_layout(tmp_path):
    # `train` writes through save_checkpoint: for an OpenPCDet / MMDetection3D config in that project's layout,
    # so the same config loads it back (half precision too)
    for source in ("openpcdet", "mmdetection3d"):
        model = CenterPoint(_tiny(source, block_bias=source != "mmdetection3d"))
        path = tmp_path / f"{source}.pth"
        save_checkpoint(model, path, meta={"epoch": 1}, half=True)
        assert detect_source(torch.load(path, map_location="cpu", weights_only=True)[
            "model_state" if source == "openpcdet" else "state_dict"]) == source
        got = load_model(model.cfg, path).state_dict()
        for key, value in model.state_dict().items():
            want = value.half().float() if value.is_floating_point() else value
            assert torch.equal(got[key], want), key
