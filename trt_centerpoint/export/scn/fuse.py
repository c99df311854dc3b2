"""Fold BatchNorm into the sparse convs and fuse the ReLU after a conv into the conv's activation.

Why: libspconv takes a conv's ReLU only as its `activation` attribute (it rejects a Relu node after a
SparseConvolution), and it has no BatchNorm op. After `fuse_backbone`:

- every sparse conv has a bias (BN folded in; a conv that had none gets one),
- `[conv, BN, ReLU]` in a `SparseSequential` becomes `[conv(act=ReLU), Identity, Identity]`: the
  Identities keep the module paths (`conv2.0`, `conv2.3.conv1`, `conv2.3.add`) equal to the unfused
  model's, so calibration ranges keyed by module path still find their layer;
- a residual block becomes a `FusedBasicBlock`: conv1(act=ReLU) -> conv2 -> add(out, identity) -> ReLU;
  the ReLU after the Add is the only one that stays a module (and a `Relu` node in the ONNX).

The fused model is for inference only (spconv asserts in training mode when `act_type` is set).
BN folding is calibration's `trt_centerpoint.quant.fuse_bn.fuse_bn` (BN -> Identity, paths kept), so the
float and the INT8 exports fold BN the same way; this module adds the ReLU fusion on top.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.quant.fuse_bn import fuse_bn, has_batchnorm

spconv = import_spconv()
from cumm import tensorview as tv  # noqa: E402  (installed with spconv)

RELU = tv.gemm.Activation.ReLU
NO_ACT = tv.gemm.Activation.None_

__all__ = ["FusedBasicBlock", "fuse_backbone", "fusion_summary", "is_sparse_conv", "RELU", "NO_ACT"]


def is_sparse_conv(module: nn.Module) -> bool:
    """True for spconv's SparseConvolution and its subclasses (quantized convs included)."""
    return isinstance(module, spconv.conv.SparseConvolution)


def _ensure_bias(conv: nn.Module) -> None:
    """libspconv's parser reads a bias for every conv: give a bias-free conv a zero one."""
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))


def _set_relu(conv: nn.Module) -> None:
    if conv.act_type not in (NO_ACT, RELU):
        raise ValueError(f"conv already has activation {conv.act_type}; cannot fuse a ReLU after it")
    conv.act_type = RELU


class FusedBasicBlock(spconv.SparseModule):
    """SparseBasicBlock after fusion: conv1 (BN + ReLU folded in), conv2 (BN folded), add, ReLU.

    `add` is the block's own add module (a plain `ResidualAdd` or calibration's quantized add), kept so
    an INT8 export can read its ranges under the same module path.
    """

    def __init__(self, conv1: nn.Module, conv2: nn.Module, add: nn.Module):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.add = add
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x.features
        out = self.conv2(self.conv1(x))
        return out.replace_feature(self.relu(self.add(out.features, identity)))


def _is_basic_block(module: nn.Module) -> bool:
    names = set(dict(module.named_children()))
    return {"conv1", "bn1", "conv2", "bn2", "add"} <= names and is_sparse_conv(module.conv1)


def _fuse_block(block: nn.Module) -> FusedBasicBlock:
    conv1, conv2 = block.conv1, block.conv2
    for conv, bn in ((conv1, block.bn1), (conv2, block.bn2)):
        if not isinstance(bn, nn.Identity):
            raise ValueError(f"residual block: BatchNorm not folded (found {type(bn).__name__} after a conv)")
        _ensure_bias(conv)
    _set_relu(conv1)
    return FusedBasicBlock(conv1, conv2, block.add)


def _fuse_sequential(seq: nn.Module) -> None:
    """In place: conv [Identity...] ReLU -> conv(act=ReLU) + Identity; residual blocks -> FusedBasicBlock."""
    children = list(seq._modules.items())
    i = 0
    while i < len(children):
        name, module = children[i]
        if _is_basic_block(module):
            seq._modules[name] = _fuse_block(module)
        elif is_sparse_conv(module):
            j = i + 1
            while j < len(children) and isinstance(children[j][1], nn.Identity):
                j += 1
            if j < len(children) and isinstance(children[j][1], nn.ReLU):
                _set_relu(module)
                seq._modules[children[j][0]] = nn.Identity()
                j += 1
            _ensure_bias(module)
            i = j
            continue
        i += 1


def fuse_backbone(backbone: nn.Module) -> nn.Module:
    """A fused copy of `backbone` (the input is not modified), in eval mode.

    Works on the float `SpMiddleResNetFHD` and on any module tree of `SparseSequential`s holding sparse
    convs, BN, ReLU and residual blocks (e.g. a calibrated copy whose BN is already folded).
    """
    fused = copy.deepcopy(backbone).eval()
    fuse_bn(fused)
    if has_batchnorm(fused):
        raise ValueError("a BatchNorm is left after BN folding (not directly after a conv)")
    for module in list(fused.modules()):
        if isinstance(module, spconv.SparseSequential):
            _fuse_sequential(module)
    return fused


def fusion_summary(original: nn.Module, fused: nn.Module) -> str:
    """One line for the export log: what folding and fusion changed."""
    bns = sum(isinstance(m, nn.BatchNorm1d) for m in original.modules())
    convs = [m for m in fused.modules() if is_sparse_conv(m)]
    relu_convs = sum(m.act_type == RELU for m in convs)
    kept = sum(isinstance(m, FusedBasicBlock) for m in fused.modules())
    folded = (f"{bns} BatchNorm folded into {len(convs)} sparse convs" if bns else
              f"BatchNorm already folded into the {len(convs)} sparse convs (a `ptq` / `qat` checkpoint)")
    return f"fuse_bn_relu: {folded}, {relu_convs} ReLU fused into conv activations, {kept} ReLU kept after residual Add"
