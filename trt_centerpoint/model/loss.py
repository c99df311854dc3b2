"""CenterPoint loss: penalty-reduced focal loss on heatmaps + code-weighted L1 on regression at centres.

The same objective det3d trains with (FastFocalLoss + RegLoss, loc weight 0.25, velocity code weight 0.2),
written for our tensors so the benchmark model, QAT and any fine-tuning share one definition.
"""

from __future__ import annotations

import torch

from trt_centerpoint.model.targets import TaskTargets

DEFAULT_CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0)
LOC_WEIGHT = 0.25


def _gather(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feature [B, C, H, W], index [B, M] (flattened cells) -> [B, M, C]."""
    b, c = feature.shape[:2]
    flat = feature.reshape(b, c, -1).transpose(1, 2)  # [B, HW, C]
    return flat.gather(1, index.unsqueeze(-1).expand(-1, -1, c))


def focal_loss(logits: torch.Tensor, t: TaskTargets) -> torch.Tensor:
    """CornerNet / CenterNet focal loss with (1 - gt)^4 negative weighting, normalised by object count."""
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    neg = (torch.log(1 - pred) * pred.pow(2) * (1 - t.heatmap).pow(4)).sum()
    pos_pred = _gather(pred, t.index).gather(2, t.cls.unsqueeze(-1)).squeeze(-1)  # [B, M]
    pos = (torch.log(pos_pred) * (1 - pos_pred).pow(2) * t.mask).sum()
    num = t.mask.sum()
    return -neg if num == 0 else -(pos + neg) / num


def regression_loss(pred: dict[str, torch.Tensor], t: TaskTargets) -> torch.Tensor:
    """Per-dimension L1 at object centres, in det3d's target order (reg, height, dim, vel, rot)."""
    names = ["reg", "height", "dim", "vel", "rot"] if "vel" in pred else ["reg", "height", "dim", "rot"]
    box = torch.cat([pred[n] for n in names], dim=1)
    target = t.box if "vel" in pred else torch.cat([t.box[..., :6], t.box[..., 8:]], dim=-1)
    gathered = _gather(box.float(), t.index)
    mask = t.mask.unsqueeze(-1)
    l1 = (gathered * mask - target * mask).abs()
    return l1.sum(dim=(0, 1)) / (t.mask.sum() + 1e-4)  # [10]


def centerpoint_loss(preds: list[dict[str, torch.Tensor]], targets: list[TaskTargets],
                     code_weights=DEFAULT_CODE_WEIGHTS) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over tasks of heatmap focal loss + 0.25 * code-weighted L1. Returns (loss, float parts for logs)."""
    total = preds[0]["hm"].new_zeros(())
    hm_sum, loc_sum = 0.0, 0.0
    for pred, t in zip(preds, targets):
        hm = focal_loss(pred["hm"], t)
        per_dim = regression_loss(pred, t)
        weights = per_dim.new_tensor(code_weights[: per_dim.numel()] if "vel" in pred
                                     else code_weights[:6] + code_weights[8:])
        loc = (per_dim * weights).sum()
        total = total + hm + LOC_WEIGHT * loc
        hm_sum += float(hm.detach())
        loc_sum += float(loc.detach())
    return total, {"hm": hm_sum, "loc": loc_sum}
