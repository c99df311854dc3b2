"""Per-layer `output_bound`: the most output voxels libspconv allocates for one SparseConvolution.

A conv that produces more active voxels than its bound loses the excess in libspconv, silently: its users'
most reported failure. Two fixed numbers are common: 150000 (libspconv's ONNX parser when the attribute is
missing) and 200000 (CUDA-CenterPoint, every layer). Both are too large for the deep, coarse layers and can
be too small for a dense 10-sweep frame. Here each layer gets a bound for the densest frame the files can see:

- The graph's input holds at most `max_voxels` voxels (the voxelizer's cap), whatever the frame.
- Calibration frames give, per layer, the largest ratio `active output voxels / input voxels`. A layer's
  ratio falls as frames get denser (neighbouring sites merge), so sparse frames (single sweeps) overestimate it:
  `ratio x max_voxels` covers a frame that fills the voxelizer. A submanifold conv has ratio 1 exactly.
- `bound = min(safe, max(ceil(margin x ratio x max_voxels), floor))`, `margin` (default 1.5) for the spread of
  the ratio between scenes, `floor` from the config (`export.output_bound_floor`: a minimum the config states
  for every layer, 0 by default) and the safe bound below as the cap. Calibrating on single sweeps and running
  10-sweep frames is therefore safe: the bounds do not come from the calibration frames' counts.
- Safe bound (the fallback without calibration frames, and the cap): a subm conv keeps its input's sites; a
  strided conv turns each input site into at most prod(ceil(k / s)) output sites, never more than its output
  grid's cells. No frame can exceed it.
- `export --output-bound N` sets every layer to N (the fixed-number scheme, for comparison with other tools).

Runners that execute the files (`runtime.scn_runner`) stop with an error naming the layer when a frame exceeds
a bound, and `compare` records each layer's headroom (bound / most active voxels seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trt_centerpoint.export.scn.walk import SparseOp

DEFAULT_MARGIN = 1.5

__all__ = ["DEFAULT_MARGIN", "LayerBound", "Observed", "observe_active_voxels", "plan_output_bounds", "safe_bounds"]


@dataclass(frozen=True)
class Observed:
    active: int  # most active output voxels on one frame
    ratio: float  # largest active output voxels / input voxels on one frame


@dataclass(frozen=True)
class LayerBound:
    path: str
    bound: int
    observed: int | None  # max active output voxels over the calibration frames; None: not observed
    safe: int
    source: str  # "scaled" (margin x ratio x max_voxels), "floor", "safe" (capped / no frames) or "override"
    ratio: float | None = None

    def as_dict(self) -> dict:
        return {"bound": self.bound, "observed": self.observed, "ratio": self.ratio, "safe": self.safe,
                "source": self.source}


def safe_bounds(ops: list[SparseOp], max_voxels: int) -> dict[str, int]:
    """Guaranteed upper bound on the output voxels of every conv op (see module doc)."""
    by_tensor = {0: int(max_voxels)}
    out: dict[str, int] = {}
    for op in ops:
        n = by_tensor[op.inputs[0]]
        if op.kind == "conv":
            conv = op.module
            if not conv.subm:
                fan_out = math.prod(-(-k // s) for k, s in zip(conv.kernel_size, conv.stride))
                n = min(n * fan_out, math.prod(op.out_spatial))
            out[op.path] = n
        by_tensor[op.output] = n
    return out


@torch.no_grad()
def _conv_sites(coords: torch.Tensor, op: SparseOp) -> torch.Tensor:
    """The active output sites [M, 4] (batch, z, y, x) of a regular sparse conv on input sites `coords`: every
    o with o * stride - padding + k * dilation = i for an active input i and a kernel offset k (spconv's rule);
    a subm conv keeps its input's sites."""
    conv = op.module
    if conv.subm:
        return coords
    stride, padding, dilation = (torch.tensor(v, dtype=torch.int64) for v in (conv.stride, conv.padding, conv.dilation))
    shape = torch.tensor(op.out_spatial, dtype=torch.int64)
    sites = coords[:, 1:].long() + padding
    found = []
    for offset in torch.cartesian_prod(*(torch.arange(k) for k in conv.kernel_size)).reshape(-1, 3):
        num = sites - offset * dilation
        out = torch.div(num, stride, rounding_mode="floor")
        keep = ((num % stride) == 0).all(1) & (out >= 0).all(1) & (out < shape).all(1)
        found.append(torch.cat([coords[keep, :1].long(), out[keep]], 1))
    cells = torch.cat(found)
    z, y, x = (int(v) for v in shape)
    key = torch.unique(((cells[:, 0] * z + cells[:, 1]) * y + cells[:, 2]) * x + cells[:, 3])
    return torch.stack([key // (z * y * x), key // (y * x) % z, key // x % y, key % x], 1)


def observe_active_voxels(fused: nn.Module, ops: list[SparseOp], batches) -> dict[str, Observed]:
    """Per conv op: the most active output voxels, and the largest ratio to the frame's input voxels, over
    `batches` (an iterable of (features, coords) of one frame each; frames without voxels are skipped).

    Only the geometry is computed (`_conv_sites`), not the convolutions: the counts are those of a forward
    pass of `fused` (which is not run; a test compares them with spconv's), at a fraction of its cost."""
    active = {op.path: 0 for op in ops if op.kind == "conv"}
    ratio = {path: 0.0 for path in active}
    for features, coords in batches:
        if len(features) == 0:
            continue
        sites = {0: coords}
        for op in ops:
            if op.kind == "conv":
                sites[op.output] = _conv_sites(sites[op.inputs[0]], op)
                n = int(sites[op.output].shape[0])
                active[op.path] = max(active[op.path], n)
                ratio[op.path] = max(ratio[op.path], n / len(features))
            elif op.kind in ("add", "relu"):
                sites[op.output] = sites[op.inputs[0]]
    return {path: Observed(active[path], ratio[path]) for path in active if active[path]}


def plan_output_bounds(ops: list[SparseOp], max_voxels: int, observed: dict[str, Observed] | None = None,
                       margin: float = DEFAULT_MARGIN, floor: int = 0,
                       override: int | None = None) -> dict[str, LayerBound]:
    """`LayerBound` per conv path by the rule of the module doc."""
    if margin < 1.0:
        raise ValueError(f"output_bound margin must be >= 1, got {margin}")
    if override is not None and override < 1:
        raise ValueError(f"output_bound override must be >= 1, got {override}")
    safe = safe_bounds(ops, max_voxels)
    plan = {}
    for path, cap in safe.items():
        seen = (observed or {}).get(path)
        active, ratio = (seen.active, seen.ratio) if seen else (None, None)
        if override is not None:
            plan[path] = LayerBound(path, int(override), active, cap, "override", ratio)
            continue
        if seen is None:
            plan[path] = LayerBound(path, cap, None, cap, "safe")
            continue
        scaled = math.ceil(margin * ratio * max_voxels)
        want, source = (scaled, "scaled") if scaled >= floor else (int(floor), "floor")
        if want >= cap:
            want, source = cap, "safe"
        plan[path] = LayerBound(path, want, active, cap, source, ratio)
    return plan
