"""Quantization-aware training: fine-tune a calibrated ``ptq.pth`` with fake quant in the loop -> ``qat.pth``.

The model comes from ``load_quantized_model`` exactly as PTQ saved it: BN stays folded into the convs and
every quantizer keeps its calibrated amax. Fake quant runs in forward and backward (pytorch-quantization's
straight-through estimator: the gradient passes the rounding unchanged and is zeroed where the input was
clipped at +-amax). Only weights and biases are trained; **amax values are not learned** (they are
buffers, not parameters; QAT checks at the end that none moved), so the deployed INT8 scales are the
calibrated ones and a weight that grows past its channel's amax is clipped.

Objectives:

- ``supervised``: labeled frames (``DIR/points`` + ``DIR/labels``), the CenterPoint loss
  (``model.loss.centerpoint_loss``), global flip / rotate / scale augmentation as in ``training.py``;
- ``distill``: any folder of point clouds, no labels; the FP32 model (the PTQ file's
  ``source_checkpoint`` or ``teacher``) is the teacher, the fake-quant model the student
  (``calib.distill.distill_loss``: heatmap KL + teacher-heat-weighted L1 on the regression maps). Teacher
  and student see the same (augmented) voxels.

Defaults follow CUDA-CenterPoint's QAT fine-tune: one-cycle schedule (det3d's, shared with training.py),
max lr 1e-4, AdamW, a few epochs.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is created
with gloo on CPU or nccl on CUDA (one GPU per local rank), the student is wrapped in
``DistributedDataParallel`` and every optimizer step takes ``batch_size`` frames on each rank (the frame
order is drawn from the seed, the same on every rank, and sharded by rank). spconv's modules need no
special treatment: DDP only sees the dense parameters and the (features, coords) tensors, and every
parameter gets a gradient each step (every head output enters both losses), so
``find_unused_parameters`` stays False (measured: no unused-parameter error with either objective).
Buffers are not re-broadcast on every forward (``forward_sync_buffers`` / ``broadcast_buffers`` False):
the only buffers are the amax values, constant during QAT and loaded from the same file on every rank. A step
whose batch is empty (no voxel in range) on any rank is skipped on all ranks together; the loss is averaged
across ranks before the finiteness check so all ranks stop together. Only rank 0 writes; at the end the ranks check
that their weights agree.

The saved file is a PTQ-format checkpoint (same ``format``), so ``load_quantized_model`` and
``trt-centerpoint eval --precision int8`` read it unchanged; its meta gains ``"stage": "qat"`` and a
``"qat"`` record (objective, epochs, lr, data, frames, teacher, world size, loss history).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers
from trt_centerpoint._compat.torch_distributed import no_buffer_sync_option
from trt_centerpoint.config import config_from_dict
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.sampling import evenly_spaced_indices
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.centerpoint import load_model
from trt_centerpoint.model.loss import centerpoint_loss
from trt_centerpoint.model.targets import build_targets
from trt_centerpoint.quant.distill import UnlabeledFrames, distill_loss
from trt_centerpoint.quant.ptq import (
    load_quantized_model,
    read_ptq_meta,
    round_sparse_weights_fp16,
    save_quantized_model,
)
from trt_centerpoint.train.loop import load_batch, one_cycle, optimizer_step

OBJECTIVES = ("supervised", "distill")
DEFAULT_LR = 1e-4
DEFAULT_EPOCHS = 2


@dataclass
class QATOptions:
    objective: str = "supervised"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 2  # frames per step on each rank
    lr: float = DEFAULT_LR  # one-cycle maximum
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    seed: int = 0
    augment: bool = True
    num_frames: int | None = None  # use this many frames, spread evenly over the folder (None: all)
    teacher: str | None = None  # distill: FP32 checkpoint (default: the PTQ file's source_checkpoint)
    device: str = "cpu"


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we created the process group (and destroy it at the end)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistContext:
    """Single process, or the torchrun process group (gloo on CPU, nccl on CUDA: one GPU per local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world <= 1:
        return DistContext(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, device=dev, owns_group=owns)


def _all_reduce(values: list[float], ctx: DistContext, op: str = "sum") -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def amax_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """{quantizer path: amax copy} for every quantizer with an amax."""
    return {name: q.amax.detach().cpu().clone() for name, q in iter_quantizers(model) if q.amax is not None}


def _frames(data: str | Path, cfg, opts: QATOptions):
    nf = cfg.voxel.num_point_features
    if opts.objective == "supervised":
        frames = LabeledFrames(data, nf, cfg.class_names)
    else:
        frames = UnlabeledFrames(data, nf)
    n = len(frames)
    if opts.num_frames is not None:
        if opts.num_frames < 1:
            raise UserError(f"--num-frames must be >= 1, got {opts.num_frames}")
        picks = np.asarray(evenly_spaced_indices(n, opts.num_frames))
    else:
        picks = np.arange(n)
    return frames, picks


def _resolve_teacher(checkpoint: str | Path, meta: dict, teacher: str | None) -> Path:
    if teacher:
        path = Path(teacher)
        if not path.is_file():
            raise UserError(f"--teacher {teacher}: no such file")
        return path
    source = meta.get("source_checkpoint")
    candidates = [Path(source), Path(checkpoint).parent / Path(source).name] if source else []
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"{checkpoint}: its FP32 source checkpoint {source!r} is not found; pass the FP32 model with --teacher"
    )


