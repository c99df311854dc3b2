"""`--backend libspconv`: what it refuses here, and the libspconv-beside-reference comparison driven against
the stand-in CUDA runtime (no kernel runs there, so the library's output is zeros: the comparison must see the
difference at once and the bisection must name the first layer)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from spconv_helpers import release_dir

from trt_centerpoint.config import load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.export.head.export import export_rpn_head
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.runtime.libspconv.beside import libspconv_beside_reference
from trt_centerpoint.runtime.libspconv.locate import ENV_LIBSPCONV
from trt_centerpoint.runtime.libspconv.runner import LibspconvBackbone, input_grid
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.onnxrt import OnnxHead
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline
from trt_centerpoint.stages.compare import compare_outputs


def test_the_backend_needs_a_folder_and_a_gpu(scn_files, monkeypatch, native_cache):
    cfg = load_config("synthetic_small")
    monkeypatch.delenv(ENV_LIBSPCONV, raising=False)
    with pytest.raises(UserError, match="--backend libspconv needs --libspconv DIR"):
        make_pipeline(cfg, "libspconv", "fp32", artifacts=scn_files["fp16"].parent)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the backend runs (the device check covers it)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(native_cache / "backend"))
    monkeypatch.setenv(ENV_LIBSPCONV, str(release_dir("1.1.10")))
    with pytest.raises(UserError, match="runs NVIDIA's kernels and needs a GPU; none here"):
        make_pipeline(cfg, "libspconv", "fp32", artifacts=scn_files["fp16"].parent)


def test_beside_reference_finds_the_first_layer_against_the_stand_in(sample_model, native_cache, tmp_path):
    """On a 33 x 64 x 64 grid (the sample's is 33 x 320 x 320): the bisection densifies early layers whole."""
    spconv = open_libspconv(release_dir("1.1.10"), cache=native_cache, host_side=True)
    model = export_scn(fuse_backbone(sample_model.backbone), sparse_shape=(33, 64, 64)).model
    path = tmp_path / "scn.fp16.onnx"
    onnx.save(model, str(path))
    z, y, x = input_grid(model)
    gen = np.random.default_rng(3)
    coords = np.unique(np.stack([np.zeros(300), gen.integers(0, z, 300), gen.integers(0, y, 300),
                                 gen.integers(0, x, 300)], 1).astype(np.int32), axis=0)
    features = torch.from_numpy(gen.standard_normal((len(coords), 5)).astype(np.float16).astype(np.float32))
    record = libspconv_beside_reference(path, spconv, features, torch.from_numpy(coords))
    assert record["relative_error"] == pytest.approx(1.0) and record["where"].startswith("host-side")
    assert record["first_difference"]["node"] == "conv0"


def test_compare_runs_libspconv_pipelines(scn_files, sample_model, native_cache, tmp_path):
    """`compare`'s frame loop on libspconv pipelines (host-side: zeros); the beside-reference step is the test
    above (a full-size grid makes its bisection slow on a CPU)."""
    cfg = load_config("synthetic_small")
    spconv = open_libspconv(release_dir("1.1.10"), cache=native_cache, host_side=True)
    head = tmp_path / "rpn_head.fp32.onnx"
    onnx.save(export_rpn_head(sample_model, cfg).model, str(head))
    pipes = {p: Pipeline(cfg, LibspconvBackbone(scn_files[{"fp32": "fp16", "int8": "int8"}[p]], spconv),
                         OnnxHead(head), f"libspconv/{p}") for p in ("fp32", "int8")}
    points = np.zeros((200, 5), np.float32)
    gen = np.random.default_rng(4)
    points[:, :3] = gen.uniform([-30, -30, -2], [30, 30, 1], (200, 3))
    outs, dets, overflows = compare_outputs(cfg, pipes, [points], progress=False, headroom={})
    assert overflows == {} and set(outs) == {"fp32", "int8"} and outs["fp32"][0] is not None
    for pipe in pipes.values():
        pipe.close()
        assert pipe.backbone._server is None
