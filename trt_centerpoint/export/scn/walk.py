"""The fused sparse backbone as a flat list of ops in execution order: the hand trace the scn export uses.

Why a walk and not a trace: libspconv's dialect is not standard ONNX, so `torch.onnx` cannot produce it,
and hooking spconv's forward (as NVIDIA's exptool does) ties the export to one frame's data. The
structure of SpMiddleResNetFHD is fixed and known (det3d's module layout), so we read it: stages in forward
order, inside each stage its convs and residual blocks, then the dense scatter and the reshape to BEV.
Spatial shapes are computed with spconv's output-size formula, so no frame is needed.

Tensor ids: 0 is the graph input (voxel features); every op writes one new tensor id.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.export.scn.fuse import NO_ACT, RELU, FusedBasicBlock, is_sparse_conv

spconv = import_spconv()

# SpMiddleResNetFHD.forward calls its stages in this order.
STAGES = ("conv_input", "conv1", "conv2", "conv3", "conv4", "extra_conv")

__all__ = ["STAGES", "SparseOp", "NotFusedError", "conv_output_shape", "walk_backbone"]


class NotFusedError(ValueError):
    """The backbone still holds a BatchNorm / ReLU module (or something unknown) where a fused conv belongs."""


@dataclass(frozen=True)
class SparseOp:
    """One op of the sparse graph. kind: "conv" | "add" | "relu" | "scatter" | "reshape"."""

    kind: str
    path: str  # module path in the backbone ("conv2.3.conv1"); "" for scatter / reshape
    inputs: tuple[int, ...]  # tensor ids
    output: int  # tensor id
    in_spatial: tuple[int, ...]  # spatial shape [z, y, x] of inputs[0]
    out_spatial: tuple[int, ...]
    in_channels: int
    out_channels: int
    module: nn.Module | None = None
    dense_shape: tuple[int, ...] = ()  # full output shape of scatter / reshape ([1, C, D, H, W] / [1, C*D, H, W])

    @property
    def relu(self) -> bool:
        return self.kind == "conv" and self.module.act_type == RELU


def conv_output_shape(conv: nn.Module, in_spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial output shape of a sparse conv (subm keeps the shape; spconv's formula otherwise)."""
    if conv.subm:
        return tuple(in_spatial)
    if conv.transposed:
        raise NotFusedError("transposed sparse convs are not part of SpMiddleResNetFHD")
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(in_spatial, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    )


class _Walker:
    def __init__(self, sparse_shape, in_channels: int):
        self.ops: list[SparseOp] = []
        self.next_id = 1
        self.tensor, self.spatial, self.channels = 0, tuple(sparse_shape), in_channels

    def _emit(self, kind, path, inputs, out_spatial, out_channels, module=None, dense_shape=()) -> int:
        op = SparseOp(kind, path, tuple(inputs), self.next_id, self.spatial, tuple(out_spatial),
                      self.channels, out_channels, module, tuple(dense_shape))
        self.ops.append(op)
        self.next_id += 1
        self.tensor, self.spatial, self.channels = op.output, op.out_spatial, out_channels
        return op.output

    def conv(self, path: str, conv: nn.Module) -> None:
        if conv.in_channels != self.channels:
            raise NotFusedError(f"{path}: expects {conv.in_channels} input channels, gets {self.channels}")
        if conv.act_type not in (NO_ACT, RELU):
            raise NotFusedError(f"{path}: activation {conv.act_type} is not supported by libspconv's export")
        if conv.bias is None:
            raise NotFusedError(f"{path}: sparse conv without a bias (run fuse_backbone first)")
        self._emit("conv", path, [self.tensor], conv_output_shape(conv, self.spatial), conv.out_channels, conv)

    def block(self, path: str, block: FusedBasicBlock) -> None:
        identity = self.tensor
        self.conv(f"{path}.conv1", block.conv1)
        self.conv(f"{path}.conv2", block.conv2)
        self._emit("add", f"{path}.add", [self.tensor, identity], self.spatial, self.channels, block.add)
        self._emit("relu", f"{path}.relu", [self.tensor], self.spatial, self.channels, block.relu)

    def sequence(self, path: str, seq: nn.Module) -> None:
        for name, child in seq.named_children():
            where = f"{path}.{name}"
            if isinstance(child, nn.Identity):
                continue
            if is_sparse_conv(child):
                self.conv(where, child)
            elif isinstance(child, FusedBasicBlock):
                self.block(where, child)
            else:
                raise NotFusedError(
                    f"{where}: {type(child).__name__} left in the backbone; fuse BN / ReLU into the convs "
                    "first (trt_centerpoint.export.scn.fuse.fuse_backbone)"
                )


def walk_backbone(fused: nn.Module, sparse_shape=None, in_channels: int | None = None) -> list[SparseOp]:
    """Ops of a fused SpMiddleResNetFHD in forward order, ending with scatter (to dense) and reshape (to BEV)."""
    missing = [s for s in STAGES if not isinstance(getattr(fused, s, None), spconv.SparseSequential)]
    if missing:
        raise NotFusedError(f"not an SpMiddleResNetFHD backbone: no SparseSequential stage(s) {', '.join(missing)}")
    shape = list(sparse_shape if sparse_shape is not None else fused.sparse_shape)
    walker = _Walker(shape, int(in_channels if in_channels is not None else fused.in_channels))
    for stage in STAGES:
        walker.sequence(stage, getattr(fused, stage))
    spatial, channels = walker.spatial, walker.channels
    walker._emit("scatter", "", [walker.tensor], spatial, channels, dense_shape=(1, channels, *spatial))
    bev = (1, channels * spatial[0], *spatial[1:])
    walker._emit("reshape", "", [walker.tensor], spatial, channels, dense_shape=bev)
    return walker.ops