def _step_indices(picks: np.ndarray, epoch: int, opts: QATOptions, ctx: DistContext) -> list[np.ndarray]:
    """This rank's frame indices for each step of `epoch`: one seeded permutation shared by all ranks,
    padded by wrapping around to whole global batches, then sharded by rank."""
    order = picks[np.random.default_rng([opts.seed, epoch]).permutation(len(picks))]
    global_batch = opts.batch_size * ctx.world_size
    steps = max(1, math.ceil(len(order) / global_batch))
    order = np.resize(order, steps * global_batch)  # wraps around
    return [order[s * global_batch + ctx.rank * opts.batch_size :][: opts.batch_size] for s in range(steps)]


def _check_same_weights(model: nn.Module, ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    sums = [float(p.detach().double().sum()) for p in model.parameters()]
    sums += [float((p.detach().double() ** 2).sum()) for p in model.parameters()]
    high = _all_reduce(sums, ctx, "max")
    low = [-v for v in _all_reduce([-v for v in sums], ctx, "max")]
    if high != low:
        raise RuntimeError("distributed QAT: the ranks ended with different weights")


def run_qat(checkpoint: str | Path, data: str | Path, out: str | Path, opts: QATOptions | None = None,
            progress: bool = True) -> tuple[nn.Module, dict]:
    """Fine-tune the quantized model of `checkpoint` on `data`; rank 0 writes `out`.

    Returns the fine-tuned model (eval mode, unwrapped) and the saved meta. Under torchrun, every rank
    returns its (identical) model.
    """
    opts = opts or QATOptions()
    if opts.objective not in OBJECTIVES:
        raise UserError(f"--objective {opts.objective}: one of {', '.join(OBJECTIVES)}")
    if opts.epochs < 1 or opts.batch_size < 1 or not opts.lr > 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr > 0")
    ctx = init_distributed(opts.device)
    try:
        return _run(checkpoint, data, Path(out), opts, ctx, progress)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _run(checkpoint, data, out: Path, opts: QATOptions, ctx: DistContext, progress: bool):
    meta = read_ptq_meta(checkpoint)
    cfg = config_from_dict(meta["config"], f"{checkpoint} (meta.config)")
    frames, picks = _frames(data, cfg, opts)
    teacher, teacher_path = None, None
    if opts.objective == "distill":
        teacher_path = _resolve_teacher(checkpoint, meta, opts.teacher)
        teacher = load_model(cfg, teacher_path, device=str(ctx.device)).requires_grad_(False)

    torch.manual_seed(opts.seed)
    student = load_quantized_model(checkpoint, device=str(ctx.device))
    amax_before = amax_snapshot(student)
    student.train()
    net: nn.Module = student
    if ctx.distributed:
        net = DistributedDataParallel(
            student,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=False,
            **no_buffer_sync_option(),
        )

    steps_per_epoch = len(_step_indices(picks, 0, opts, ctx))
    optimizer = torch.optim.AdamW(student.parameters(), lr=opts.lr / 10, weight_decay=opts.weight_decay)
    scheduler = one_cycle(optimizer, opts.lr, opts.epochs * steps_per_epoch)

    history, skipped, t0 = [], 0, time.perf_counter()
    for epoch in range(opts.epochs):
        aug_rng = np.random.default_rng([opts.seed, epoch, ctx.rank]) if opts.augment else None
        steps = _step_indices(picks, epoch, opts, ctx)
        bar = tqdm(steps, desc=f"qat {opts.objective} {epoch + 1}/{opts.epochs}", unit="step",
                   disable=not (progress and ctx.is_main))
        sums, done = np.zeros(3), 0
        for idx in bar:
            clouds, boxes, names = load_batch(frames, idx, aug_rng)
            voxels = student.voxelize(clouds)
            if _all_reduce([float(voxels.num_voxels == 0)], ctx, "max")[0]:
                skipped += 1  # spconv cannot run an empty batch; all ranks skip this step together
                continue
            feats, coords = voxels.features.to(ctx.device), voxels.coords.to(ctx.device)
            preds = net(feats, coords, len(clouds))
            if teacher is None:
                loss, parts = centerpoint_loss(preds, build_targets(cfg, boxes, names))
            else:
                with torch.no_grad():
                    target = teacher(feats, coords, len(clouds))
                loss, parts = distill_loss(preds, target)
            value = _all_reduce([float(loss.detach()), parts["hm"], parts["loc"]], ctx)
            value = [v / ctx.world_size for v in value]
            if not math.isfinite(value[0]):
                raise RuntimeError(f"QAT loss is {value[0]} at epoch {epoch + 1}: lower --lr")
            optimizer_step(loss, student, optimizer, scheduler, opts.grad_clip)
            sums += value
            done += 1
            bar.set_postfix(loss=f"{value[0]:.4g}", hm=f"{value[1]:.4g}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        mean = sums / max(done, 1)
        history.append({"epoch": epoch + 1, "loss": float(mean[0]), "hm": float(mean[1]), "loc": float(mean[2]),
                        "steps": done})

    student.eval()
    changed = [k for k, v in amax_snapshot(student).items() if not torch.equal(v, amax_before[k])]
    if changed:
        raise RuntimeError(f"QAT changed calibrated amax values (e.g. {changed[0]}); they must stay fixed")
    _check_same_weights(student, ctx)

    new_meta = copy.deepcopy(meta)
    new_meta.pop("stage", None)
    previous = new_meta.pop("qat", None)
    new_meta["stage"] = "qat"
    new_meta["qat"] = {
        "objective": opts.objective,
        "epochs": opts.epochs,
        "lr": opts.lr,
        "batch_size": opts.batch_size,
        "weight_decay": opts.weight_decay,
        "grad_clip": opts.grad_clip,
        "seed": opts.seed,
        "augment": opts.augment,
        "data": str(data),
        "frames": len(picks),
        "teacher": str(teacher_path) if teacher_path else None,
        "world_size": ctx.world_size,
        "steps_per_epoch": steps_per_epoch,
        "steps_skipped_empty": skipped,
        "history": history,
        "init_checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if previous is not None:
        new_meta["qat"]["previous"] = previous
    if new_meta.get("sparse_weights_fp16"):  # keep the model what the scn files deploy (every rank alike)
        round_sparse_weights_fp16(student)
    if ctx.is_main:
        save_quantized_model(student, out, new_meta)
    if ctx.distributed:
        dist.barrier()
    student.ptq_meta = new_meta
    return student, new_meta
