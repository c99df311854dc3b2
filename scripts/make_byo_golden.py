"""Golden data for OpenPCDet and MMDetection3D checkpoints, computed by each project's own model code.

`openpcdet` writes tests/model/golden/openpcdet_voxel.npz: one real nuScenes sweep (mmdetection3d's demo
`n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin`, cropped to the reduced range below), its
voxels as OpenPCDet's MeanVFE averages them, the key names and shapes of OpenPCDet's CenterPoint state dict, the
raw head outputs of OpenPCDet's VoxelResBackBone8x + HeightCompression + BaseBEVBackbone + CenterHead on seeded
random weights, and the boxes / scores / labels of its own `generate_predicted_boxes` (top-500 decode, score and
centre filters, class-agnostic rotated NMS per task). tests/model/test_byo_golden.py rebuilds the same weights
from the stored key list and seed, writes them as an OpenPCDet checkpoint and checks that this project's
`openpcdet_voxel0075` model (at the reduced range) loads it as it is and gives the same outputs and boxes.

The reduced size keeps every layer of `cbgs_voxel0075_res3d_centerpoint.yaml` (channels, blocks, 0.075 x 0.075
x 0.2 voxels, z -5..3 m, so the BEV has 256 channels) and shrinks only x / y to x 2.4..21.6 m, y +-4.8 m (BEV 32 x 16,
512 cells: OpenPCDet's top-500 needs at least 500).

OpenPCDet is not installed and not copied: its sources are read from a checkout (OpenPCDet commit 8cacccec).
To rerun (from the repository root, in the project's virtualenv: torch, spconv 2.x, shapely):

    mkdir -p /tmp/byo_ref && git -C <OpenPCDet checkout> archive HEAD pcdet | tar -x -C /tmp/byo_ref
    git -C <mmdetection3d checkout> show \\
      "HEAD:demo/data/nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin" \\
      > /tmp/byo_ref/sweep.pcd.bin
    python scripts/make_byo_golden.py openpcdet /tmp/byo_ref

Stubbed, because it needs CUDA or is training-only (everything else is OpenPCDet's code as it is):
- `pcdet.ops.iou3d_nms.iou3d_nms_utils.nms_gpu` (a CUDA kernel): a brute-force CPU greedy NMS below with the
  kernel's rule (sort by score, first `pre_maxsize`, suppress BEV IoU > thresh), IoU of the rotated footprints
  computed by shapely polygons;
- `Tensor.cuda()` (CenterHead moves its class-id maps and centre range to the GPU): returns the tensor;
- `numba.jit` (decorates CenterHead's unused circle NMS): the plain function;
- `pcdet.utils.loss_utils` (training losses, which import CUDA ops): empty modules.
The voxelization is a plain-Python reference (points binned in file order; a voxel keeps its first 10 points;
OpenPCDet itself shuffles points at test time, which only changes which 10 points a full voxel keeps), its
voxels fed through OpenPCDet's MeanVFE.

`mmdetection3d` writes tests/model/golden/mmdet3d_voxel.npz the same way from MMDetection3D 1.4.0's own
HardSimpleVFE, SparseEncoder (basic blocks), SECOND, SECONDFPN and CenterHead (`predict_by_feat`:
CenterPointBBoxCoder top-500 decode, circle NMS with min_radius per task, boxes as LiDARInstance3DBoxes with z
at the bottom), built through MMDetection3D's registries from the modules of
`centerpoint_voxel0075_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d.py`, and the weights loaded through
its own spconv-2 `_load_from_state_dict` (version 2 tags from the modules' own state dict). Its pure-Python
dependencies go into a separate folder, never into the project's virtualenv:

    python -m pip install --no-deps --target /tmp/byo_mm mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0 \\
      addict yapf termcolor rich markdown-it-py mdurl pygments platformdirs six terminaltables pycocotools \\
      opencv-python-headless
    mkdir -p /tmp/byo_ref_mm && git -C <mmdetection3d checkout> archive v1.4.0 mmdet3d | tar -x -C /tmp/byo_ref_mm
    PYTHONPATH=/tmp/byo_mm:/tmp/byo_ref_mm python scripts/make_byo_golden.py mmdetection3d /tmp/byo_ref

Stubbed there: `mmcv.ops` and `mmcv._ext` (mmcv's compiled CUDA / C++ ops, which mmcv-lite lacks: imported by
MMDetection3D's modules but not called by these layers; any name in them is an empty placeholder class) and
`numba.jit` / `numba.njit` (MMDetection3D's circle NMS then runs as plain Python, the same code).

This script imports trt_centerpoint only for `seeded_state_dict` (the weights' random draw, shared with the
test) and the reduced config's numbers.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trt_centerpoint.model.random_init import seeded_state_dict  # noqa: E402

GOLDEN = ROOT / "tests" / "model" / "golden"
RANGE = [2.4, -4.8, -5.0, 21.6, 4.8, 3.0]
VOXEL = [0.075, 0.075, 0.2]
MAX_POINTS = 10
MAX_VOXELS = 160000  # OpenPCDet's test setting (MMDetection3D: 120000)
SEED = 19
CLASS_NAMES = ["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone"]
TASKS = [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
         ["pedestrian", "traffic_cone"]]


class Cfg(dict):
    """EasyDict's attribute access (OpenPCDet's configs are EasyDicts)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _cfg(obj):
    if isinstance(obj, dict):
        return Cfg({k: _cfg(v) for k, v in obj.items()})
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Stubs (see the module docstring)
# ---------------------------------------------------------------------------------------------------------------


