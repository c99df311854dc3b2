"""Output-by-output and layer-by-layer comparison of a reference run (FP32) with a run under test (INT8).

Why Polygraphy's formats: the saved outputs are a Polygraphy ``RunResults`` JSON, so anyone can open them
with ``polygraphy inspect data`` or re-check them with ``polygraphy run --load-outputs``, without this
project. Our own figures (cosine, SNR, ...) come from `trt_centerpoint.eval.tensor_metrics`; Polygraphy's
``compare_accuracy`` verdict is reported next to them as the familiar atol/rtol check.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from trt_centerpoint.eval import tensor_metrics as tm
from trt_centerpoint.fileio import atomic_path

__all__ = ["compare_runs", "find_first_jump", "load_run_results", "per_layer_onnx", "polygraphy_accuracy",
           "save_run_results", "to_run_results"]

Frames = list[dict[str, np.ndarray]]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


# ---------------------------------------------------------------------------------------- RunResults files

def to_run_results(results: Mapping[str, Frames]):
    """{runner name: [frame outputs]} -> Polygraphy ``RunResults`` (one ``IterationResult`` per frame)."""
    from polygraphy.comparator import IterationResult, RunResults

    run_results = RunResults()
    for runner, frames in results.items():
        run_results[runner] = [IterationResult({k: np.asarray(v) for k, v in frame.items()}, runner_name=runner)
                               for frame in frames]
    return run_results


def _polygraphy_logger():
    """Polygraphy's logger, without its one-time "[W] 'colored' module is not installed" print."""
    import importlib.util

    from polygraphy.logger import G_LOGGER

    if importlib.util.find_spec("colored") is None:
        G_LOGGER.colors = False
    return G_LOGGER


def save_run_results(path: str | Path, results: Mapping[str, Frames]) -> Path:
    """Save outputs as a Polygraphy ``RunResults`` JSON; atomically (Polygraphy writes a temp path we rename)."""
    logger = _polygraphy_logger()
    run_results = to_run_results(results)
    with atomic_path(path) as tmp, logger.verbosity(logger.ERROR):  # no "[I] Saving ..." line
        run_results.save(os.fspath(tmp))
    return Path(path)


def load_run_results(path: str | Path) -> dict[str, Frames]:
    """A saved ``RunResults`` JSON -> {runner name: [frame outputs as numpy arrays]}."""
    from polygraphy.comparator import RunResults

    loaded = RunResults.load(os.fspath(path))
    return {runner: [{name: np.asarray(arr) for name, arr in iteration.items()} for iteration in iterations]
            for runner, iterations in loaded.items()}


# ---------------------------------------------------------------------------------------- output comparison

def compare_runs(ref_iters: Frames, got_iters: Frames, bins: int = 50) -> dict[str, dict]:
    """Per output: `tensor_metrics` per frame merged worst-case, plus a log10-error histogram over all frames.

    Every output of the reference must be in every frame under test; extra outputs in `got` are ignored.
    """
    if len(ref_iters) != len(got_iters):
        raise ValueError(f"frame count mismatch: ref {len(ref_iters)} vs got {len(got_iters)}")
    if not ref_iters:
        raise ValueError("compare_runs: no frames")
    names = list(ref_iters[0])
    for index, frame in enumerate(got_iters):
        missing = [n for n in names if n not in frame]
        if missing:
            raise ValueError(f"frame {index}: outputs {missing} missing from the run under test")
    out = {}
    for name in names:
        per_frame, lo, hi = [], np.inf, -np.inf
        for ref, got in zip(ref_iters, got_iters):
            try:
                per_frame.append(tm.tensor_metrics(ref[name], got[name]))
            except ValueError as exc:
                raise ValueError(f"output {name!r}: {exc}") from None
            logs = tm.log_abs_error(ref[name], got[name])
            if logs.size:
                lo, hi = min(lo, float(logs.min())), max(hi, float(logs.max()))
        value_range = (lo, hi) if np.isfinite(lo) else None
        merged = tm.merge_metrics(per_frame)
        counts = None
        for ref, got in zip(ref_iters, got_iters):  # fixed edges, so the frames' counts add up
            hist = tm.error_histogram(ref[name], got[name], bins=bins, value_range=value_range)
            counts = hist["counts"] if counts is None else [a + b for a, b in zip(counts, hist["counts"])]
        merged["histogram"] = {**hist, "counts": counts}
        out[name] = merged
    return out


