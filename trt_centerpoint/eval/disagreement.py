"""Which frames INT8 changes most: per frame, the confident boxes of one precision that the other does not have.

Why: the report draws a few frames for a person to look at, and the frames worth looking at are those where
INT8 and FP32 disagree, not the first ones. A box counts when its score is at least `min_score` (the boxes a
deployment would show; below that, boxes flicker in and out at any precision) and no box of the same class of
the other precision lies within `within_m` of its centre (greedy, highest score first: `eval.match`).
Disagreement = unmatched FP32 boxes + unmatched INT8 boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

from trt_centerpoint.eval.match import match_detections
from trt_centerpoint.model.decode import Detections

MIN_SCORE = 0.3
WITHIN_M = 0.5

__all__ = ["MIN_SCORE", "WITHIN_M", "confident", "frame_disagreement", "worst_frames"]


def confident(dets: Detections, min_score: float = MIN_SCORE) -> Detections:
    """The detections with score >= `min_score`."""
    keep = dets.scores >= min_score
    return Detections(dets.boxes[keep], dets.scores[keep], dets.labels[keep], list(dets.class_names))


def frame_disagreement(fp32: Detections, int8: Detections, min_score: float = MIN_SCORE,
                       within_m: float = WITHIN_M) -> int:
    """Confident boxes of either precision without a same-class box of the other within `within_m`."""
    m = match_detections(confident(fp32, min_score), confident(int8, min_score), within_m)
    return (m["ref"] - m["matched"]) + (m["got"] - m["matched"])


def worst_frames(fp32: Sequence[Detections], int8: Sequence[Detections], count: int, min_score: float = MIN_SCORE,
                 within_m: float = WITHIN_M) -> list[tuple[int, int]]:
    """[(frame index, disagreement)] of the `count` frames with the largest disagreement, largest first (ties:
    the earlier frame first)."""
    scores = [frame_disagreement(a, b, min_score, within_m) for a, b in zip(fp32, int8)]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [(i, scores[i]) for i in order[:count]]