def _footprint(box) -> Polygon:
    x, y, _, dx, dy, _, heading = [float(v) for v in box[:7]]
    c, s = np.cos(heading), np.sin(heading)
    corners = [(x + c * u - s * v, y + s * u + c * v) for u, v in
               ((dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2))]
    return Polygon(corners)


def nms_cpu(boxes, scores, thresh, pre_maxsize=None, **kwargs):
    order = scores.sort(0, descending=True)[1]
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    polys = [_footprint(b) for b in boxes[order].tolist()]
    keep, removed = [], set()
    for i in range(len(polys)):
        if i in removed:
            continue
        keep.append(i)
        for j in range(i + 1, len(polys)):
            if j in removed:
                continue
            inter = polys[i].intersection(polys[j]).area
            union = polys[i].area + polys[j].area - inter
            if union > 0 and inter / union > thresh:
                removed.add(j)
    return order[torch.tensor(keep, dtype=torch.long)], None


def _install_stubs(pcdet_root: Path) -> None:
    for name in ["pcdet", "pcdet.models", "pcdet.models.backbones_3d", "pcdet.models.backbones_3d.vfe",
                 "pcdet.models.backbones_2d", "pcdet.models.backbones_2d.map_to_bev", "pcdet.models.dense_heads",
                 "pcdet.models.model_utils", "pcdet.utils", "pcdet.ops", "pcdet.ops.iou3d_nms"]:
        package = types.ModuleType(name)
        package.__path__ = [str(pcdet_root.joinpath(*name.split(".")))]
        sys.modules[name] = package
    iou3d = types.ModuleType("pcdet.ops.iou3d_nms.iou3d_nms_utils")
    iou3d.nms_gpu = nms_cpu
    sys.modules[iou3d.__name__] = iou3d
    sys.modules["pcdet.ops.iou3d_nms"].iou3d_nms_utils = iou3d
    losses = types.ModuleType("pcdet.utils.loss_utils")
    losses.FocalLossCenterNet = type("FocalLossCenterNet", (torch.nn.Module,), {})
    losses.RegLossCenterNet = type("RegLossCenterNet", (torch.nn.Module,), {})
    sys.modules[losses.__name__] = losses
    sys.modules["pcdet.utils"].loss_utils = losses
    numba = types.ModuleType("numba")
    numba.jit = lambda *args, **kwargs: (lambda fn: fn)
    sys.modules["numba"] = numba
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


# ---------------------------------------------------------------------------------------------------------------
# Reference voxelization (plain Python)
# ---------------------------------------------------------------------------------------------------------------


