"""NVIDIA's libspconv releases for the tests, the compiled-caller cache, and real exported scn files.

The releases come from $TRT_CENTERPOINT_TEST_LIBSPCONV (a folder holding `1.0.1/` and `1.1.10-cuda12.6/`, as
`.ci/run` sets it); tests that need them are skipped with the reason where it is unset or absent. Compiling our
caller takes seconds per release: one cache for the whole session. The scn files are written by our exporter
from the `synthetic_small` model (16 input channels: the tiny config's 8 have no kernel in libspconv, see
test_check_libspconv.py); the INT8 file is calibrated on one generated frame, as `ptq` + `export` make it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from spconv_helpers import RELEASES, release_dir

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.quant import scn_quant_specs
from trt_centerpoint.export.scn.walk import walk_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.quant.calibrate import calibrate, iter_points, select_calibration_files
from trt_centerpoint.quant.ptq import prepare_model
from trt_centerpoint.quant.quantize import DEFAULT_SKIP


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("libspconv_cache")


@pytest.fixture(params=sorted(RELEASES))
def release(request) -> Path:
    return release_dir(request.param)


@pytest.fixture(scope="session")
def sample_model():
    torch.manual_seed(0)
    return CenterPoint(load_config("synthetic_small")).eval()


@pytest.fixture(scope="session")
def scn_files(tmp_path_factory, sample_model) -> dict[str, Path]:
    """{"fp16": scn.fp16.onnx, "int8": scn.int8.onnx} of the synthetic_small model, the INT8 file as `ptq` +
    `export` make it (default skip list, calibrated with "max" on one generated frame)."""
    out = tmp_path_factory.mktemp("scn_sample")
    cfg = load_config("synthetic_small")
    write_dataset(out / "frames", frames=1, seed=2, config=cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    quantized, _ = prepare_model(cfg, DEFAULT_SKIP, "max", True, model=copy.deepcopy(sample_model))
    calibrate(quantized, iter_points(select_calibration_files(out / "frames"), cfg.voxel.num_point_features),
              method="max", progress=False)
    fused_q = fuse_backbone(quantized.eval().backbone)
    files = {"fp16": out / "scn.fp16.onnx", "int8": out / "scn.int8.onnx"}
    onnx.save(export_scn(fuse_backbone(sample_model.backbone)).model, str(files["fp16"]))
    onnx.save(export_scn(fused_q, quant=scn_quant_specs(walk_backbone(fused_q))).model, str(files["int8"]))
    return files


@pytest.fixture(scope="session")
def tiny_scn(tmp_path_factory) -> onnx.ModelProto:
    """The tiny config's FP16 scn model: small dense prefixes, for tests that run only our reference runner."""
    torch.manual_seed(0)
    return export_scn(fuse_backbone(CenterPoint(load_config("tiny")).eval().backbone)).model
