"""Fold BatchNorm into the conv before it (sparse convs, Conv2d, ConvTranspose2d), before quantization.

Why: TensorRT and libspconv run conv + BN as one conv, so the weights that get quantized must be the
folded ones; calibrating the unfused weights would give scales for tensors that never exist at
deployment. In eval mode BN(conv(x)) = conv'(x) with, per output channel c,
``w'[c] = w[c] * g[c]``, ``b'[c] = (b[c] - mean[c]) * g[c] + beta[c]``, ``g = gamma / sqrt(var + eps)``
(computed in float64, stored in the weight's dtype). The BN becomes ``nn.Identity`` (module paths are
kept), and a conv without a bias gets one.

Pairs found: consecutive children of ``nn.Sequential`` / ``SparseSequential`` (``conv, BN``), and the
``convK`` / ``bnK`` children of a residual block (``SparseBasicBlock``).
"""

from __future__ import annotations

import torch
from torch import nn

from trt_centerpoint._compat.spconv import import_spconv

spconv = import_spconv()

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _out_axis(conv: nn.Module) -> int:
    """The weight axis of the output channels."""
    if isinstance(conv, spconv.conv.SparseConvolution):
        if not getattr(spconv.conv, "ALL_WEIGHT_IS_KRSC", True):
            raise NotImplementedError("BN folding needs spconv's [out, kz, ky, kx, in] weight layout (spconv 2.x)")
        return 0
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        if conv.groups != 1:
            raise NotImplementedError("BN folding into a grouped ConvTranspose is not supported")
        return 1  # [C_in, C_out, kh, kw]
    if isinstance(conv, nn.modules.conv._ConvNd):
        return 0
    raise TypeError(f"cannot fold BatchNorm into {type(conv).__name__}")


def _is_foldable(conv: nn.Module) -> bool:
    return isinstance(conv, (spconv.conv.SparseConvolution, nn.modules.conv._ConvNd))


@torch.no_grad()
def fold_bn(conv: nn.Module, bn: nn.Module) -> None:
    """conv <- BN(conv) in eval-mode semantics (running statistics), in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    quantizer = getattr(conv, "_weight_quantizer", None)
    if quantizer is not None and getattr(quantizer, "amax", None) is not None:
        raise ValueError("fold BatchNorm before calibration: this conv's weight amax is already set")
    axis = _out_axis(conv)
    weight = conv.weight
    if weight.shape[axis] != bn.num_features:
        raise ValueError(f"conv has {weight.shape[axis]} output channels, BatchNorm {bn.num_features}")
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    shape = [1] * weight.dim()
    shape[axis] = -1
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
    bias = (bias - bn.running_mean.double()) * scale + beta
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv child, BN child) names to fold inside `module`."""
    children = list(module.named_children())
    pairs = []
    if isinstance(module, (nn.Sequential, spconv.SparseSequential)):
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if _is_foldable(conv) and isinstance(bn, _BN):
                pairs.append((conv_name, bn_name))
        return pairs
    named = dict(children)
    for name, child in children:
        if name.startswith("conv") and _is_foldable(child):
            bn_name = "bn" + name[len("conv"):]
            if isinstance(named.get(bn_name), _BN):
                pairs.append((name, bn_name))
    return pairs


def fuse_bn(model: nn.Module) -> list[str]:
    """Fold every conv -> BN pair of `model` in place; returns the paths of the folded convs."""
    fused = []
    for name, module in list(model.named_modules()):
        for conv_name, bn_name in _pairs(module):
            fold_bn(getattr(module, conv_name), getattr(module, bn_name))
            module._modules[bn_name] = nn.Identity()
            fused.append(f"{name}.{conv_name}" if name else conv_name)
    return fused


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN) for m in model.modules())