def voxelize(points: np.ndarray, max_voxels: int = MAX_VOXELS):
    grid = [int(round((RANGE[i + 3] - RANGE[i]) / VOXEL[i])) for i in range(3)]
    lo, size = np.float32(RANGE[:3]), np.float32(VOXEL)
    index: dict[tuple[int, int, int], int] = {}
    voxels, counts, coords = [], [], []
    for p in points:
        c = np.floor((p[:3] - lo) / size).astype(np.int64)
        if (c < 0).any() or (c >= grid).any():
            continue
        key = (int(c[2]), int(c[1]), int(c[0]))
        v = index.get(key)
        if v is None:
            if len(voxels) >= max_voxels:
                continue
            v = index[key] = len(voxels)
            voxels.append(np.zeros((MAX_POINTS, points.shape[1]), np.float32))
            counts.append(0)
            coords.append(key)
        if counts[v] < MAX_POINTS:
            voxels[v][counts[v]] = p
            counts[v] += 1
    coords = np.array([(0, *c) for c in coords], np.int32)
    return np.stack(voxels), np.array(counts, np.int32), coords, grid


# ---------------------------------------------------------------------------------------------------------------
# OpenPCDet's model
# ---------------------------------------------------------------------------------------------------------------


def build_openpcdet(grid):
    vfe_mod = importlib.import_module("pcdet.models.backbones_3d.vfe.mean_vfe")
    b3d = importlib.import_module("pcdet.models.backbones_3d.spconv_backbone")
    bev = importlib.import_module("pcdet.models.backbones_2d.map_to_bev.height_compression")
    b2d = importlib.import_module("pcdet.models.backbones_2d.base_bev_backbone")
    head = importlib.import_module("pcdet.models.dense_heads.center_head")
    head_cfg = _cfg({
        "NAME": "CenterHead", "CLASS_AGNOSTIC": False, "CLASS_NAMES_EACH_HEAD": TASKS, "SHARED_CONV_CHANNEL": 64,
        "USE_BIAS_BEFORE_NORM": True, "NUM_HM_CONV": 2,
        "SEPARATE_HEAD_CFG": {"HEAD_ORDER": ["center", "center_z", "dim", "rot", "vel"], "HEAD_DICT": {
            "center": {"out_channels": 2, "num_conv": 2}, "center_z": {"out_channels": 1, "num_conv": 2},
            "dim": {"out_channels": 3, "num_conv": 2}, "rot": {"out_channels": 2, "num_conv": 2},
            "vel": {"out_channels": 2, "num_conv": 2}}},
        "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 8, "NUM_MAX_OBJS": 500, "GAUSSIAN_OVERLAP": 0.1,
                                   "MIN_RADIUS": 2},
        "POST_PROCESSING": {"SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
                            "MAX_OBJ_PER_SAMPLE": 500,
                            "NMS_CONFIG": {"NMS_TYPE": "nms_gpu", "NMS_THRESH": 0.2, "NMS_PRE_MAXSIZE": 1000,
                                           "NMS_POST_MAXSIZE": 83}},
    })
    parts = OrderedDict()
    parts["vfe"] = vfe_mod.MeanVFE(_cfg({"NAME": "MeanVFE"}), num_point_features=5)
    parts["backbone_3d"] = b3d.VoxelResBackBone8x(_cfg({"NAME": "VoxelResBackBone8x"}), input_channels=5,
                                                  grid_size=np.array(grid))
    parts["map_to_bev_module"] = bev.HeightCompression(_cfg({"NUM_BEV_FEATURES": 256}))
    parts["backbone_2d"] = b2d.BaseBEVBackbone(_cfg({"LAYER_NUMS": [5, 5], "LAYER_STRIDES": [1, 2],
                                                     "NUM_FILTERS": [128, 256], "UPSAMPLE_STRIDES": [1, 2],
                                                     "NUM_UPSAMPLE_FILTERS": [256, 256]}), 256)
    parts["dense_head"] = head.CenterHead(head_cfg, 512, len(CLASS_NAMES), CLASS_NAMES, np.array(grid),
                                          np.array(RANGE), np.array(VOXEL), predict_boxes_when_training=False)
    return parts


