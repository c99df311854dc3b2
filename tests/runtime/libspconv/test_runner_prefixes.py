"""The libspconv backbone runner (driven host-side: plumbing and shapes, no kernel) and the prefix bisection
that finds the first layer where two executors part, checked with our reference runner on both sides."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from spconv_helpers import release_dir

from trt_centerpoint.export.lint import lint_model
from trt_centerpoint.runtime.libspconv.engine import build_engine
from trt_centerpoint.runtime.libspconv.prefixes import cut_points, first_difference, prefix_model
from trt_centerpoint.runtime.libspconv.runner import LibspconvBackbone, input_grid
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.scn_runner import ScnRunner


def _voxels(model, count=400, seed=0):
    z, y, x = input_grid(model)
    gen = np.random.default_rng(seed)
    coords = np.stack([np.zeros(count), gen.integers(0, z, count), gen.integers(0, y, count),
                       gen.integers(0, x, count)], 1).astype(np.int32)
    coords = np.unique(coords, axis=0)
    features = gen.standard_normal((len(coords), 5)).astype(np.float16)
    return torch.from_numpy(features.astype(np.float32)), torch.from_numpy(coords)


def _reference(features, coords):
    return lambda model: ScnRunner(model, precision="fp32").run(features, coords).numpy()


def test_prefixes_are_valid_scn_files_and_the_last_one_is_the_network(tiny_scn):
    model = tiny_scn
    cuts = cut_points(model)
    assert [c.node for c in cuts][:4] == ["conv0", "conv1", "conv2", "add0"] and cuts[-1].node == "conv12"
    for cut in (cuts[0], cuts[5], cuts[-1]):
        assert lint_model(prefix_model(model, cut)) == []
    features, coords = _voxels(model)
    full = ScnRunner(model, precision="fp32").run(features, coords).numpy()
    last = _reference(features, coords)(prefix_model(model, cuts[-1]))
    np.testing.assert_array_equal(last, full)  # the same layers in the same order: bit-identical


@pytest.mark.parametrize("broken", ["conv0", "conv5", "add2", "conv12"])
def test_first_difference_finds_the_perturbed_layer(tiny_scn, broken):
    """The candidate is the reference runner on prefixes where one layer computes something else (a conv's
    weights scaled, or an add's second input ignored): the search must name exactly that layer. Both sides are
    the same float32 executor, so unchanged prefixes agree exactly (error 0); the random-init network's biases
    damp a change to about 1 % at the output, hence a relative tolerance of 1e-3."""
    model = tiny_scn
    features, coords = _voxels(model, seed=1)
    reference = _reference(features, coords)

    def candidate(prefix):
        changed = copy.deepcopy(prefix)
        node = next((n for n in changed.graph.node if n.name == broken), None)
        if node is not None and node.op_type == "SparseConvolution":
            weight = next(t for t in changed.graph.initializer if t.name == node.input[1])
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float16(1.5), weight.name))
        elif node is not None:
            node.input[1] = node.input[0]  # x + x instead of x + residual
        return reference(changed)

    found = first_difference(model, reference, candidate, tolerance=1e-3)
    assert found.cut is not None and found.cut.node == broken and found.error > 1e-3
    assert found.runs <= int(np.ceil(np.log2(len(cut_points(model))))) + 1
    assert first_difference(model, reference, reference, tolerance=0.0).cut is None


def test_libspconv_builds_a_prefix_host_side(scn_files, native_cache):
    spconv = open_libspconv(release_dir("1.1.10"), cache=native_cache, host_side=True)
    model = onnx.load(str(scn_files["int8"]))
    cut = cut_points(model)[7]
    path = native_cache.parent / "prefix.onnx"
    onnx.save(prefix_model(model, cut), str(path))
    built = build_engine(spconv.library, spconv.native, path, host_side=True)
    assert built.errors == [] and built.nodes is not None


@pytest.mark.parametrize("version", ["1.0.1", "1.1.10"])
def test_the_runner_host_side(version, scn_files, native_cache):
    """Host-side the library builds and 'runs' with no kernel: the output is zeros of the declared shape (the
    plumbing of inputs, grid and output works; other INT8 files can die there with SIGFPE, a count no kernel
    wrote dividing)."""
    spconv = open_libspconv(release_dir(version), cache=native_cache, host_side=True)
    model = onnx.load(str(scn_files["fp16"]))
    features, coords = _voxels(model)
    runner = LibspconvBackbone(scn_files["fp16"], spconv)
    bev = runner.run(features, coords)
    expected = [int(d.dim_value) for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert list(bev.shape) == expected and bev.dtype == torch.float32 and not bev.any()
    child = runner._server.child  # one child serves every frame: the engine is built once
    assert runner.run(features[:100], coords[:100]).shape == bev.shape and runner._server.child is child
    assert any("Node size" in m for m in runner.build_messages)
    runner.close()
    assert child.poll() == 0
    int8 = LibspconvBackbone(scn_files["int8"], spconv)
    assert not int8.run(features, coords).any()
    int8.close()
