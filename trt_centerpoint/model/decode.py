"""CenterPoint post-processing: per-task head outputs -> scored, labelled 3D boxes (det3d's `predict`).

Box convention (the whole project uses it: decode, NMS, evaluation, the detection JSON):

    box = [x, y, z, w, l, h, yaw, vx, vy]        (9 values, metres, radians, metres / second)

- (x, y, z) is the box centre (z is the centre height, not the bottom face).
- The footprint corners are `(x, y) + R(yaw) @ (+-w/2, +-l/2)` with R the counter-clockwise rotation
  `[[cos, -sin], [sin, cos]]`: at yaw = 0 the width w spans the x axis and the length l spans the y axis,
  and the object's heading (the direction of its length) is `yaw + pi/2`.
- det3d's own yaw is another number for the same box: its nuScenes labels store `-heading - pi/2` and its
  `rot` head regresses (sin, cos) of that; its rotated NMS turns it back into OpenPCDet's heading
  (`-yaw - pi/2`, with w and l swapped) before computing IoU. Hence `yaw = -yaw_det3d - pi`, i.e.
  `atan2(rot[0], -rot[1])` below, and `model.targets` writes `(sin yaw, -cos yaw)`: a det3d checkpoint's
  boxes come out with the heading det3d reports (a car driving along +x: rot = (-1, 0), yaw = -pi/2).
- h is the vertical extent; (vx, vy) the BEV velocity (0 when the model has no `vel` head).

Note the order differs from det3d's own output `[x, y, z, w, l, h, vx, vy, yaw]`: here yaw comes before
the velocity, so `box[:7]` is the usual 7-value box.

Decoding of head outputs (all maps [B, C, H, W], row i = y, column j = x), as det3d's `CenterHead.predict`:

- `x = (j + reg[0]) * out_size_factor * voxel_size[0] + range_min_x`,
  `y = (i + reg[1]) * out_size_factor * voxel_size[1] + range_min_y`, `z = height`,
- `(w, l, h) = exp(dim)`, `yaw = atan2(rot[0], -rot[1])` (det3d's channel 0 = sin, 1 = cos of its yaw),
  `(vx, vy) = vel`,
- score = max over the task's classes of sigmoid(hm), label = first argmax + the task's class offset.

Then per task and frame: keep score > score_threshold (strict, as det3d) and centre (x, y, z) inside
post_center_range (inclusive), take the `nms_pre_max` best, and run NMS: rotated BEV IoU NMS
(`rotate_nms`, suppress IoU > nms_iou_threshold, keep <= nms_post_max) or circle NMS. For circle NMS the
config's per-task `circle_radius` is det3d's `min_radius`, which det3d compares with the *squared* centre
distance (`dx**2 + dy**2 <= min_radius`); that is reproduced exactly here. det3d's circle path applies no
pre-max cap; here the cap applies to both, which changes nothing while a task has <= nms_pre_max candidates.
Tasks are concatenated in config order; within a task detections are in descending score order.

OpenPCDet and MMDetection3D (`post.max_candidates` > 0, their 500) first take the best `max_candidates`
(class, cell) pairs of a task's heatmap, so a cell can be a candidate once per class (NMS then removes the
copy), and threshold those; the checkpoint loader maps their rot / dim coding onto det3d's (`model.sources`),
so the geometry above holds for every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.model.nms import circle_nms_sq, rotate_nms

__all__ = ["BOX_DIM", "Detections", "decode"]

BOX_DIM = 9
_HEAD_KEYS = ("reg", "height", "dim", "rot", "hm")


@dataclass
class Detections:
    """Detections of one frame: `boxes` [K, 9] float32, `scores` [K] float32, `labels` [K] long.

    `labels` index `class_names` (the config's global class list, `cfg.class_names`).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != BOX_DIM:
            raise ValueError(f"Detections.boxes must be [K, {BOX_DIM}], got {list(self.boxes.shape)}")
        k = self.boxes.shape[0]
        if self.scores.shape != (k,) or self.labels.shape != (k,):
            raise ValueError(
                f"Detections: {k} boxes but scores {list(self.scores.shape)} and labels {list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, class_names: list[str], device: torch.device | str | None = None) -> "Detections":
        return cls(
            boxes=torch.zeros(0, BOX_DIM, dtype=torch.float32, device=device),
            scores=torch.zeros(0, dtype=torch.float32, device=device),
            labels=torch.zeros(0, dtype=torch.long, device=device),
            class_names=list(class_names),
        )

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), list(self.class_names))

    def to_json_list(self) -> list[dict]:
        """`[{"box": [9 floats], "score": float, "name": str}, ...]`: one frame of the detection JSON
        (`{"<frame stem>": <this list>, ...}`)."""
        boxes = self.boxes.detach().cpu().double().tolist()
        scores = self.scores.detach().cpu().double().tolist()
        return [
            {"box": [float(v) for v in box], "score": float(score), "name": name}
            for box, score, name in zip(boxes, scores, self.names)
        ]

    @classmethod
    def from_json_list(cls, items: list[dict], class_names: list[str]) -> "Detections":
        """Inverse of `to_json_list` (raises ValueError on a malformed entry or an unknown class name)."""
        index = {name: i for i, name in enumerate(class_names)}
        boxes, scores, labels = [], [], []
        for n, item in enumerate(items):
            try:
                box, score, name = item["box"], item["score"], item["name"]
            except (TypeError, KeyError) as exc:
                raise ValueError(f"detection {n}: needs 'box', 'score' and 'name' ({exc})") from None
            if not isinstance(box, list) or len(box) != BOX_DIM:
                raise ValueError(f"detection {n}: 'box' must be a list of {BOX_DIM} numbers, got {box!r}")
            if name not in index:
                raise ValueError(f"detection {n}: unknown class {name!r} (known: {', '.join(class_names)})")
            boxes.append([float(v) for v in box])
            scores.append(float(score))
            labels.append(index[name])
        if not boxes:
            return cls.empty(class_names)
        return cls(
            boxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(labels, dtype=torch.long),
            class_names=list(class_names),
        )