def main(ref: Path) -> None:
    _install_stubs(ref)
    points = np.fromfile(ref / "sweep.pcd.bin", dtype=np.float32).reshape(-1, 5)
    inside = np.all((points[:, :3] >= np.float32(RANGE[:3])) & (points[:, :3] < np.float32(RANGE[3:])), axis=1)
    points = points[inside]
    voxels, counts, coords, grid = voxelize(points)
    parts = build_openpcdet(grid)

    state = OrderedDict(global_step=torch.zeros(1, dtype=torch.long))
    for prefix, module in parts.items():
        state.update((f"{prefix}.{k}", v) for k, v in module.state_dict().items())
    weights = seeded_state_dict(state, SEED)
    for prefix, module in parts.items():
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")},
                               strict=True)
        module.eval()

    batch = {"voxels": torch.from_numpy(voxels), "voxel_num_points": torch.from_numpy(counts),
             "voxel_coords": torch.from_numpy(coords), "batch_size": 1}
    with torch.no_grad():
        for module in parts.values():
            batch = module(batch)
    preds = parts["dense_head"].forward_ret_dict["pred_dicts"]
    final = batch["final_box_dicts"][0]

    out = {
        "points": points, "voxel_features": batch["voxel_features"].numpy(), "voxel_coords": coords,
        "point_cloud_range": np.array(RANGE, np.float32), "seed": np.array(SEED),
        "keys": np.array(list(weights)), "shapes": np.array([str(list(v.shape)) for v in weights.values()]),
        "pred_boxes": final["pred_boxes"].numpy(), "pred_scores": final["pred_scores"].numpy(),
        "pred_labels": final["pred_labels"].numpy(),
    }
    for t, pred in enumerate(preds):
        for name, value in pred.items():
            out[f"task{t}.{name}"] = value.numpy()
    _write(GOLDEN / "openpcdet_voxel.npz", out)


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): {len(out['points'])} points, "
          f"{len(out['voxel_coords'])} voxels, {len(out['keys'])} keys, {len(out['pred_scores'])} boxes")


# ---------------------------------------------------------------------------------------------------------------
# MMDetection3D's model
# ---------------------------------------------------------------------------------------------------------------


