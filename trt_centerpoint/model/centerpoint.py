"""The CenterPoint wrapper: det3d's VoxelNet (backbone, neck, bbox_head) plus voxelization and decoding.

The parameter-free mean voxel feature (det3d's VoxelFeatureExtractorV3) is computed by the voxelizer, so
the module tree holds exactly det3d's `backbone.*`, `neck.*` and `bbox_head.*` state.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trt_centerpoint.config import ModelConfig
from trt_centerpoint.model.backbone import SpMiddleResNetFHD
from trt_centerpoint.model.checkpoint import load_checkpoint
from trt_centerpoint.model.decode import Detections, decode
from trt_centerpoint.model.head import CenterHead
from trt_centerpoint.model.rpn import RPN
from trt_centerpoint.model.voxelizer import Voxelizer, collate


class CenterPoint(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = SpMiddleResNetFHD(cfg)
        self.neck = RPN(cfg)
        self.bbox_head = CenterHead(cfg, self.neck.out_channels)
        self.voxelizer = Voxelizer(cfg.voxel)

    def forward(
        self, voxel_features: torch.Tensor, coords: torch.Tensor, batch_size: int
    ) -> list[dict[str, torch.Tensor]]:
        """Voxels -> per-task head outputs (raw: hm logits, log dims, sin/cos)."""
        bev = self.backbone(voxel_features, coords, batch_size)
        return self.bbox_head(self.neck(bev))

    def head_from_bev(self, bev: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The 2D part alone (RPN + head), the piece exported as rpn_head.onnx."""
        return self.bbox_head(self.neck(bev))

    def voxelize(self, frames: list[torch.Tensor], training: bool | None = None):
        """Point clouds [N, F] -> one collated voxel batch (coords carry the batch index); `training` (default: the
        module's mode) picks the voxel cap, `max_voxels_train` or the deployed `max_voxels`."""
        training = self.training if training is None else training
        return collate([self.voxelizer(points, training=training) for points in frames])

    @torch.no_grad()
    def detect(self, frames: list[torch.Tensor]) -> list[Detections]:
        """Point clouds -> decoded, NMS-filtered detections, one `Detections` per frame."""
        device = next(self.parameters()).device
        voxels = self.voxelize([torch.as_tensor(p, dtype=torch.float32) for p in frames])
        if voxels.num_voxels == 0:  # nothing in range: spconv cannot run on an empty tensor
            return [Detections.empty(self.cfg.class_names, device) for _ in frames]
        preds = self(voxels.features.to(device), voxels.coords.to(device), len(frames))
        return decode(preds, self.cfg)


def load_model(cfg: ModelConfig, checkpoint: str | Path | None = None, device: str = "cpu") -> CenterPoint:
    """Build the model for `cfg`, load a det3d-layout checkpoint if given, eval mode on `device`."""
    model = CenterPoint(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval().to(device)
