"""Supervised CenterPoint training on labeled frames: seeded, resumable, with a progress bar.

Used to produce the bundled sample model (on CPU) and by anyone fine-tuning a config. One-cycle AdamW
(det3d's recipe), gradient clipping at 35, global flip / rotate / scale augmentation. Progress is saved at
the end of every epoch to `<out>.state.pth`; rerunning the same command resumes from there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trt_centerpoint.config import ModelConfig, config_to_dict
from trt_centerpoint.data.augment import augment_frame
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from trt_centerpoint.model.loss import centerpoint_loss
from trt_centerpoint.model.targets import build_targets


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 2
    lr: float = 2e-3  # one-cycle maximum
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    seed: int = 0
    augment: bool = True
    half: bool = False  # store the final checkpoint in FP16


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, scheduler, grad_clip: float) -> None:
    """One update: backward, clip the gradient norm (det3d clips at 35), step optimizer and schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pth")


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [order]


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """det3d's one-cycle schedule (40 % warm-up from max_lr / 10, momentum 0.95 -> 0.85); shared with QAT."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.4,
        div_factor=10.0, base_momentum=0.85, max_momentum=0.95,
    )


def load_batch(frames, idx, rng: np.random.Generator | None = None):
    """Frames `idx` of `frames` (items (stem, points, boxes, names)) -> (point tensors, boxes, names),
    each frame augmented with `rng` (flip / rotate / scale) unless it is None; shared with QAT."""
    clouds, boxes, names = [], [], []
    for i in idx:
        _, pts, bxs, nms = frames[int(i)]
        if rng is not None:
            pts, bxs = augment_frame(pts, bxs, rng)
        clouds.append(torch.from_numpy(np.ascontiguousarray(pts, np.float32)))
        boxes.append(bxs)
        names.append(nms)
    return clouds, boxes, names


def train(cfg: ModelConfig, data: str | Path, out: str | Path, opts: TrainOptions,
          init: str | Path | None = None, resume: bool = True, progress: bool = True) -> dict:
    """Train `cfg` on `data` (synth layout) and save a det3d-layout checkpoint at `out`; returns a summary."""
    out = Path(out)
    frames = LabeledFrames(data, cfg.voxel.num_point_features, cfg.class_names)
    if len(frames) < opts.batch_size:
        raise UserError(f"{data}: {len(frames)} labeled frames, fewer than the batch size {opts.batch_size}")
    torch.manual_seed(opts.seed)
    model = CenterPoint(cfg).train()
    if init:
        load_checkpoint(model, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr / 10, weight_decay=opts.weight_decay)
    steps_per_epoch = len(_batches(len(frames), opts.batch_size, np.random.default_rng(0)))
    scheduler = one_cycle(optimizer, opts.lr, opts.epochs * steps_per_epoch)
    start_epoch, history = 0, []
    sp = state_path(out)
    if resume and sp.is_file():
        state = torch.load(sp, map_location="cpu", weights_only=True)
        if state.get("options") != dataclasses.asdict(opts) or state.get("frames") != len(frames):
            raise UserError(f"{sp}: saved training state is for other options or data; delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        print(f"resuming from {sp} at epoch {start_epoch}/{opts.epochs}")

    t0 = time.perf_counter()
    for epoch in range(start_epoch, opts.epochs):
        rng = np.random.default_rng([opts.seed, epoch])
        batches = _batches(len(frames), opts.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch", disable=not progress)
        sums = {"loss": 0.0, "hm": 0.0, "loc": 0.0}
        for idx in bar:
            clouds, boxes, names = load_batch(frames, idx, rng if opts.augment else None)
            voxels = model.voxelize(clouds)
            preds = model(voxels.features, voxels.coords, len(clouds))
            loss, parts = centerpoint_loss(preds, build_targets(cfg, boxes, names))
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {float(loss.detach())} at epoch {epoch + 1}: lower --lr")
            optimizer_step(loss, model, optimizer, scheduler, opts.grad_clip)
            value = float(loss.detach())
            sums["loss"] += value
            sums["hm"] += parts["hm"]
            sums["loc"] += parts["loc"]
            bar.set_postfix(loss=f"{value:.3f}", hm=f"{parts['hm']:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        history.append({k: v / len(batches) for k, v in sums.items()} | {"epoch": epoch + 1})
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                           "options": dataclasses.asdict(opts), "frames": len(frames)}, sp)

    meta = {
        "config": config_to_dict(cfg),
        "train": {**dataclasses.asdict(opts), "data": str(data), "frames": len(frames)},
        "history": history,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    save_checkpoint(model, out, meta=meta, half=opts.half)
    sp.unlink(missing_ok=True)
    return meta