def polygraphy_accuracy(results, atol: float, rtol: float, runners: tuple[str, str] | None = None) -> dict:
    """Polygraphy's own per-element check (|ref - got| <= atol + rtol * |ref|, `SimpleCompareFunc`).

    `results` is a ``RunResults`` or {runner: [frame outputs]}; the first two runners are compared unless
    `runners` names them. Returns {"passed", "runners", "atol", "rtol", "outputs": {name: {"passed",
    "frames_passed", "frames", "max_absdiff", "max_reldiff"}}}, the diffs being worst over frames.
    """
    from polygraphy.comparator import Comparator, RunResults
    G_LOGGER = _polygraphy_logger()

    try:  # newer Polygraphy deprecates CompareFunc.simple in favour of the class itself
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple

    run_results = results if isinstance(results, RunResults) else to_run_results(results)
    names = list(run_results.keys())
    pair = tuple(runners) if runners is not None else tuple(names[:2])
    if len(pair) != 2 or any(n not in names for n in pair):
        raise ValueError(f"need two runners to compare, have {names}")
    indices = (names.index(pair[0]), names.index(pair[1]))
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # its per-output log is long; our report shows the verdict
        accuracy = Comparator.compare_accuracy(run_results, comparisons=[indices],
                                               compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    outputs: dict[str, dict] = {}
    for iteration in accuracy[0][pair]:
        for name, verdict in iteration.items():
            entry = outputs.setdefault(name, {"passed": True, "frames_passed": 0, "frames": 0,
                                              "max_absdiff": 0.0, "max_reldiff": 0.0})
            ok = bool(verdict)
            entry["passed"] = entry["passed"] and ok
            entry["frames_passed"] += int(ok)
            entry["frames"] += 1
            for key in ("max_absdiff", "max_reldiff"):
                value = getattr(verdict, key, None)
                if value is not None:
                    entry[key] = max(entry[key], float(value))
    return {"passed": bool(outputs) and all(e["passed"] for e in outputs.values()), "runners": list(pair),
            "atol": atol, "rtol": rtol, "outputs": outputs}


# ---------------------------------------------------------------------------------------- per-layer (ONNX)

def _float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every float tensor that shape inference can type (intermediates and outputs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:  # fall back to the types the file declares
        inferred = model
    graph = inferred.graph
    types = {}
    for value in [*graph.value_info, *graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem in _FLOAT_TYPES:
            types[value.name] = elem
    return types


def _mark_all_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every float node output made a graph output; returns it and those names."""
    types = _float_tensor_types(model)
    marked = copy.deepcopy(model)
    existing = {o.name for o in marked.graph.output}
    names = []
    for node in marked.graph.node:
        for name in node.output:
            if name and name in types:
                names.append(name)
                if name not in existing:
                    marked.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                    existing.add(name)
    return marked, names


def _run_all(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime, CPU, one thread, no graph optimisation (each tensor is computed as the graph says)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    missing = sorted(inputs - set(feeds))
    if missing:
        raise ValueError(f"feeds lack graph inputs {missing}")
    values = session.run(names, {k: np.asarray(v) for k, v in feeds.items() if k in inputs})
    return dict(zip(names, values))


def find_first_jump(layers: list[dict], jump: float = 1e-4, ratio: float = 10.0) -> str | None:
    """The first layer that *introduces* error, not merely carries it.

    With e = 1 - cosine, a layer is the jump when e > `jump` (a visible error) and e > `ratio` times the
    largest e of every layer before it (ten times worse than anything upstream). Later layers that inherit
    the error do not qualify, since they are compared with the jump's own e. None when no layer qualifies.
    """
    worst_before = 0.0
    for layer in layers:
        cosine = layer["cosine"]
        e = 1.0 - cosine if cosine is not None and np.isfinite(cosine) else np.inf
        if e > jump and e > ratio * worst_before:
            return layer["tensor"]
        worst_before = max(worst_before, e)
    return None


def per_layer_onnx(ref_model: onnx.ModelProto, got_model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                   jump: float = 1e-4, ratio: float = 10.0) -> dict:
    """Every float tensor named alike in both graphs, compared in the reference's topological order.

    Both models are copied with every intermediate float tensor marked as an output, run with ONNX Runtime
    (CPU, one thread) on `feeds`, and compared with `tensor_metrics`. Returns {"layers": [{tensor, op,
    cosine, max_abs, median_abs, snr_db}], "first_jump": name or None, "criterion": text} (see
    `find_first_jump`). Memory: all activations of one frame are held for both models.
    """
    ref_marked, ref_names = _mark_all_outputs(ref_model)
    got_marked, got_names = _mark_all_outputs(got_model)
    got_set = set(got_names)
    common = [n for n in ref_names if n in got_set]
    if not common:
        raise ValueError("the two models share no float tensor names: nothing to compare")
    ref_values = _run_all(ref_marked, feeds, common)
    got_values = _run_all(got_marked, feeds, common)
    producer = {out: node.op_type for node in ref_model.graph.node for out in node.output}
    layers = []
    for name in common:
        ref, got = ref_values[name], got_values[name]
        if ref.shape != got.shape:
            continue  # the same name for a different tensor: nothing meaningful to compare
        m = tm.tensor_metrics(ref, got)
        layers.append({"tensor": name, "op": producer.get(name, "?"), "cosine": m["cosine"],
                       "max_abs": m["max_abs"], "median_abs": m["median_abs"], "snr_db": m["snr_db"]})
    return {"layers": layers, "first_jump": find_first_jump(layers, jump, ratio),
            "criterion": f"first tensor with 1-cosine > {jump:g} and > {ratio:g}x the worst 1-cosine before it"}
