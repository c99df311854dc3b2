"""OpenPCDet and MMDetection3D voxel CenterPoint state dicts onto this model (det3d's layout), and back.

The three projects build the same network (the same sparse convs, 2D convs and head convs in the same order);
they differ in module names, in where a stage's strided conv sits, in conv biases (MMDetection3D has none
before a BatchNorm: `backbone.block_bias`, `head.conv_bias`) and in a few exact re-parametrisations, applied
here on load and undone on save:

- OpenPCDet's `deblocks.0` is a 1x1 stride-1 ConvTranspose2d (weight [in, out, 1, 1]); it computes the same as
  det3d's 1x1 Conv2d with the weight's first two axes swapped.
- MMDetection3D's 2D blocks have no ZeroPad2d (the first conv pads itself): its module index k is det3d's k + 1.
- Box coding of the head's last convs. det3d's `rot` regresses (sin r, cos r) of its yaw r = -heading - pi/2,
  i.e. (-cos heading, -sin heading); OpenPCDet's `rot` is (cos heading, sin heading) and MMDetection3D's
  (sin heading, cos heading), so their rot conv is negated (MMDetection3D's also has its two output channels
  swapped). det3d's `dim` is (w, l, h) with l along the heading; both others regress (l, w, h) (OpenPCDet
  dx, dy, dz; MMDetection3D x_size, y_size, z_size), so its first two output channels are swapped.
  Negation and swaps are exact, so the decoded boxes are theirs bit for bit in position, size and score.

Everything else (voxel coordinates [batch, z, y, x], sparse shape, head maps and their decoding grid) is the
same in the three projects.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch

from trt_centerpoint.config import ModelConfig

__all__ = ["SOURCE_NAMES", "detect_source", "to_det3d", "from_det3d", "sparse_conv_prefixes"]

SOURCE_NAMES = {"det3d": "det3d (tianweiy/CenterPoint)", "openpcdet": "OpenPCDet", "mmdetection3d": "MMDetection3D"}
_PREFIXES = {
    "det3d": ("backbone.", "neck.", "bbox_head."),
    "openpcdet": ("backbone_3d.", "backbone_2d.", "dense_head."),
    "mmdetection3d": ("pts_middle_encoder.", "pts_backbone.", "pts_neck.", "pts_bbox_head."),
}
# det3d head output name -> the project's
_BRANCH = {
    "openpcdet": {"reg": "center", "height": "center_z", "dim": "dim", "rot": "rot", "vel": "vel", "hm": "hm"},
    "mmdetection3d": {"reg": "reg", "height": "height", "dim": "dim", "rot": "rot", "vel": "vel", "hm": "heatmap"},
}
OPENPCDET_EXTRA = "global_step"  # a training-step buffer of OpenPCDet's detector, no weight


def detect_source(keys) -> str | None:
    """The project whose key names these are (the one most keys start with), None when none fits."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    counts = {name: sum(k.startswith(p) for k in keys) for name, p in _PREFIXES.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _rename_backbone(rest: str, source: str, blocks: int, to_ours: bool) -> str:
    """Backbone key (after the prefix) between det3d and `source`."""
    if to_ours:
        if source == "openpcdet":
            m = re.fullmatch(r"conv([2-4])\.(\d+)\.(.*)", rest)
            if m:
                stage, i, tail = m.group(1), int(m.group(2)), m.group(3)
                if i == 0:  # post_act_block: (conv, bn, relu) -> det3d's flat .0 / .1
                    return f"conv{stage}.{tail}"
                return f"conv{stage}.{i + 2}.{tail}"
            return re.sub(r"^conv_out\.", "extra_conv.", rest)
        m = re.fullmatch(r"encoder_layers\.encoder_layer([1-4])\.(\d+)\.(.*)", rest)
        if m:
            stage, i, tail = int(m.group(1)), int(m.group(2)), m.group(3)
            if i == blocks:  # the stage's closing strided conv opens det3d's next stage
                return f"conv{stage + 1}.{tail}"
            return f"conv{stage}.{i if stage == 1 else i + 3}.{tail}"
        return re.sub(r"^conv_out\.", "extra_conv.", rest)
    m = re.fullmatch(r"conv([2-4])\.(\d+)\.(.*)", rest)
    if m:
        stage, i, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        if source == "openpcdet":
            return f"conv{stage}.0.{i}.{tail}" if i < 2 else f"conv{stage}.{i - 2}.{tail}"
        if i < 2:
            return f"encoder_layers.encoder_layer{stage - 1}.{blocks}.{i}.{tail}"
        return f"encoder_layers.encoder_layer{stage}.{i - 3}.{tail}"
    if source == "mmdetection3d" and rest.startswith("conv1."):
        return "encoder_layers.encoder_layer1." + rest[len("conv1."):]
    return re.sub(r"^extra_conv\.", "conv_out.", rest)


