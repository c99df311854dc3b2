"""Quantization-aware training: fine-tune a calibrated ``ptq.pth`` with fake quant in the loop -> ``qat.pth``.

The model comes from ``load_quantized_model`` exactly as PTQ saved it: BN stays folded into the convs and
every quantizer starts from its calibrated amax. Fake quant runs in forward and backward
(pytorch-quantization's straight-through estimator: the gradient passes the rounding unchanged and is
zeroed where the input was clipped at +-amax).

Learned ranges (``ranges``, default ``"inputs"``; ``quant.learned_range``): the activation amax values
train with the weights (LSQ gradient), tied where calibration gave several quantizers the same tensor.
Why: on the sample model, full INT8 (only ``conv_input`` and the first residual block float) costs 4.9 mAP
points (0.7405 -> 0.6918, 200 held-out frames), all of it at the input of the centre-offset convs
``bbox_head.tasks.*.reg.3``. Their calibrated amax (~15) is set by 1-2 % of background cells whose values
reach 18, while at object centres the values stay below ~0.3: the INT8 step (0.12) is as large as the
signal, and the offsets move by 0.1 cell (20 cm). With amax fixed, fine-tuning cannot fix it: the loss
only sees object cells, the straight-through gradient never sees the rounding, and nothing can move the
range; supervised QAT with fixed ranges gets 0.6965. Shrinking that amax alone to a tenth recovers 0.7397
without training; learning it (and the other ranges) recovers the rest (module doc of ``learned_range``).
The trained amax values are saved as the ``_amax`` buffers ``ptq.pth`` has, so the exporters write
exactly them. ``ranges="all"`` also learns the per-channel weight ranges, ``"none"`` keeps every
calibrated amax fixed (QAT then checks that none moved).

Schedule: for the first ``range_warmup`` epochs only the ranges train (the weights would otherwise chase
a range that is still moving), then the weights join with det3d's one-cycle schedule (max lr ``lr``,
AdamW). The ranges use Adam with a step of ``range_lr`` x their calibrated value (so an amax of 0.1 and one
of 20 move alike; default ``range_step``: larger for short runs), cosine-decayed to zero over the run,
never below 1 % of the calibrated value.

Objectives:

- ``distill`` (default): any folder of point clouds, no labels; the FP32 model (the PTQ file's
  ``source_checkpoint`` or ``teacher``) is the teacher, the fake-quant model the student
  (``quant.distill.distill_loss``: heatmap KL + teacher-heat-weighted L1 on the regression maps, so the
  offsets, sizes and headings at objects carry the loss). Teacher and student see the same (augmented)
  voxels. Measured on the sample (300 frames, 2 epochs): full INT8 0.7419 mAP vs FP32 0.7405.
- ``supervised``: labeled frames (``DIR/points`` + ``DIR/labels``), the CenterPoint loss
  (``model.loss.centerpoint_loss``), global flip / rotate / scale augmentation as in ``training.py``.
  On the sample it lets the weights drift from the 1000-frame model (0.7334 with learned ranges; 0.7411
  when only the ranges train, ``range_warmup`` >= ``epochs``).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is created
with gloo on CPU or nccl on CUDA (one GPU per local rank), the student is wrapped in
``DistributedDataParallel`` and every optimizer step takes ``batch_size`` frames on each rank (the frame
order is drawn from the seed, the same on every rank, and sharded by rank). spconv's modules need no
special treatment: DDP only sees the dense parameters and the (features, coords) tensors, and every
parameter gets a gradient each step (every head output enters both losses), so
``find_unused_parameters`` stays False (measured: no unused-parameter error with either objective).
Learned amax values are parameters during training (made so before the DDP wrap), so DDP all-reduces
their gradients like the weights' and every rank takes the same step. Buffers are not re-broadcast on
every forward (``forward_sync_buffers`` / ``broadcast_buffers`` False): the buffers left are fixed amax
values, loaded from the same file on every rank. A step whose batch is empty (no voxel in range) on any
rank is skipped on all ranks together; the loss is averaged across ranks before the finiteness check so
all ranks stop together. Only rank 0 writes; at the end the ranks check that their weights and amax
agree, and every amax is checked finite and positive.

The saved file is a PTQ-format checkpoint (same ``format``), so ``load_quantized_model`` and
``trt-centerpoint eval --precision int8`` read it unchanged; its meta gains ``"stage": "qat"`` and a
``"qat"`` record (objective, epochs, lr, ranges and their learned / calibrated ratios, data, frames,
teacher, world size, loss history).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
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
from trt_centerpoint.distributed import DistContext, init_distributed
from trt_centerpoint.distributed import all_reduce as _all_reduce
from trt_centerpoint.errors import UserError
from trt_centerpoint.model.centerpoint import load_model
from trt_centerpoint.model.loss import centerpoint_loss
from trt_centerpoint.model.targets import build_targets
from trt_centerpoint.quant.distill import UnlabeledFrames, distill_loss
from trt_centerpoint.quant.learned_range import RANGE_KINDS, LearnedRanges, freeze_ranges, learn_ranges
from trt_centerpoint.quant.ptq import (
    load_quantized_model,
    read_ptq_meta,
    round_sparse_weights_fp16,
    save_quantized_model,
)
from trt_centerpoint.train.loop import load_batch, one_cycle

OBJECTIVES = ("supervised", "distill")
DEFAULT_LR = 1e-4
DEFAULT_EPOCHS = 2
DEFAULT_RANGES = "inputs"
MIN_RANGE_LR = 1e-2
RANGE_TRAVEL = 2.0  # default range step: at least this / the run's steps (cosine: an amax can travel 1x)
DEFAULT_RANGE_WARMUP = 0.5


# The skip list for a PTQ that QAT fine-tunes: only the sparse input conv and the first residual block stay
# float (FP16), the whole RPN and head run INT8; learned ranges recover the head output convs (reg.3) that
# `quantize.DEFAULT_SKIP` keeps float for PTQ alone.
QAT_SKIP = ("backbone.conv_input*", "backbone.conv1.0.*")

# frame indices of a step -> the teacher's outputs on them (as the model returns them), or None: not known
TeacherOutputs = Callable[[np.ndarray], object]


@dataclass
class QATOptions:
    objective: str = "distill"
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
    ranges: str = DEFAULT_RANGES  # which amax are learned: "none", "inputs" (activations) or "all" (+ weights)
    range_lr: float | None = None  # Adam step of an amax, a fraction of its calibrated value (None: range_step)
    range_warmup: float = DEFAULT_RANGE_WARMUP  # epochs at the start where only the ranges train
    train_weights: bool = True  # False: only the ranges train, the weights stay the calibrated model's (ptq)


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
    """Every rank ends with the same weights and the same amax (learned ones included)."""
    if not ctx.distributed:
        return
    tensors = [p.detach() for p in model.parameters()] + list(amax_snapshot(model).values())
    sums = [float(t.double().sum()) for t in tensors] + [float((t.double() ** 2).sum()) for t in tensors]
    high = _all_reduce(sums, ctx, "max")
    low = [-v for v in _all_reduce([-v for v in sums], ctx, "max")]
    if high != low:
        raise RuntimeError("distributed QAT: the ranks ended with different weights or amax")


def _check_amax(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], learned: bool) -> None:
    """Fixed ranges: no amax moved. Learned ranges: every amax is still finite and positive."""
    if before.keys() != after.keys():
        raise RuntimeError("QAT changed which quantizers have an amax")
    if not learned:
        changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
        if changed:
            raise RuntimeError(f"QAT changed calibrated amax values (e.g. {changed[0]}); they must stay fixed")
        return
    bad = [k for k, v in after.items() if not (torch.isfinite(v).all() and (v > 0).all())]
    if bad:
        raise RuntimeError(f"QAT learned a non-positive or non-finite amax ({bad[0]}): lower --range-lr")


def range_step(opts: QATOptions, total_steps: int) -> float:
    """The Adam step of a learned amax, as a fraction of its calibrated value: `range_lr`, or by default
    max(MIN_RANGE_LR, RANGE_TRAVEL / steps). A short run still lets an amax travel as far as the sample's
    reg.3 needs (to 6-15 % of its calibrated value): measured on the sample, 32 frames x 2 epochs (32 steps,
    step 0.0625) give full-INT8 mAP 0.7415 where 0.01 gives 0.6975; 300 frames x 2 epochs use 0.01.
    Larger steps than needed only add noise (tiny model, 24 steps: distillation gap 0.0130 at 0.01, 0.0155
    at 0.125)."""
    if opts.range_lr is not None:
        return opts.range_lr
    return max(MIN_RANGE_LR, RANGE_TRAVEL / max(total_steps, 1))


def _range_optimizer(ranges: LearnedRanges, step: float, total_steps: int):
    """Adam on the learned amax, one group per tied range with a step of `step` x its calibrated amax
    (an amax of 0.1 and one of 20 then move by the same fraction), cosine-decayed to 0 over the run."""
    if not ranges.params:
        return None, None
    groups = [{"params": [p], "lr": step * float(p.detach().abs().mean())} for p in ranges.parameters()]
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, total_steps) / total_steps)))
    return optimizer, scheduler


def _split_parameters(model: nn.Module, ranges: LearnedRanges) -> list[nn.Parameter]:
    learned = {id(p) for p in ranges.parameters()}
    return [p for p in model.parameters() if id(p) not in learned]


def run_qat(checkpoint: str | Path, data: str | Path, out: str | Path, opts: QATOptions | None = None,
            progress: bool = True, teacher_outputs: TeacherOutputs | None = None) -> tuple[nn.Module, dict]:
    """Fine-tune the quantized model of `checkpoint` on `data`; rank 0 writes `out`.

    Returns the fine-tuned model (eval mode, unwrapped) and the saved meta. Under torchrun, every rank
    returns its (identical) model. `teacher_outputs(idx)`: the teacher's outputs on the frames `idx` (indices
    into `data`'s frame list) already computed, or None where they are not (the teacher then runs); only for
    distillation without augmentation (the teacher must see exactly the student's input).
    """
    if teacher_outputs is not None and (opts is None or opts.augment or opts.objective != "distill"):
        raise ValueError("run_qat: teacher_outputs need objective 'distill' and augment=False")
    opts = opts or QATOptions()
    if opts.objective not in OBJECTIVES:
        raise UserError(f"--objective {opts.objective}: one of {', '.join(OBJECTIVES)}")
    if opts.epochs < 1 or opts.batch_size < 1 or not opts.lr > 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if opts.ranges not in RANGE_KINDS:
        raise UserError(f"--ranges {opts.ranges}: one of {', '.join(RANGE_KINDS)}")
    if not opts.train_weights and opts.ranges == "none":
        raise UserError("nothing to train: the weights are frozen and --ranges is none")
    if (opts.range_lr is not None and not opts.range_lr > 0) or not opts.range_warmup >= 0:
        raise UserError("--range-lr must be > 0 and --range-warmup >= 0")
    ctx = init_distributed(opts.device)
    try:
        return _run(checkpoint, data, Path(out), opts, ctx, progress, teacher_outputs)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


class _Teacher:
    """The FP32 teacher, loaded the first time a step needs it: every step may find its outputs computed already
    (`teacher_outputs`), and a nuScenes-size model costs seconds to build."""

    def __init__(self, cfg, path: Path, device: str, known: TeacherOutputs | None):
        self.cfg, self.path, self.device, self.known = cfg, path, device, known
        self.model: nn.Module | None = None
        self.reused = 0  # steps whose outputs were known

    @torch.no_grad()
    def __call__(self, idx, feats: torch.Tensor, coords: torch.Tensor, batch_size: int):
        outputs = self.known(idx) if self.known is not None else None
        if outputs is not None:
            self.reused += 1
            return [{name: t.to(feats.device) for name, t in task.items()} for task in outputs]
        if self.model is None:
            self.model = load_model(self.cfg, self.path, device=self.device).requires_grad_(False)
        return self.model(feats, coords, batch_size)


def _run(checkpoint, data, out: Path, opts: QATOptions, ctx: DistContext, progress: bool,
         teacher_outputs: TeacherOutputs | None = None):
    meta = read_ptq_meta(checkpoint)
    cfg = config_from_dict(meta["config"], f"{checkpoint} (meta.config)")
    frames, picks = _frames(data, cfg, opts)
    teacher, teacher_path = None, None
    if opts.objective == "distill":
        teacher_path = _resolve_teacher(checkpoint, meta, opts.teacher)
        teacher = _Teacher(cfg, teacher_path, str(ctx.device), teacher_outputs)

    torch.manual_seed(opts.seed)
    student = load_quantized_model(checkpoint, device=str(ctx.device))
    amax_before = amax_snapshot(student)
    ranges = learn_ranges(student, opts.ranges)  # before DDP: their gradients are all-reduced like weights
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
    total_steps = opts.epochs * steps_per_epoch
    warmup = min(round(opts.range_warmup * steps_per_epoch), total_steps - 1) if ranges.params else 0
    if not opts.train_weights:
        warmup = total_steps  # the weights never step (and need no gradient)
    weights = _split_parameters(student, ranges)
    if not opts.train_weights:
        for param in weights:
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW(weights, lr=opts.lr / 10, weight_decay=opts.weight_decay)
    scheduler = one_cycle(optimizer, opts.lr, max(1, total_steps - warmup))
    range_lr = range_step(opts, total_steps)
    range_optimizer, range_scheduler = _range_optimizer(ranges, range_lr, total_steps)

    def step(loss: torch.Tensor, step_index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        if range_optimizer is not None:
            range_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step_index >= warmup:  # the ranges settle first, then the weights follow them (never: ranges only)
            torch.nn.utils.clip_grad_norm_(weights, opts.grad_clip)
            optimizer.step()
            scheduler.step()
        if range_optimizer is not None:
            range_optimizer.step()
            range_scheduler.step()
            ranges.clamp()

    history, skipped, t0, global_step = [], 0, time.perf_counter(), 0
    for epoch in range(opts.epochs):
        aug_rng = np.random.default_rng([opts.seed, epoch, ctx.rank]) if opts.augment else None
        steps = _step_indices(picks, epoch, opts, ctx)
        bar = tqdm(steps, desc=f"qat {opts.objective} {epoch + 1}/{opts.epochs}", unit="step",
                   disable=not (progress and ctx.is_main))
        sums, done = np.zeros(3), 0
        for idx in bar:
            clouds, boxes, names = load_batch(frames, idx, aug_rng)
            # only the ranges train (ptq's recipe): they fit the input the deployed model sees, the test-time
            # voxel cap calibration also saw; training the weights keeps the training cap
            voxels = student.voxelize(clouds, training=opts.train_weights)
            if _all_reduce([float(voxels.num_voxels == 0)], ctx, "max")[0]:
                skipped += 1  # spconv cannot run an empty batch; all ranks skip this step together
                global_step += 1
                continue
            feats, coords = voxels.features.to(ctx.device), voxels.coords.to(ctx.device)
            preds = net(feats, coords, len(clouds))
            if teacher is None:
                loss, parts = centerpoint_loss(preds, build_targets(cfg, boxes, names))
            else:
                loss, parts = distill_loss(preds, teacher(idx, feats, coords, len(clouds)))
            value = _all_reduce([float(loss.detach()), parts["hm"], parts["loc"]], ctx)
            value = [v / ctx.world_size for v in value]
            if not math.isfinite(value[0]):
                raise RuntimeError(f"QAT loss is {value[0]} at epoch {epoch + 1}: lower --lr")
            step(loss, global_step)
            global_step += 1
            sums += value
            done += 1
            shown = scheduler if opts.train_weights or range_scheduler is None else range_scheduler
            bar.set_postfix(loss=f"{value[0]:.4g}", hm=f"{value[1]:.4g}", lr=f"{shown.get_last_lr()[0]:.1e}")
        mean = sums / max(done, 1)
        history.append({"epoch": epoch + 1, "loss": float(mean[0]), "hm": float(mean[1]), "loc": float(mean[2]),
                        "steps": done})

    student.eval()
    freeze_ranges(student)  # learned amax -> plain buffers: the ptq.pth layout the loader and exporters read
    amax_after = amax_snapshot(student)
    _check_amax(amax_before, amax_after, bool(ranges.params))
    _check_same_weights(student, ctx)
    moved = {k: float((amax_after[k] / amax_before[k]).mean()) for k in ranges.params}

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
        "teacher_steps_reused": teacher.reused if teacher is not None else 0,  # outputs given, not recomputed
        "world_size": ctx.world_size,
        "ranges": opts.ranges,
        "range_lr": range_lr if ranges.params else None,
        "range_warmup": opts.range_warmup,
        "range_warmup_steps": warmup,
        "train_weights": opts.train_weights,
        "amax_ratio": {k: round(v, 6) for k, v in moved.items()},  # learned / calibrated (mean per quantizer)
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
