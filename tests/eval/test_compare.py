"""eval.compare: Polygraphy RunResults files, output comparison, Polygraphy's verdict, per-layer search.

The per-layer test builds two small Conv/Relu graphs by hand; the second has a coarse QuantizeLinear /
DequantizeLinear pair on the second conv's input, so the error must be found entering at that conv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_centerpoint.eval.compare import (
    compare_runs,
    find_first_jump,
    load_run_results,
    per_layer_onnx,
    polygraphy_accuracy,
    save_run_results,
)
from trt_centerpoint.eval.tensor_metrics import tensor_metrics


def _frames(seed: int, n: int = 3, noise: float = 0.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = [{"hm": rng.normal(size=(2, 4, 4)).astype(np.float32),
             "reg": rng.normal(size=(2, 4, 4)).astype(np.float32)} for _ in range(n)]
    if not noise:
        return base
    noisy = np.random.default_rng(seed + 1)
    return [{k: (v + noisy.normal(scale=noise, size=v.shape)).astype(np.float32) for k, v in f.items()} for f in base]


# ------------------------------------------------------------------------------------------- RunResults

def test_save_run_results_round_trip(tmp_path):
    ref, got = _frames(0), _frames(0, noise=0.01)
    path = save_run_results(tmp_path / "outputs.json", {"fp32": ref, "int8": got})
    assert [p.name for p in tmp_path.iterdir()] == ["outputs.json"]  # no temp file left behind

    from polygraphy.comparator import RunResults

    loaded = RunResults.load(str(path))
    assert list(loaded.keys()) == ["fp32", "int8"]
    for runner, frames in (("fp32", ref), ("int8", got)):
        assert len(loaded[runner]) == len(frames)
        for it, frame in zip(loaded[runner], frames):
            assert list(it.keys()) == list(frame)
            for name, arr in frame.items():
                np.testing.assert_array_equal(it[name], arr)
    ours = load_run_results(path)
    np.testing.assert_array_equal(ours["int8"][2]["reg"], got[2]["reg"])


def test_polygraphy_cli_reads_the_file(tmp_path):
    path = save_run_results(tmp_path / "outputs.json", {"fp32": _frames(0, n=1), "int8": _frames(0, n=1)})
    exe = Path(sys.executable).with_name("polygraphy")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "inspect", "data", str(path)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "int8" in proc.stdout + proc.stderr


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    from polygraphy.comparator import RunResults

    def boom(self, path):
        Path(path).write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(RunResults, "save", boom)
    with pytest.raises(OSError):
        save_run_results(tmp_path / "outputs.json", {"fp32": _frames(0, n=1)})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- compare_runs

def test_compare_runs_merges_frames_and_histograms():
    ref, got = _frames(0), _frames(0, noise=0.01)
    got[1]["hm"] = got[1]["hm"] + 1.0  # one bad frame
    out = compare_runs(ref, got, bins=10)
    assert list(out) == ["hm", "reg"]
    per_frame = [tensor_metrics(r["hm"], g["hm"]) for r, g in zip(ref, got)]
    assert out["hm"]["cosine"] == min(m["cosine"] for m in per_frame)
    assert out["hm"]["max_abs"] == max(m["max_abs"] for m in per_frame)
    assert out["hm"]["frames"] == 3 and out["hm"]["numel"] == 3 * 32
    hist = out["hm"]["histogram"]
    assert sum(hist["counts"]) == 3 * 32 and len(hist["edges"]) == 11
    assert out["reg"]["cosine"] > out["hm"]["cosine"]


def test_compare_runs_rejects_mismatches():
    ref = _frames(0)
    with pytest.raises(ValueError, match="frame count"):
        compare_runs(ref, ref[:2])
    with pytest.raises(ValueError, match="reg"):
        compare_runs(ref, [{"hm": f["hm"]} for f in ref])
    with pytest.raises(ValueError, match="'hm'.*shape"):
        compare_runs(ref, [{"hm": f["hm"][:1], "reg": f["reg"]} for f in ref])


def test_polygraphy_accuracy_verdicts():
    ref, got = _frames(0), _frames(0, noise=0.01)
    results = {"fp32": ref, "int8": got}
    loose = polygraphy_accuracy(results, atol=1.0, rtol=0.0)
    assert loose["passed"] and loose["runners"] == ["fp32", "int8"]
    assert loose["outputs"]["hm"] == {**loose["outputs"]["hm"], "passed": True, "frames_passed": 3, "frames": 3}
    tight = polygraphy_accuracy(results, atol=1e-6, rtol=0.0)
    assert not tight["passed"] and tight["outputs"]["reg"]["frames_passed"] == 0
    worst = max(float(np.abs(r["reg"] - g["reg"]).max()) for r, g in zip(ref, got))
    assert tight["outputs"]["reg"]["max_absdiff"] == pytest.approx(worst, rel=1e-5)
    with pytest.raises(ValueError, match="two runners"):
        polygraphy_accuracy({"fp32": ref}, atol=1.0, rtol=0.0)


# ------------------------------------------------------------------------------------------- per layer

def _conv_graph(qdq_scale: float | None):
    """x -> Conv c1 -> Relu r1 -> [Q/DQ] -> Conv c2 -> Relu r2 -> Conv y (same weights either way)."""
    rng = np.random.default_rng(3)
    w = [rng.normal(scale=0.3, size=s).astype(np.float32) for s in ((4, 2, 3, 3), (4, 4, 3, 3), (2, 4, 1, 1))]
    inits = [numpy_helper.from_array(a, f"w{i + 1}") for i, a in enumerate(w)]
    conv2_in = "r1"
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    if qdq_scale is not None:
        inits += [numpy_helper.from_array(np.array(qdq_scale, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["r1", "s", "zp"], ["r1_q"], name="q"),
                  helper.make_node("DequantizeLinear", ["r1_q", "s", "zp"], ["r1_dq"], name="dq")]
        conv2_in = "r1_dq"
    nodes += [helper.make_node("Conv", [conv2_in, "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_per_layer_finds_the_quantized_conv():
    feeds = {"x": np.random.default_rng(4).normal(size=(1, 2, 8, 8)).astype(np.float32)}
    ref, got = _conv_graph(None), _conv_graph(0.25)
    result = per_layer_onnx(ref, got, feeds)
    names = [layer["tensor"] for layer in result["layers"]]
    assert names == ["c1", "r1", "c2", "r2", "y"]  # ref topological order; r1_dq exists only in got
    assert result["layers"][1]["cosine"] == 1.0 and result["layers"][2]["op"] == "Conv"
    assert result["layers"][2]["cosine"] < 1 - 1e-4
    assert result["first_jump"] == "c2"
    assert len(ref.graph.output) == 1 and len(got.graph.output) == 1  # inputs not modified


def test_per_layer_identical_models_have_no_jump():
    feeds = {"x": np.ones((1, 2, 8, 8), np.float32)}
    result = per_layer_onnx(_conv_graph(None), _conv_graph(None), feeds)
    assert result["first_jump"] is None
    assert all(layer["cosine"] == 1.0 for layer in result["layers"])


def test_per_layer_needs_feeds():
    with pytest.raises(ValueError, match="x"):
        per_layer_onnx(_conv_graph(None), _conv_graph(0.25), {})


def test_first_jump_criterion():
    def layers(errs):
        return [{"tensor": f"t{i}", "cosine": 1 - e} for i, e in enumerate(errs)]

    assert find_first_jump(layers([0, 0, 1e-3, 2e-3, 5e-3])) == "t2"  # inherited error is not a new jump
    assert find_first_jump(layers([1e-6, 5e-6, 2e-5, 8e-5, 3e-4, 9e-4])) is None  # gradual: no single cause
    assert find_first_jump(layers([0, 1e-5, 1e-3])) == "t2"  # 100x over the worst before it
    assert find_first_jump(layers([0, 5e-5, 0])) is None  # below the visibility threshold
    assert find_first_jump(layers([0, 1e-3, 1e-4, 2e-2])) == "t1"


def test_run_results_fit_the_budget_whole_frames_or_a_central_window(tmp_path):
    from trt_centerpoint.eval.compare import fit_run_results, load_run_results, save_run_results

    rng = np.random.default_rng(0)
    frames = [{"hm": rng.random((1, 2, 100, 100), dtype=np.float32),
               "reg": rng.random((1, 2, 100, 100), dtype=np.float32)} for _ in range(3)]
    results = {"onnxrt-fp32": frames, "onnxrt-int8": [{k: v + 1 for k, v in f.items()} for f in frames]}
    kept, note = fit_run_results(results, budget_mb=1.5)  # one frame of both runners: about 0.43 MB
    assert note["frames"] == 3 and note["crop"] is None and len(kept["onnxrt-int8"]) == 3
    kept, note = fit_run_results(results, budget_mb=0.5)
    assert note["frames"] == 1 and note["crop"] is None
    kept, note = fit_run_results(results, budget_mb=0.1)  # not even one frame: its central window
    y0, y1, x0, x1 = note["crop"]
    assert note["frames"] == 1 and 0 < y1 - y0 < 100 and y0 == (100 - (y1 - y0)) // 2 and (y0, y1) == (x0, x1)
    path = save_run_results(tmp_path / "r.json", kept)
    assert path.stat().st_size <= 0.1e6
    loaded = load_run_results(path)  # Polygraphy reads it back: the window, bit-exact
    np.testing.assert_array_equal(loaded["onnxrt-int8"][0]["hm"], results["onnxrt-int8"][0]["hm"][..., y0:y1, x0:x1])


def test_per_layer_in_segments_matches_one_run():
    """Fetched one tensor per group (each a segment of the graph fed the tensors before it), the figures are
    those of a single run with every tensor marked."""
    feeds = {"x": np.random.default_rng(5).normal(size=(1, 2, 8, 8)).astype(np.float32)}
    whole = per_layer_onnx(_conv_graph(None), _conv_graph(0.25), feeds, memory_mb=1024)
    pieces = per_layer_onnx(_conv_graph(None), _conv_graph(0.25), feeds, memory_mb=1e-9)
    assert pieces == whole
