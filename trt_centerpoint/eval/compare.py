"""Output-by-output and layer-by-layer comparison of a reference run (FP32) with a run under test (INT8).

Why Polygraphy's formats: the saved outputs are a Polygraphy ``RunResults`` JSON, so anyone can open them
with ``polygraphy inspect data`` or re-check them with ``polygraphy run --load-outputs``, without this
project. Our own figures (cosine, SNR, ...) come from `trt_centerpoint.eval.tensor_metrics`; Polygraphy's
``compare_accuracy`` verdict (`accuracy_check`, the one wrapper around it) is reported next to them as the
familiar atol/rtol check, both for saved runs (`polygraphy_accuracy`) and for an ONNX file run against its
PyTorch module (`polygraphy_compare`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.logger import G_LOGGER

from trt_centerpoint._compat.polygraphy import PytorchRunner, quiet_logger, simple_compare_func
from trt_centerpoint._compat.pytorch_quantization import quiet_library_logs
from trt_centerpoint.eval import tensor_metrics as tm
from trt_centerpoint.fileio import atomic_path

__all__ = ["DEFAULT_RUN_RESULTS_MB", "accuracy_check", "compare_runs", "find_first_jump", "fit_run_results",
           "load_run_results", "per_layer_onnx", "polygraphy_accuracy", "polygraphy_compare", "polygraphy_verdict",
           "save_run_results",
           "to_run_results"]

Frames = list[dict[str, np.ndarray]]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


# ---------------------------------------------------------------------------------------- RunResults files

def to_run_results(results: Mapping[str, Frames]) -> RunResults:
    """{runner name: [frame outputs]} -> Polygraphy ``RunResults`` (one ``IterationResult`` per frame)."""
    run_results = RunResults()
    for runner, frames in results.items():
        run_results[runner] = [IterationResult({k: np.asarray(v) for k, v in frame.items()}, runner_name=runner)
                               for frame in frames]
    return run_results


def save_run_results(path: str | Path, results: Mapping[str, Frames]) -> Path:
    """Save outputs as a Polygraphy ``RunResults`` JSON; atomically (Polygraphy writes a temp path we rename)."""
    run_results = to_run_results(results)
    with atomic_path(path) as tmp, quiet_logger(G_LOGGER.ERROR):  # no "[I] Saving ..." line
        run_results.save(os.fspath(tmp))
    return Path(path)


DEFAULT_RUN_RESULTS_MB = 10.0
PER_LAYER_MEMORY_MB = 512.0  # activations fetched at once per model in per_layer_onnx (nuScenes head: 2.3 GB peak)


def _json_bytes(frame: Mapping[str, np.ndarray]) -> int:
    """What one frame's outputs take in Polygraphy's RunResults JSON: each array as base64 of its .npy bytes."""
    return sum((np.asarray(a).nbytes + 128) * 4 // 3 + 256 for a in frame.values()) + 1024


def _center_crop(frame: Mapping[str, np.ndarray], side: int) -> tuple[dict, list[int]]:
    """The central side x side cells of every [..., H, W] output (smaller arrays whole) and the window."""
    out, window = {}, None
    for name, a in frame.items():
        a = np.asarray(a)
        if a.ndim < 2:
            out[name] = a
            continue
        h, w = a.shape[-2:]
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        window = [y0, min(h, y0 + side), x0, min(w, x0 + side)]
        out[name] = np.ascontiguousarray(a[..., window[0]:window[1], window[2]:window[3]])
    return out, window


def fit_run_results(results: Mapping[str, Frames], budget_mb: float = DEFAULT_RUN_RESULTS_MB
                    ) -> tuple[dict[str, Frames], dict]:
    """Keep the saved RunResults under `budget_mb`: whole frames while they fit (all runners, same frames);
    when not even one frame fits (nuScenes-size heads: about 24 MB per frame for FP32 + INT8), the central
    window of the first frame's maps that does. Returns what to save and a note for compare.json."""
    runners = list(results)
    frames = min((len(results[r]) for r in runners), default=0)
    per_frame = [sum(_json_bytes(results[r][i]) for r in runners) for i in range(frames)]
    budget = int(budget_mb * 1e6 * 0.97)  # the JSON's own keys and metadata
    keep = 0
    while keep < frames and sum(per_frame[:keep + 1]) <= budget:
        keep += 1
    if keep or not frames:
        return ({r: list(results[r][:keep]) for r in runners},
                {"frames": keep, "of": frames, "crop": None, "budget_mb": budget_mb, "bytes": sum(per_frame[:keep])})
    first = {r: results[r][0] for r in runners}
    hw = [np.asarray(a).shape[-2:] for f in first.values() for a in f.values() if np.asarray(a).ndim >= 2]
    side = int(min(min(h, w) for h, w in hw) * (budget / per_frame[0]) ** 0.5)
    while side > 1:
        cropped = {r: _center_crop(f, side) for r, f in first.items()}
        size = sum(_json_bytes(c[0]) for c in cropped.values())
        if size <= budget:
            break
        side -= max(1, side // 20)
    cropped = {r: _center_crop(f, max(side, 1)) for r, f in first.items()}
    window = next(iter(cropped.values()))[1]
    return ({r: [c[0]] for r, c in cropped.items()},
            {"frames": 1, "of": frames, "crop": window, "budget_mb": budget_mb,
             "bytes": sum(_json_bytes(c[0]) for c in cropped.values())})


def load_run_results(path: str | Path) -> dict[str, Frames]:
    """A saved ``RunResults`` JSON -> {runner name: [frame outputs as numpy arrays]}."""
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


# ---------------------------------------------------------------------------------------- Polygraphy's verdict

_STATS = ("max_absdiff", "max_reldiff", "median_absdiff", "mean_absdiff")


def accuracy_check(run_results: RunResults, atol: float, rtol: float, check_error_stat: str = "elemwise",
                   runners: tuple[str, str] | None = None) -> tuple[list[str], dict[str, dict]]:
    """Polygraphy's ``compare_accuracy`` with its simple compare function, summarised per output.

    Compares the first two runners of `run_results` unless `runners` names them. An output passes a frame
    when its `check_error_stat` ("elemwise": every element) is within atol + rtol * |ref| (Polygraphy's
    rule). Returns (the two runner names, {output: {"passed", "frames_passed", "frames", "max_absdiff",
    "max_reldiff", "median_absdiff", "mean_absdiff"}}), each statistic the worst over frames.
    """
    names = list(run_results.keys())
    pair = tuple(runners) if runners is not None else tuple(names[:2])
    if len(pair) != 2 or any(n not in names for n in pair):
        raise ValueError(f"need two runners to compare, have {names}")
    compare_func = simple_compare_func(atol=atol, rtol=rtol, check_error_stat=check_error_stat)
    with quiet_logger(G_LOGGER.CRITICAL):  # its per-output log is long; the figures below are the result
        accuracy = Comparator.compare_accuracy(run_results, compare_func=compare_func,
                                               comparisons=[(names.index(pair[0]), names.index(pair[1]))])
    outputs: dict[str, dict] = {}
    for iteration in accuracy[0][pair]:
        for name, verdict in iteration.items():
            entry = outputs.setdefault(name, {"passed": True, "frames_passed": 0, "frames": 0,
                                              **dict.fromkeys(_STATS, 0.0)})
            ok = bool(verdict)
            entry["passed"] = entry["passed"] and ok
            entry["frames_passed"] += int(ok)
            entry["frames"] += 1
            for key in _STATS:
                value = getattr(verdict, key, None)
                if value is not None:
                    entry[key] = max(entry[key], float(value))
    return list(pair), outputs


def polygraphy_accuracy(results, atol: float, rtol: float, runners: tuple[str, str] | None = None) -> dict:
    """Polygraphy's per-element check (|ref - got| <= atol + rtol * |ref|) of two saved runs.

    `results` is a ``RunResults`` or {runner: [frame outputs]}. Returns {"passed", "runners", "atol", "rtol",
    "outputs": {name: {"passed", "frames_passed", "frames", "max_absdiff", "max_reldiff", ...}}}.
    """
    run_results = results if isinstance(results, RunResults) else to_run_results(results)
    pair, outputs = accuracy_check(run_results, atol, rtol, runners=runners)
    return {"passed": bool(outputs) and all(e["passed"] for e in outputs.values()), "runners": pair,
            "atol": atol, "rtol": rtol, "outputs": outputs}


def polygraphy_compare(onnx_bytes: bytes, torch_module: torch.nn.Module, bevs: list[torch.Tensor], input_name: str,
                       output_names: list[str], atol: float, rtol: float, check_error_stat: str = "median") -> dict:
    """Polygraphy `Comparator.run` of ONNX Runtime (`OnnxrtRunner(SessionFromOnnx)`, CPU, graph optimizations
    off) and the PyTorch module on `bevs`, then `accuracy_check` with `check_error_stat`.

    Returns {"passed", "check_error_stat", "atol", "rtol", "iterations", "per_output": {name: {"max_abs",
    "median_abs", "mean_abs", "passed"}}}: the figures are the worst over the inputs. Use it on the FP32 file
    with the float model and on the INT8 file with the fake-quant model ("median" for INT8: the two
    quantize by different arithmetic, see `export.head.int8`).
    """
    module = torch_module.eval()
    shape = list(bevs[0].shape) if bevs else []
    session = SessionFromOnnx(onnx_bytes, providers=["cpu"],
                              graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    runners = [OnnxrtRunner(session, name="onnxrt"),
               # a loader, not the module: Polygraphy would call a callable model to load it
               PytorchRunner(lambda: module, TensorMetadata().add(input_name, np.float32, shape), output_names,
                             name="pytorch")]
    feeds = [OrderedDict([(input_name, x.float().cpu().numpy())]) for x in bevs]
    # ERROR: its per-output warnings (e.g. "Some values are 0 ... relative difference") are noise here, as are
    # pytorch-quantization's absl lines from a fake-quant module
    with quiet_logger(G_LOGGER.ERROR), quiet_library_logs():
        results = Comparator.run(runners, data_loader=feeds)
    return _verdict(results, output_names, atol, rtol, check_error_stat, len(bevs))


def polygraphy_verdict(runs: Mapping[str, Frames], output_names: list[str], atol: float, rtol: float,
                       check_error_stat: str = "median") -> dict:
    """`polygraphy_compare`'s figures for two runs already made ({"onnxrt": [...], "pytorch": [...]}, a
    {name: array} per input, e.g. from a validation that ran both): Polygraphy's verdict without running the
    file and the module a second time."""
    return _verdict(to_run_results(runs), output_names, atol, rtol, check_error_stat,
                    min((len(frames) for frames in runs.values()), default=0))


def _verdict(results: RunResults, output_names: list[str], atol: float, rtol: float, check_error_stat: str,
             iterations: int) -> dict:
    _, outputs = accuracy_check(results, atol, rtol, check_error_stat)
    per_output = {name: {"max_abs": e["max_absdiff"], "median_abs": e["median_absdiff"],
                         "mean_abs": e["mean_absdiff"], "passed": e["passed"]} for name, e in outputs.items()}
    passed = bool(outputs) and all(e["passed"] for e in outputs.values()) and set(per_output) == set(output_names)
    return {"passed": passed, "check_error_stat": check_error_stat, "atol": atol, "rtol": rtol,
            "iterations": iterations, "per_output": per_output}


# ---------------------------------------------------------------------------------------- per-layer (ONNX)

def _float_tensors(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Every float tensor that shape inference can type: name -> (element type, bytes; None when its shape is not
    static)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:  # fall back to the types the file declares
        inferred = model
    graph = inferred.graph
    found = {}
    for value in [*graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type in _FLOAT_TYPES:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            size = None if None in dims else int(np.prod(dims, dtype=np.int64)) * 4
            found[value.name] = (tensor.elem_type, size)
    return found


def _node_outputs(model: onnx.ModelProto, tensors: dict) -> list[str]:
    """The float tensors `model`'s nodes produce, in graph order."""
    return [name for node in model.graph.node for name in node.output if name and name in tensors]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """ONNX Runtime, CPU, torch's thread count (`--threads`), no graph optimisation (each tensor is computed as the
    graph says)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # freed activations go back to the system, not to an arena kept at peak
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor shape inference can type (graph inputs and outputs included)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        inferred = model
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}


class _SegmentedRun:
    """A model run piece by piece, each node once: the next segment is the run of nodes up to the producer of
    the tensors asked for, fed the tensors earlier segments computed and later ones still read.

    Why: marking every activation of a nuScenes-size head as an output at once holds about 4 GB; fetching them in
    groups from whole runs of the model ran the model once per group (8 times there). Here the model runs once
    in all and holds one segment's marked tensors plus the few crossing a segment boundary.
    """

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], wanted: set[str]):
        self.model, self.nodes = model, list(model.graph.node)
        self.types = _value_types(model)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.last_use[name] = i
        for out in model.graph.output:
            self.last_use[out.name] = len(self.nodes)
        inputs = {i.name for i in model.graph.input} - set(self.initializers)
        missing = sorted(inputs - set(feeds))
        if missing:
            raise ValueError(f"feeds lack graph inputs {missing}")
        self.live = {k: np.asarray(v) for k, v in feeds.items() if k in inputs}
        self.wanted, self.ready, self.position = wanted, {}, 0

    def take(self, names: list[str]) -> dict[str, np.ndarray]:
        """The values of `names` (each produced by a node of the model and wanted), running what is needed."""
        pending = [n for n in names if n not in self.ready]
        if pending:
            self._run_to(max(self.producer[n] for n in pending) + 1)
        return {n: self.ready.pop(n) for n in names}

    def _run_to(self, end: int) -> None:
        nodes = self.nodes[self.position:end]
        produced = {out for node in nodes for out in node.output if out}
        needed = [n for node in nodes for n in node.input if n and n not in produced and n not in self.initializers]
        feeds = {n: self.live[n] for n in dict.fromkeys(needed)}
        outputs = [n for n in dict.fromkeys(out for node in nodes for out in node.output if out)
                   if n in self.wanted or self.last_use.get(n, -1) >= end]
        graph = onnx.helper.make_graph(
            nodes, "segment",
            [onnx.helper.make_tensor_value_info(n, self.types.get(n, onnx.TensorProto.FLOAT), None) for n in feeds],
            [onnx.helper.make_tensor_value_info(n, self.types.get(n, onnx.TensorProto.FLOAT), None) for n in outputs],
            [self.initializers[n] for n in dict.fromkeys(i for node in nodes for i in node.input)
             if n in self.initializers])
        segment = onnx.helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        values = dict(zip(outputs, _session(segment).run(outputs, feeds)))
        for name, value in values.items():
            if self.last_use.get(name, -1) >= end:
                self.live[name] = value
            if name in self.wanted:
                self.ready[name] = value
        self.live = {n: v for n, v in self.live.items() if self.last_use.get(n, -1) >= end}
        self.position = end


def _groups(names: list[str], sizes: dict, budget: int) -> list[list[str]]:
    """`names` in order, cut into runs whose tensors take at most `budget` bytes together (an unknown size
    counts as the whole budget, so it runs alone)."""
    groups, current, used = [], [], 0
    for name in names:
        size = sizes.get(name) or budget
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + ([current] if current else [])


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
                   jump: float = 1e-4, ratio: float = 10.0, memory_mb: float = PER_LAYER_MEMORY_MB) -> dict:
    """Every float tensor named alike in both graphs, compared in the reference's topological order.

    Both models run with ONNX Runtime (CPU, one thread, no graph optimisation) on `feeds`, each once, in
    segments (`_SegmentedRun`), and their tensors are compared with `tensor_metrics`. Returns {"layers":
    [{tensor, op, cosine, max_abs, median_abs, snr_db}], "first_jump": name or None, "criterion": text} (see
    `find_first_jump`). Memory: the tensors are fetched in groups of at most `memory_mb` per model (a
    nuScenes-size head holds about 4 GB of activations per frame).
    """
    ref_tensors, got_tensors = _float_tensors(ref_model), _float_tensors(got_model)
    got_set = set(_node_outputs(got_model, got_tensors))
    common = [n for n in _node_outputs(ref_model, ref_tensors) if n in got_set]
    if not common:
        raise ValueError("the two models share no float tensor names: nothing to compare")
    producer = {out: node.op_type for node in ref_model.graph.node for out in node.output}
    sizes = {n: ref_tensors[n][1] for n in common}
    runs = [_SegmentedRun(model, feeds, set(common)) for model in (ref_model, got_model)]
    layers = []
    for group in _groups(common, sizes, int(memory_mb * 2**20)):
        ref_values, got_values = (run.take(group) for run in runs)
        for name in group:
            ref, got = ref_values.pop(name), got_values.pop(name)
            if ref.shape != got.shape:
                continue  # the same name for a different tensor: nothing meaningful to compare
            m = tm.tensor_metrics(ref, got)
            layers.append({"tensor": name, "op": producer.get(name, "?"), "cosine": m["cosine"],
                           "max_abs": m["max_abs"], "median_abs": m["median_abs"], "snr_db": m["snr_db"]})
    return {"layers": layers, "first_jump": find_first_jump(layers, jump, ratio),
            "criterion": f"first tensor with 1-cosine > {jump:g} and > {ratio:g}x the worst 1-cosine before it"}
