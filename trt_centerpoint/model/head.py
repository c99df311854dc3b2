"""det3d's CenterHead: a shared 3x3 conv, then one SepHead per task (class group).

Each SepHead output ("reg", "height", "dim", "rot", "vel", "hm") is conv3x3 + BN + ReLU + conv3x3, indexed
.0 / .1 / .3 as in det3d (MMDetection3D's first convs have no bias: `head.conv_bias`). The forward returns
one dict per task, keys in that order, which is also the order of CUDA-CenterPoint's ONNX outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from trt_centerpoint.config import ModelConfig


class SepHead(nn.Module):
    def __init__(self, in_channels: int, heads: dict[str, int], head_conv: int, final_kernel: int, init_bias: float,
                 conv_bias: bool = True):
        super().__init__()
        self.names = list(heads)
        pad = final_kernel // 2
        for name, out_channels in heads.items():
            branch = nn.Sequential(
                nn.Conv2d(in_channels, head_conv, final_kernel, padding=pad, bias=conv_bias),
                nn.BatchNorm2d(head_conv),
                nn.ReLU(),
                nn.Conv2d(head_conv, out_channels, final_kernel, padding=pad, bias=True),
            )
            if name == "hm":
                nn.init.constant_(branch[-1].bias, init_bias)
            else:
                for m in branch:
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class CenterHead(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        h = cfg.head
        self.shared_conv = nn.Sequential(
            nn.Conv2d(in_channels, h.share_conv_channel, 3, padding=1, bias=h.conv_bias),
            nn.BatchNorm2d(h.share_conv_channel),
            nn.ReLU(),
        )
        self.tasks = nn.ModuleList(
            SepHead(
                h.share_conv_channel, {**h.common_heads, "hm": len(names)}, h.head_conv, h.final_kernel, h.init_bias,
                h.conv_bias,
            )
            for names in h.tasks
        )

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(x)
        return [task(x) for task in self.tasks]
