"""One process, or one rank of a `torchrun` launch: the process group and the few collectives the stages use.

Under torchrun (``WORLD_SIZE`` > 1 in the environment, on one machine with ``--standalone`` or across machines
with ``--nnodes`` and a rendezvous endpoint) the process group is created with gloo on CPU or nccl on CUDA (one GPU
per local rank). Without torchrun every helper here is the identity, so a single process runs exactly as before.

Frame-parallel stages (`eval`, `compare`, `ptq`'s calibration) split their frames in *steps*: step s runs frame
``s * world_size + rank`` on each rank, and the results of a step are gathered on rank 0 in frame order. So rank 0
sees every frame in the order one process would, which is what makes the merged results identical to one
process's (metrics, detection files, and the calibration histograms whose float32 sums depend on the order).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "all_gather", "all_reduce", "barrier", "broadcast", "context", "gather", "init_distributed",
           "is_main_process", "lockstep", "rank_device", "shutdown"]


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


def context() -> DistContext:
    """The context of an object-passing stage (eval, compare, calibration): gloo even on a GPU machine, because
    what travels between ranks are detections and histograms, small Python objects, not CUDA tensors."""
    return init_distributed("cpu")


def rank_device(device: str) -> str:
    """`device` for this process: plain "cuda" is the GPU of the local rank under torchrun (one GPU per process)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if `ctx` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process (what the CLI asks before printing)."""
    return int(os.environ.get("RANK", "0")) == 0


def all_reduce(values: list[float], ctx: DistContext, op: str = "sum") -> list[float]:
    """Elementwise sum (or max) of `values` over the ranks, in float64."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, by rank, on every rank (a picklable object)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's `obj`, by rank, on rank 0; None on the other ranks."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def lockstep(items: Sequence, ctx: DistContext) -> Iterator[tuple[list[int], int | None]]:
    """Steps over `items`: (the indices the ranks run in this step, in order; this rank's index or None).

    Every rank goes through the same number of steps (a rank without an item in the last step gets None and
    still takes part in the step's collectives), so gathering once per step never deadlocks.
    """
    world = ctx.world_size
    for start in range(0, len(items), world):
        indices = list(range(start, min(start + world, len(items))))
        yield indices, start + ctx.rank if start + ctx.rank < len(items) else None