class _CompiledOpsStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`mmcv.ops`, `mmcv._ext` and `numba` as placeholder modules (see the module docstring)."""

    def find_spec(self, name, path, target=None):
        if name in ("mmcv.ops", "mmcv._ext", "numba") or name.startswith(("mmcv.ops.", "numba.")):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name):
            if name.startswith("__"):
                raise AttributeError(name)
            if name in ("jit", "njit"):
                def decorate(*args, **kwargs):
                    return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else (lambda fn: fn)
                return decorate
            return type(name, (torch.nn.Module,), {})

        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


def main_mmdet3d(ref: Path) -> None:
    sys.meta_path.insert(0, _CompiledOpsStub())
    for name in ["mmdet3d.models.voxel_encoders.voxel_encoder", "mmdet3d.models.middle_encoders.sparse_encoder",
                 "mmdet3d.models.backbones.second", "mmdet3d.models.necks.second_fpn",
                 "mmdet3d.models.dense_heads.centerpoint_head",
                 "mmdet3d.models.task_modules.coders.centerpoint_bbox_coders", "mmdet.models.losses"]:
        importlib.import_module(name)
    from mmdet3d.registry import MODELS
    from mmdet3d.structures import LiDARInstance3DBoxes
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet3d")
    points = np.fromfile(ref / "sweep.pcd.bin", dtype=np.float32).reshape(-1, 5)
    inside = np.all((points[:, :3] >= np.float32(RANGE[:3])) & (points[:, :3] < np.float32(RANGE[3:])), axis=1)
    points = points[inside]
    voxels, counts, coords, grid = voxelize(points, max_voxels=120000)
    bn = dict(type="BN", eps=1e-3, momentum=0.01)
    test_cfg = dict(post_center_limit_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0], max_per_img=500,
                    max_pool_nms=False, min_radius=[4, 12, 10, 1, 0.85, 0.175], score_threshold=0.1,
                    out_size_factor=8, voxel_size=VOXEL[:2], nms_type="circle", pre_max_size=1000,
                    post_max_size=83, nms_thr=0.2, pc_range=RANGE[:2])
    parts = OrderedDict()
    parts["pts_voxel_encoder"] = MODELS.build(dict(type="HardSimpleVFE", num_features=5))
    parts["pts_middle_encoder"] = MODELS.build(dict(
        type="SparseEncoder", in_channels=5, sparse_shape=[grid[2] + 1, grid[1], grid[0]], output_channels=128,
        order=("conv", "norm", "act"), encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)), block_type="basicblock"))
    parts["pts_backbone"] = MODELS.build(dict(type="SECOND", in_channels=256, out_channels=[128, 256],
                                              layer_nums=[5, 5], layer_strides=[1, 2], norm_cfg=bn,
                                              conv_cfg=dict(type="Conv2d", bias=False)))
    parts["pts_neck"] = MODELS.build(dict(type="SECONDFPN", in_channels=[128, 256], out_channels=[256, 256],
                                          upsample_strides=[1, 2], norm_cfg=bn,
                                          upsample_cfg=dict(type="deconv", bias=False), use_conv_for_no_stride=True))
    parts["pts_bbox_head"] = MODELS.build(dict(
        type="CenterHead", in_channels=512,
        tasks=[dict(num_class=len(t), class_names=t) for t in TASKS],
        common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2)), share_conv_channel=64,
        bbox_coder=dict(type="CenterPointBBoxCoder", post_center_range=test_cfg["post_center_limit_range"],
                        max_num=500, score_threshold=0.1, out_size_factor=8, voxel_size=VOXEL[:2],
                        pc_range=RANGE[:2], code_size=9),
        separate_head=dict(type="SeparateHead", init_bias=-2.19, final_kernel=3),
        loss_cls=dict(type="mmdet.GaussianFocalLoss", reduction="mean"),
        loss_bbox=dict(type="mmdet.L1Loss", reduction="mean", loss_weight=0.25), norm_bbox=True,
        test_cfg=test_cfg))

    like = OrderedDict()
    for prefix, module in parts.items():
        like.update((f"{prefix}.{k}", v) for k, v in module.state_dict().items())
    weights = seeded_state_dict(like, SEED)
    for prefix, module in parts.items():
        own = module.state_dict()  # its `_metadata` (version 2 on the sparse convs) as mmengine saves it
        for key in own:
            own[key] = weights[f"{prefix}.{key}"]
        module.load_state_dict(own, strict=True)
        module.eval()
        for key, value in module.state_dict().items():  # loaded as given: no kernel was permuted
            assert torch.equal(value, weights[f"{prefix}.{key}"]), key

    with torch.no_grad():
        features = parts["pts_voxel_encoder"](torch.from_numpy(voxels), torch.from_numpy(counts),
                                              torch.from_numpy(coords))
        bev = parts["pts_middle_encoder"](features, torch.from_numpy(coords), 1)
        x = parts["pts_neck"](parts["pts_backbone"](bev))
        preds = parts["pts_bbox_head"](x)
        result = parts["pts_bbox_head"].predict_by_feat(preds, [{"box_type_3d": LiDARInstance3DBoxes}])[0]

    out = {
        "points": points, "voxel_features": features.numpy(), "voxel_coords": coords,
        "point_cloud_range": np.array(RANGE, np.float32), "seed": np.array(SEED),
        "keys": np.array(list(weights)), "shapes": np.array([str(list(v.shape)) for v in weights.values()]),
        "pred_boxes": result.bboxes_3d.tensor.numpy(), "pred_scores": result.scores_3d.numpy(),
        "pred_labels": result.labels_3d.numpy(),
    }
    for t, (pred,) in enumerate(preds):
        for name, value in pred.items():
            out[f"task{t}.{name}"] = value.numpy()
    _write(GOLDEN / "mmdet3d_voxel.npz", out)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("openpcdet", "mmdetection3d"):
        sys.exit(f"usage: {sys.argv[0]} openpcdet|mmdetection3d [REF_FOLDER] (see the header of {__file__})")
    folder = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/byo_ref")
    (main if sys.argv[1] == "openpcdet" else main_mmdet3d)(folder)
