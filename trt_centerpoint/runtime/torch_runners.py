"""The PyTorch model's two parts as runners: FP32, or fake-quant INT8 for a quantized model."""

from __future__ import annotations

import numpy as np
import torch
from polygraphy.common import TensorMetadata
from torch import nn

from trt_centerpoint._compat.polygraphy import PytorchRunner
from trt_centerpoint.export.head.export import RPN_HEAD_INPUT, RpnHeadModule, bev_input_shape, rpn_head_output_names

__all__ = ["TorchBackbone", "TorchHead"]


class TorchBackbone:
    """The model's sparse backbone (PyTorch + spconv), a `BackboneRunner`."""

    def __init__(self, model: nn.Module):
        self.model, self.name = model, "torch"

    @torch.no_grad()
    def run(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(features, coords, 1).float()


class TorchHead(PytorchRunner):
    """The model's neck + head as a Polygraphy PyTorch runner (on the device of its parameters), a `HeadRunner`."""

    def __init__(self, model: nn.Module):
        module = RpnHeadModule(model).eval()
        inputs = TensorMetadata().add(RPN_HEAD_INPUT, np.float32, bev_input_shape(model.cfg))
        # a loader, not the module: Polygraphy would call a callable model to load it
        super().__init__(lambda: module, inputs, rpn_head_output_names(model), name="torch")
        self.module = module
