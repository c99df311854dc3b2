"""Detection-level agreement of two backends on the same frames: how many boxes survive deployment.

Why not AP: two backends can score the same AP with different boxes; agreement asks whether INT8 / ONNX
gives the *same* boxes. A reference box is matched when the other backend has an unmatched box of the
same class whose centre (x, y, z) is within `within_m` (default 1 cm); greedy, highest reference score
first. The fraction is over the union size max(len(ref), len(got)), so extra boxes count as misses too.
"""

from __future__ import annotations

import torch

from trt_centerpoint.model.decode import Detections

DEFAULT_WITHIN_M = 0.01

__all__ = ["DEFAULT_WITHIN_M", "match_detections", "merge_matches"]


def match_detections(ref: Detections, got: Detections, within_m: float = DEFAULT_WITHIN_M) -> dict:
    """{"ref", "got", "matched", "max_center_error_m"} for one frame (max error over matched pairs)."""
    n_ref, n_got = len(ref), len(got)
    matched, worst = 0, 0.0
    if n_ref and n_got:
        dist = torch.cdist(ref.boxes[:, :3].double(), got.boxes[:, :3].double())
        dist[ref.labels[:, None] != got.labels[None, :]] = float("inf")
        taken = torch.zeros(n_got, dtype=torch.bool)
        for i in torch.argsort(ref.scores, descending=True, stable=True).tolist():
            row = dist[i].masked_fill(taken, float("inf"))
            j = int(torch.argmin(row))
            if float(row[j]) <= within_m:
                taken[j] = True
                matched += 1
                worst = max(worst, float(row[j]))
    return {"ref": n_ref, "got": n_got, "matched": matched, "max_center_error_m": worst}


def merge_matches(frames: list[dict], within_m: float = DEFAULT_WITHIN_M) -> dict:
    """Totals over frames and `matched_fraction` = matched / sum(max(ref, got)) (1.0 when both are empty)."""
    union = sum(max(f["ref"], f["got"]) for f in frames)
    matched = sum(f["matched"] for f in frames)
    return {"frames": len(frames), "within_m": within_m, "ref_boxes": sum(f["ref"] for f in frames),
            "got_boxes": sum(f["got"] for f in frames), "matched": matched,
            "matched_fraction": matched / union if union else 1.0,
            "max_center_error_m": max((f["max_center_error_m"] for f in frames), default=0.0)}
