"""Helpers for the calibration tests (imported by the test files; pytest puts this folder on sys.path)."""

import torch

from trt_centerpoint.model.centerpoint import CenterPoint


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding BN changes the weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def make_tiny_model(cfg, seed: int = 0) -> CenterPoint:
    torch.manual_seed(seed)
    return randomize_batchnorm(CenterPoint(cfg), seed).eval()


def frame_points(data_dir, num_features=5):
    from trt_centerpoint.calib.calibrate import iter_points, select_calibration_files

    return list(iter_points(select_calibration_files(data_dir), num_features))


def run_model(model, points):
    """Head outputs of one frame, flattened to {task_i.name: tensor}."""
    voxels = model.voxelize([points])
    with torch.no_grad():
        preds = model(voxels.features, voxels.coords, 1)
    return {f"{i}.{k}": v for i, task in enumerate(preds) for k, v in task.items()}
