"""SpMiddleResNetFHD: det3d's sparse 3D backbone, with det3d's module names so checkpoints load as they are.

Layout (det3d's SpMiddleResNetFHD): conv_input (SubM) -> conv1 (residual blocks) -> conv2..conv4 (strided sparse
conv + BN + ReLU + residual blocks) -> extra_conv (z-only stride) -> dense -> BEV [B, C * D, H, W].
The channel plan and the number of blocks per stage come from the config.
"""

from __future__ import annotations

import torch
from torch import nn

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.config import ModelConfig

spconv = import_spconv()


class ResidualAdd(nn.Module):
    """The residual addition of a SparseBasicBlock as a module of its own.

    It has no parameters (det3d's state_dict is unchanged); calibration swaps it for a quantized add, and
    because `SparseBasicBlock.forward` calls `self.add`, the swap really takes effect.
    """

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return x + identity


class SparseBasicBlock(spconv.SparseModule):
    """det3d's residual block: SubM3x3 (bias) + BN + ReLU, SubM3x3 (bias) + BN, add identity, ReLU.

    MMDetection3D's block is the same without the conv biases (`bias=False`)."""

    def __init__(self, channels: int, indice_key: str, bn_eps: float, bn_momentum: float, bias: bool = True):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(channels, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(channels, eps=bn_eps, momentum=bn_momentum)
        self.add = ResidualAdd()

    def forward(self, x):
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        out = out.replace_feature(self.relu(self.add(out.features, identity)))
        return out


class SpMiddleResNetFHD(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        b = cfg.backbone
        c1, c2, c3, c4 = b.channels
        self.sparse_shape = cfg.voxel.sparse_shape
        self.in_channels = cfg.voxel.num_point_features

        def bn(c: int) -> nn.BatchNorm1d:
            return nn.BatchNorm1d(c, eps=b.bn_eps, momentum=b.bn_momentum)

        def blocks(c: int, key: str) -> list[nn.Module]:
            return [SparseBasicBlock(c, key, b.bn_eps, b.bn_momentum, b.block_bias) for _ in range(b.blocks_per_stage)]

        def down(cin: int, cout: int, padding) -> list[nn.Module]:
            return [spconv.SparseConv3d(cin, cout, 3, 2, padding=padding, bias=False), bn(cout), nn.ReLU()]

        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(self.in_channels, c1, 3, padding=1, bias=False, indice_key="res0"), bn(c1), nn.ReLU()
        )
        self.conv1 = spconv.SparseSequential(*blocks(c1, "res0"))
        self.conv2 = spconv.SparseSequential(*down(c1, c2, 1), *blocks(c2, "res1"))
        self.conv3 = spconv.SparseSequential(*down(c2, c3, 1), *blocks(c3, "res2"))
        self.conv4 = spconv.SparseSequential(*down(c3, c4, [0, 1, 1]), *blocks(c4, "res3"))
        self.extra_conv = spconv.SparseSequential(
            spconv.SparseConv3d(c4, c4, (3, 1, 1), (2, 1, 1), bias=False), bn(c4), nn.ReLU()
        )

    def forward(self, voxel_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """voxel_features [N, F] float, coords [N, 4] int32 (batch, z, y, x) -> BEV [B, C * D, H, W]."""
        x = spconv.SparseConvTensor(voxel_features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        x = self.extra_conv(x)
        dense = x.dense()  # [B, C, D, H, W]
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)
