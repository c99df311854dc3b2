"""Shared fixtures for the calibration tests: the tiny config and a few generated frames for it."""

import pytest

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_cfg):
    """Three labeled frames (points/, labels/) for the tiny config."""
    out = tmp_path_factory.mktemp("calib_frames")
    write_dataset(out, frames=3, seed=21, config=tiny_cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    return out
