"""Shared fixtures for the exporter tests: the tiny model with non-trivial BatchNorm statistics and two
generated frames (voxelized), so BN folding and the exported numbers are really exercised."""

import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.data.points import iter_frames
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.model.centerpoint import CenterPoint


def randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Running statistics and affine parameters away from (0, 1): folding them must matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.4)
    return model


@pytest.fixture(scope="session")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def model(cfg):
    torch.manual_seed(0)
    return randomize_bn(CenterPoint(cfg), seed=1).eval()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, cfg):
    out = tmp_path_factory.mktemp("exporter_frames")
    write_dataset(out, frames=2, seed=11, config=cfg, progress=False, sensor=SensorConfig(beams=16, num_sweeps=1))
    return out


@pytest.fixture(scope="session")
def frames(model, cfg, data_dir):
    """[(features [N, 5], coords [N, 4] int32)] of the generated frames."""
    out = []
    for _, points, _ in iter_frames(data_dir, cfg.voxel.num_point_features):
        voxels = model.voxelize([torch.from_numpy(points)])
        out.append((voxels.features, voxels.coords))
    assert all(len(f) > 500 for f, _ in out)
    return out


@pytest.fixture(scope="session")
def qmodel(model, cfg, data_dir):
    """The tiny model with BN folded, quantized (default skip list) and calibrated (mse) on the frames."""
    import copy

    from trt_centerpoint.quant.calibrate import calibrate, iter_points, select_calibration_files
    from trt_centerpoint.quant.ptq import prepare_model
    from trt_centerpoint.quant.quantize import DEFAULT_SKIP

    quantized, _ = prepare_model(cfg, DEFAULT_SKIP, "histogram", True, model=copy.deepcopy(model))
    files = select_calibration_files(data_dir)
    calibrate(quantized, iter_points(files, cfg.voxel.num_point_features), method="mse", progress=False)
    return quantized.eval()


@pytest.fixture(scope="module")
def scn(model):
    """The tiny model's scn file (libspconv dialect) in memory, for the lint tests to break."""
    return export_scn(fuse_backbone(model.backbone), max_voxels=20000).model