def _rename_head(rest: str, source: str, to_ours: bool) -> str:
    names = _BRANCH[source]
    if to_ours:
        names = {v: k for k, v in names.items()}
        if source == "openpcdet":
            m = re.fullmatch(r"heads_list\.(\d+)\.(\w+)\.(\d+)\.(?:(\d+)\.)?(\w+)", rest)
            if m:
                t, name, i, j, p = m.groups()
                index = "3" if j is None else j  # .0.0 conv, .0.1 BN, .1 last conv
                return f"tasks.{t}.{names[name]}.{index}.{p}"
            return rest
        m = re.fullmatch(r"task_heads\.(\d+)\.(\w+)\.(\d+)\.(?:(conv|bn)\.)?(\w+)", rest)
        if m:
            t, name, i, part, p = m.groups()
            index = "3" if part is None else "0" if part == "conv" else "1"
            return f"tasks.{t}.{names[name]}.{index}.{p}"
        m = re.fullmatch(r"shared_conv\.(conv|bn)\.(\w+)", rest)
        return f"shared_conv.{0 if m.group(1) == 'conv' else 1}.{m.group(2)}" if m else rest
    m = re.fullmatch(r"tasks\.(\d+)\.(\w+)\.(\d)\.(\w+)", rest)
    if m:
        t, name, i, p = m.groups()
        if source == "openpcdet":
            where = "1" if i == "3" else f"0.{i}"
            return f"heads_list.{t}.{names[name]}.{where}.{p}"
        where = "1" if i == "3" else "0.conv" if i == "0" else "0.bn"
        return f"task_heads.{t}.{names[name]}.{where}.{p}"
    m = re.fullmatch(r"shared_conv\.(\d)\.(\w+)", rest)
    if m and source == "mmdetection3d":
        return f"shared_conv.{'conv' if m.group(1) == '0' else 'bn'}.{m.group(2)}"
    return rest


def _rename(key: str, source: str, cfg: ModelConfig, to_ours: bool) -> str | None:
    """One key between det3d and `source`; None for a key of no part of the model (OpenPCDet's step)."""
    blocks = cfg.backbone.blocks_per_stage
    if to_ours:
        if source == "openpcdet":
            table = (("backbone_3d.", "backbone."), ("backbone_2d.", "neck."), ("dense_head.", "bbox_head."))
        else:
            table = (("pts_middle_encoder.", "backbone."), ("pts_backbone.", "neck."), ("pts_neck.", "neck."),
                     ("pts_bbox_head.", "bbox_head."))
        for theirs, ours in table:
            if key.startswith(theirs):
                rest = key[len(theirs):]
                if ours == "backbone.":
                    return ours + _rename_backbone(rest, source, blocks, True)
                if ours == "bbox_head.":
                    return ours + _rename_head(rest, source, True)
                if theirs == "pts_backbone.":  # no ZeroPad2d: index k is det3d's k + 1
                    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.*)", rest)
                    if m:
                        return f"neck.blocks.{m.group(1)}.{int(m.group(2)) + 1}.{m.group(3)}"
                return ours + rest
        return None if key == OPENPCDET_EXTRA else key
    if key.startswith("backbone."):
        lead = "backbone_3d." if source == "openpcdet" else "pts_middle_encoder."
        return lead + _rename_backbone(key[len("backbone."):], source, blocks, False)
    if key.startswith("bbox_head."):
        lead = "dense_head." if source == "openpcdet" else "pts_bbox_head."
        return lead + _rename_head(key[len("bbox_head."):], source, False)
    if key.startswith("neck."):
        rest = key[len("neck."):]
        if source == "openpcdet":
            return "backbone_2d." + rest
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.*)", rest)
        if m:
            return f"pts_backbone.blocks.{m.group(1)}.{int(m.group(2)) - 1}.{m.group(3)}"
        return "pts_neck." + rest
    return key


def _stride1_deblocks(cfg: ModelConfig) -> list[str]:
    """det3d keys of the 1x1 stride-1 upsampling convs (OpenPCDet stores them as ConvTranspose2d)."""
    n = cfg.neck
    return [f"neck.deblocks.{j}.0.weight" for j, s in enumerate(n.us_layer_strides) if s == 1]


def _recode(state: dict, source: str, cfg: ModelConfig) -> None:
    """The exact box-coding re-parametrisations of the module docstring, in place; each is its own inverse
    except MMDetection3D's rot (swap + negate), whose inverse is the same swap + negate."""
    for key in list(state):
        m = re.fullmatch(r"bbox_head\.tasks\.\d+\.(rot|dim)\.3\.(weight|bias)", key)
        if not m:
            continue
        value = state[key]
        if m.group(1) == "dim":
            value = value[[1, 0, *range(2, value.shape[0])]]
        elif source == "openpcdet":
            value = -value
        else:
            value = -value[[1, 0]]
        state[key] = value.contiguous()
    if source == "openpcdet":
        for key in _stride1_deblocks(cfg):
            if key in state and state[key].dim() == 4:
                state[key] = state[key].transpose(0, 1).contiguous()


def to_det3d(state: dict[str, torch.Tensor], source: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A `source` state dict as this model's (det3d) keys and coding. Keys that fit no rule pass unchanged,
    so the caller's key check names them."""
    if source == "det3d":
        return dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        ours = _rename(key, source, cfg, to_ours=True)
        if ours is not None:
            out[ours] = value
    _recode(out, source, cfg)
    return out


def from_det3d(state: dict[str, torch.Tensor], source: str, cfg: ModelConfig) -> "OrderedDict[str, torch.Tensor]":
    """This model's state dict in `source`'s keys and coding (the inverse of `to_det3d`)."""
    state = dict(state)
    if source != "det3d":
        _recode(state, source, cfg)
    out: OrderedDict[str, torch.Tensor] = OrderedDict(
        (_rename(k, source, cfg, to_ours=False) if source != "det3d" else k, v) for k, v in state.items()
    )
    if source == "openpcdet":
        out[OPENPCDET_EXTRA] = torch.zeros(1, dtype=torch.long)
    return out


def sparse_conv_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """Module prefixes of the 5-D (sparse conv) weights of a state dict."""
    return [k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 5]
