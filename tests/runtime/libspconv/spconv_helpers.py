"""Helpers of the libspconv tests: where NVIDIA's releases are (or the skip), INT8 specs set by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trt_centerpoint.export.scn.spec import AddQuant, ConvQuant
from trt_centerpoint.export.scn.walk import walk_backbone

ENV = "TRT_CENTERPOINT_TEST_LIBSPCONV"
RELEASES = {"1.0.1": "1.0.1", "1.1.10": "1.1.10-cuda12.6"}
FP16_LAYERS = ("conv_input", "conv1.0.")  # the default PTQ skip list's layers


def release_dir(version: str) -> Path:
    root = os.environ.get(ENV)
    if not root:
        pytest.skip(f"${ENV} is not set (.ci/run sets it when ../shared/libspconv is next to the checkout)")
    folder = Path(root) / RELEASES[version]
    if not (folder / "lib" / "libspconv.so").is_file():
        pytest.skip(f"{folder}: no libspconv {version} there")
    return folder



def int8_specs(fused, fp16_layers=FP16_LAYERS, amax: float = 4.0) -> dict:
    specs = {}
    for op in walk_backbone(fused):
        int8 = not op.path.startswith(fp16_layers)
        precision = "int8" if int8 else "fp16"
        if op.kind == "conv":
            weight = op.module.weight.detach()
            per_channel = weight.abs().reshape(weight.shape[0], -1).amax(1)
            specs[op.path] = ConvQuant(amax if int8 else None, tuple(per_channel.tolist()) if int8 else None,
                                       precision, "fp16")
        elif op.kind == "add":
            specs[op.path] = AddQuant(amax if int8 else None, amax if int8 else None, precision, "fp16")
    return specs