def _decode_maps(pred: dict[str, Tensor], cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One task's maps -> boxes [B, H*W, 9], scores [B, H*W], task-local labels [B, H*W] (row-major cells) and
    the class probabilities [B, C, H, W]."""
    hm = pred["hm"].float()
    b, _, h, w = hm.shape
    reg, height, rot = pred["reg"].float(), pred["height"].float(), pred["rot"].float()
    dims = torch.exp(pred["dim"].float())
    vel = pred["vel"].float() if "vel" in pred else hm.new_zeros(b, 2, h, w)

    voxel, rng = cfg.voxel.voxel_size, cfg.voxel.point_cloud_range
    stride = cfg.head.out_size_factor
    ys, xs = torch.meshgrid(
        torch.arange(h, device=hm.device, dtype=hm.dtype),
        torch.arange(w, device=hm.device, dtype=hm.dtype),
        indexing="ij",
    )
    x = (xs + reg[:, 0]) * stride * voxel[0] + rng[0]
    y = (ys + reg[:, 1]) * stride * voxel[1] + rng[1]
    yaw = torch.atan2(rot[:, 0], -rot[:, 1])  # det3d's yaw -> ours (module doc)
    boxes = torch.stack([x, y, height[:, 0], dims[:, 0], dims[:, 1], dims[:, 2], yaw, vel[:, 0], vel[:, 1]], dim=-1)

    probs = torch.sigmoid(hm)
    labels = probs.argmax(dim=1)  # first maximum on ties
    scores = probs.gather(1, labels[:, None])[:, 0]
    return boxes.reshape(b, h * w, BOX_DIM), scores.reshape(b, h * w), labels.reshape(b, h * w), probs


def _top_candidates(boxes: Tensor, probs: Tensor, inside: Tensor, k: int, threshold: float):
    """OpenPCDet / MMDetection3D candidates of one frame and task: the `k` best (class, cell) pairs of the
    class probabilities [C, H, W] (a cell can come once per class), then score > threshold and centre in range.
    Returns boxes, scores, task-local labels, best first."""
    flat = probs.reshape(-1)
    scores, index = flat.topk(min(k, flat.numel()))
    cells, labels = index % boxes.shape[0], index // boxes.shape[0]
    keep = (scores > threshold) & inside[cells]
    return boxes[cells[keep]], scores[keep], labels[keep]


def _check(preds: list[dict[str, Tensor]], cfg: ModelConfig) -> None:
    tasks = cfg.head.tasks
    if len(preds) != len(tasks):
        raise ValueError(f"decode: {len(preds)} task outputs for a config with {len(tasks)} tasks")
    shape = None
    for t, (pred, names) in enumerate(zip(preds, tasks)):
        missing = [k for k in _HEAD_KEYS if k not in pred]
        if missing:
            raise ValueError(f"decode: task {t} output lacks {missing} (has {sorted(pred)})")
        hm = pred["hm"]
        if hm.ndim != 4 or hm.shape[1] != len(names):
            raise ValueError(f"decode: task {t} hm must be [B, {len(names)}, H, W] for {names}, got {list(hm.shape)}")
        if shape is None:
            shape = (hm.shape[0], hm.shape[2], hm.shape[3])
        want = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
        for key, ch in want.items():
            if key in pred and tuple(pred[key].shape) != (hm.shape[0], ch, hm.shape[2], hm.shape[3]):
                raise ValueError(
                    f"decode: task {t} '{key}' must be [B, {ch}, H, W] matching hm {list(hm.shape)}, "
                    f"got {list(pred[key].shape)}"
                )
        if (hm.shape[0], hm.shape[2], hm.shape[3]) != shape:
            raise ValueError(f"decode: task {t} maps {list(hm.shape)} differ in batch or size from task 0")


@torch.no_grad()
def decode(preds: list[dict[str, Tensor]], cfg: ModelConfig) -> list[Detections]:
    """Head outputs (one dict per task, maps [B, C, H, W], hm as logits) -> one `Detections` per frame.

    See the module docstring for the geometry, filtering and NMS. Works on any device; half-precision
    outputs are decoded in float32. A model without a `vel` head gets zero velocities.
    """
    _check(preds, cfg)
    post = cfg.post
    names = cfg.class_names
    device = preds[0]["hm"].device
    batch = preds[0]["hm"].shape[0]
    lo = torch.tensor(post.post_center_range[:3], dtype=torch.float32, device=device)
    hi = torch.tensor(post.post_center_range[3:], dtype=torch.float32, device=device)

    per_frame: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch)]
    offset = 0
    for t, pred in enumerate(preds):
        boxes, scores, labels, probs = _decode_maps(pred, cfg)
        inside = ((boxes[..., :3] >= lo) & (boxes[..., :3] <= hi)).all(-1)
        mask = (scores > post.score_threshold) & inside
        for i in range(batch):
            if post.max_candidates:
                b, s, lab = _top_candidates(boxes[i], probs[i], inside[i], post.max_candidates, post.score_threshold)
            else:
                sel = mask[i].nonzero().squeeze(1)
                b, s, lab = boxes[i, sel], scores[i, sel], labels[i, sel]
            order = torch.sort(s, descending=True, stable=True).indices[: max(post.nms_pre_max, 0)]
            b, s, lab = b[order], s[order], lab[order]
            if post.nms_type == "circle":
                keep = circle_nms_sq(b[:, :2], s, post.circle_radius[t], post.nms_post_max)
            else:
                keep = rotate_nms(b[:, :7], s, post.nms_iou_threshold, post.nms_pre_max, post.nms_post_max)
            per_frame[i].append((b[keep], s[keep], lab[keep] + offset))
        offset += len(cfg.head.tasks[t])

    out = []
    for parts in per_frame:
        out.append(
            Detections(
                boxes=torch.cat([p[0] for p in parts]),
                scores=torch.cat([p[1] for p in parts]),
                labels=torch.cat([p[2] for p in parts]).long(),
                class_names=list(names),
            )
        )
    return out
