"""det3d's RPN neck: one downsampling conv block per level, one upsampling block per level, Concat.

Module indices follow det3d (`blocks.i`: .0 ZeroPad2d, .1 conv, .2 BN, .3 ReLU, then conv/BN/ReLU triples;
`deblocks.i`: .0 ConvTranspose2d when the upsample stride is > 1, else a strided Conv2d), so a det3d
checkpoint's `neck.*` keys load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from trt_centerpoint.config import ModelConfig


class Concat(nn.Module):
    """Channel concatenation as a module, so calibration can give all its inputs one shared scale."""

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors, dim=1)


class RPN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.neck

        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=n.bn_eps, momentum=n.bn_momentum)

        self.upsample_start = len(n.layer_nums) - len(n.us_layer_strides)
        in_filters = [cfg.bev_channels, *n.ds_num_filters[:-1]]
        blocks, deblocks = [], []
        for i, (num, stride, planes) in enumerate(zip(n.layer_nums, n.ds_layer_strides, n.ds_num_filters)):
            layers: list[nn.Module] = [
                nn.ZeroPad2d(1),
                nn.Conv2d(in_filters[i], planes, 3, stride=stride, bias=False),
                bn(planes),
                nn.ReLU(),
            ]
            for _ in range(num):
                layers += [nn.Conv2d(planes, planes, 3, padding=1, bias=False), bn(planes), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
            j = i - self.upsample_start
            if j >= 0:
                up_stride, up_filters = n.us_layer_strides[j], n.us_num_filters[j]
                if up_stride > 1:
                    up = nn.ConvTranspose2d(planes, up_filters, up_stride, stride=up_stride, bias=False)
                else:
                    k = int(round(1 / up_stride))
                    up = nn.Conv2d(planes, up_filters, k, stride=k, bias=False)
                deblocks.append(nn.Sequential(up, bn(up_filters), nn.ReLU()))
        self.blocks = nn.ModuleList(blocks)
        self.deblocks = nn.ModuleList(deblocks)
        self.concat = Concat()
        self.out_channels = sum(n.us_num_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ups = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= self.upsample_start:
                ups.append(self.deblocks[i - self.upsample_start](x))
        return self.concat(ups)
