"""Label-free distillation for QAT: the FP32 model teaches its fake-quant copy on unlabeled point clouds.

``distill_loss(student_preds, teacher_preds)`` compares the raw head outputs task by task:

- heatmap: binary KL divergence KL(sigmoid(teacher) || sigmoid(student)) per cell and class, computed from
  the logits as ``BCE(student, p_t) - BCE(teacher, p_t)`` (exactly 0 where the two agree; its gradient
  with respect to the student logit is ``sigmoid(student) - p_t``);
- regression (reg, height, dim, vel, rot): L1 between student and teacher, per channel, weighted per
  cell by the teacher's heatmap (its max over the task's classes), so the boxes that would be decoded
  matter and empty background does not;
- both sums are divided by the total teacher heat weight (at least 1), a soft count of objects, in the
  spirit of the supervised loss' normalisation by the object count; the regression term gets the
  supervised loss' weights (code weights, velocity 0.2, loc weight 0.25).

``UnlabeledFrames`` gives any folder of point clouds (or nuScenes selection) the item shape of
``LabeledFrames`` (no boxes), so the trainer's batching and augmentation are shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.source import DataSource, list_frames, read_frame
from trt_centerpoint.model.loss import DEFAULT_CODE_WEIGHTS, LOC_WEIGHT

_BOX_WITH_VEL = ("reg", "height", "dim", "vel", "rot")
_BOX_NO_VEL = ("reg", "height", "dim", "rot")


class UnlabeledFrames:
    """Point files of a folder (or one file), or a nuScenes selection's samples; item i is (stem, points [N, F]
    float32, no boxes, no names)."""

    def __init__(self, root: DataSource, num_features: int):
        self.root = root if isinstance(root, NuScenesSelection) else Path(root)
        self.num_features = num_features
        self.files = list_frames(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
        ref = self.files[i]
        cloud = read_frame(ref, self.num_features)
        stem = ref.stem if isinstance(self.root, NuScenesSelection) else cloud.stem
        return stem, cloud.points, np.zeros((0, 9), np.float64), []


def _box(pred: dict[str, torch.Tensor]) -> torch.Tensor:
    names = _BOX_WITH_VEL if "vel" in pred else _BOX_NO_VEL
    return torch.cat([pred[n].float() for n in names], dim=1)


def _code_weights(pred: dict[str, torch.Tensor], code_weights) -> list[float]:
    weights = list(code_weights)
    return weights if "vel" in pred else weights[:6] + weights[8:]


def distill_loss(student: list[dict[str, torch.Tensor]], teacher: list[dict[str, torch.Tensor]],
                 code_weights=DEFAULT_CODE_WEIGHTS, loc_weight: float = LOC_WEIGHT
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over tasks of heatmap KL + loc_weight * heat-weighted, code-weighted L1 (teacher detached).

    Returns (loss, {"hm", "loc"} float parts for logs), like ``centerpoint_loss``.
    """
    total = student[0]["hm"].new_zeros((), dtype=torch.float32)
    hm_sum = loc_sum = 0.0
    for s, t in zip(student, teacher, strict=True):
        t_logit = t["hm"].detach().float()
        t_prob = torch.sigmoid(t_logit)
        s_logit = s["hm"].float()
        kl = (F.binary_cross_entropy_with_logits(s_logit, t_prob, reduction="none")
              - F.binary_cross_entropy_with_logits(t_logit, t_prob, reduction="none"))
        weight = t_prob.amax(dim=1, keepdim=True)  # [B, 1, H, W]
        norm = weight.sum().clamp_min(1.0)
        hm = kl.sum() / norm
        per_dim = ((_box(s) - _box(t).detach()).abs() * weight).sum(dim=(0, 2, 3)) / norm  # [C_box]
        loc = (per_dim * per_dim.new_tensor(_code_weights(s, code_weights))).sum()
        total = total + hm + loc_weight * loc
        hm_sum += float(hm.detach())
        loc_sum += float(loc.detach())
    return total, {"hm": hm_sum, "loc": loc_sum}


@torch.no_grad()
def distill_gap(student: torch.nn.Module, teacher: torch.nn.Module, clouds: list[torch.Tensor]) -> float:
    """Mean ``distill_loss`` of `student` vs `teacher` over point clouds (one frame per forward, as is)."""
    device = next(student.parameters()).device
    values = []
    for points in clouds:
        voxels = student.voxelize([torch.as_tensor(points, dtype=torch.float32)])
        if voxels.num_voxels == 0:
            continue
        feats, coords = voxels.features.to(device), voxels.coords.to(device)
        loss, _ = distill_loss(student(feats, coords, 1), teacher(feats, coords, 1))
        values.append(float(loss))
    return float(np.mean(values)) if values else 0.0
