"""Quantized RPN + CenterHead -> `rpn_head.int8.onnx`: standard ONNX with explicit QuantizeLinear /
DequantizeLinear (opset 17): explicit quantization, the form from which a strongly typed TensorRT network builds
INT8 (the Q/DQ placement decides which layers run INT8).

How: the calibrated model (BN folded by `prepare_model`, pytorch-quantization's QuantConv2d /
QuantConvTranspose2d, our QuantConcat) is traced by the same TorchScript exporter as the FP32 file with
`TensorQuantizer.use_fb_fake_quant = True`: every enabled quantizer then runs
`torch.fake_quantize_per_{tensor,channel}_affine`, which the exporter writes as Q -> DQ with scale
amax / 127 and an int8 zero point 0: activations per tensor, weights per output channel: Conv2d on axis 0,
ConvTranspose2d on axis 1 of [C_in, C_out, kh, kw] (our descriptor; a model calibrated per input channel by
an older version is refused, `check_weight_amax`). Layers left float by the skip list
(`bbox_head.tasks.*.reg.3`) stay plain float convs. The exported scales and axes are checked against the
quantizers' amax before the passes run (`fold_constants`, `int8_weights`, `dedupe_qdq`,
`unify_concat_scales`, `name_and_order_outputs`, `cleanup_toposort`, `infer_shapes`); inputs and outputs
are named and ordered exactly as in the FP32 file. The conv after the neck's Concat keeps its own Q/DQ
pair (`dedupe_qdq`), so every quantized conv reads a DequantizeLinear.

Validation compares ONNX Runtime with the PyTorch fake-quant head, and bars the *median* abs error per
output, not the max: the two do not quantize by the same arithmetic. pytorch-quantization's fake quant
computes round(x * (127 / amax)) / (127 / amax) clamped to [-127, 127] ("narrow range"), ONNX computes
round(x / (amax / 127)) * (amax / 127) saturated to [-128, 127]. The float32 roundings of the two scale
forms differ in the last bit, so a value lying (almost) exactly half-way between two grid points rounds
one way in PyTorch and the other in ONNX: one int8 step (amax / 127) of difference on that element, which
the following convs spread over a few neighbours. Such elements are rare, so the median error stays at
float32 noise while the max error can reach a few steps. The same holds for values below -amax
(clamped to -127 in PyTorch, -128 in ONNX). A wrong scale, axis or weight moves the median at once.
ONNX Runtime runs with graph optimizations off: even its basic level rewrites Q/DQ graphs and then
differs from both the file and PyTorch (tiny model, dense BEV: median 2.3e-3 instead of 3.6e-7).
"""

from __future__ import annotations

import functools
import re
import warnings
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pytorch_quantization.nn import TensorQuantizer
from torch import nn

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers, quiet_library_logs
from trt_centerpoint.config import ModelConfig
from trt_centerpoint.export.head.export import (
    RPN_HEAD_INPUT,
    RpnHeadExport,
    RpnHeadModule,
    check_onnx,
    rpn_head_output_names,
    trace_rpn_head,
)
from trt_centerpoint.export.head.passes import (
    cleanup_toposort,
    fold_constants,
    infer_shapes,
    name_and_order_outputs,
    run_passes,
)
from trt_centerpoint.export.head.passes_fp16 import FP16_OPSET, set_opset, to_fp16
from trt_centerpoint.export.head.passes_qdq import (
    dedupe_qdq,
    int8_weights,
    unify_concat_scales,
)
from trt_centerpoint.export.validate import ValidationError
from trt_centerpoint.quant.quantize import check_weight_amax

RPN_HEAD_INT8_TOLERANCE = 1e-4  # per output median abs error, ONNX Runtime vs PyTorch fake quant
# The same for a file with FP16 float parts (`fp16=True`), against the float32 PyTorch fake quant: scales,
# biases and every activation are rounded to float16 (relative 2^-11), and an int8 step flips where that
# rounding moves a value across a rounding boundary. Tiny test model (outputs up to ~4), 2 real BEVs + 1
# dense, ONNX Runtime 1.32 CPU: worst median 2.1e-3 layer by layer (max 2.2e-2), 8.5e-3 free running
# (not gated). 1e-2 leaves ~5x room; a weight scale x1.5 on one head conv still gives a median of 2.6e-2.
RPN_HEAD_FP16_TOLERANCE = 1e-2
INT8_BOUND = 127  # scale = amax / 127 (pytorch-quantization's 8-bit bound, as TensorRT and libspconv)

__all__ = ["RPN_HEAD_FP16_TOLERANCE", "RPN_HEAD_INT8_TOLERANCE", "export_rpn_head_int8", "quantizer_axes",
           "quantizer_scales", "trace_rpn_head_int8", "validate_rpn_head_int8"]


@contextmanager
def _fb_fake_quant():
    """pytorch-quantization's export switch, restored whatever happens."""
    previous = TensorQuantizer.use_fb_fake_quant
    TensorQuantizer.use_fb_fake_quant = True
    try:
        yield
    finally:
        TensorQuantizer.use_fb_fake_quant = previous


def quantizer_scales(module: nn.Module) -> dict[str, np.ndarray]:
    """{quantizer path: float32 scales (amax / 127, flattened)} of every enabled quantizer of `module`."""
    out = {}
    for name, q in iter_quantizers(module):
        if q._disabled:
            continue
        amax = getattr(q, "_amax", None)
        if amax is None:
            raise ValidationError(f"rpn_head int8: quantizer {name} has no amax (calibrate the model first)")
        out[name] = (amax.detach().double().cpu().numpy().reshape(-1) / INT8_BOUND).astype(np.float32)
    return out


def quantizer_axes(module: nn.Module) -> dict[str, int | None]:
    """{quantizer path: the axis its amax is per channel on, None for one value} of every enabled quantizer:
    the axis the exporter writes on its QuantizeLinear / DequantizeLinear."""
    out = {}
    for name, q in iter_quantizers(module):
        amax = getattr(q, "_amax", None)
        if q._disabled or amax is None:
            continue
        out[name] = None if amax.numel() == 1 else list(amax.shape).index(amax.numel())
    return out


def _scope_to_path(node_name: str) -> str:
    """`/neck/blocks.0/blocks.0.1/_input_quantizer/QuantizeLinear` -> `neck.blocks.0.1._input_quantizer`.

    The TorchScript exporter names a node by its module scopes, each scope relative to an ancestor one
    (a ModuleList item is `blocks.0` after `neck`, its Sequential child `blocks.0.1`); a module called
    more than once (QuantConcat's quantizer, once per input) gets `_1`, `_2`, ... from the second call on.
    """
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        seg = re.sub(r"_\d+$", "", seg) if seg.startswith("_") else seg
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(a.t)
    return values


def check_exported_scales(model: onnx.ModelProto, wrapper: nn.Module) -> int:
    """Every Q / DQ of the raw export has scale == its quantizer's amax / 127, per channel on the axis of
    its amax (ConvTranspose weights: 1), and an int8 zero point 0.

    Returns how many Q / DQ nodes were checked; raises ValidationError naming the first wrong one.
    """
    expected = quantizer_scales(wrapper)
    axes = quantizer_axes(wrapper)
    values = _constant_values(model)
    checked = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        path = _scope_to_path(node.name)
        if path not in expected:
            raise ValidationError(f"rpn_head int8: {node.name} does not belong to an enabled quantizer ({path})")
        scale = values.get(node.input[1])
        zero = values.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or zero is None:
            raise ValidationError(f"rpn_head int8: {node.name} has a computed scale or no zero point")
        want = expected[path]
        if scale.reshape(-1).shape != want.shape or not np.allclose(scale.reshape(-1), want, rtol=1e-6, atol=0):
            raise ValidationError(f"rpn_head int8: {node.name} scale {scale.reshape(-1)[:4]} != amax / 127 "
                                  f"{want[:4]} of {path}")
        axis = {a.name: a.i for a in node.attribute}.get("axis", 1) if scale.size > 1 else None
        if axis != axes[path]:
            raise ValidationError(f"rpn_head int8: {node.name} is per channel on axis {axis}, its quantizer {path} "
                                  f"on axis {axes[path]}")
        if zero.dtype != np.int8 or np.any(zero != 0):
            raise ValidationError(f"rpn_head int8: {node.name} zero point must be int8 0, got {zero.dtype} {zero}")
        checked += 1
    return checked


def trace_rpn_head_int8(qmodel: nn.Module, cfg: ModelConfig) -> tuple[onnx.ModelProto, int]:
    """The raw Q/DQ export of the 2D part (before any pass), its scales checked; returns (model, Q/DQ count)."""
    wrapper = RpnHeadModule(qmodel).eval()
    quantizer_scales(wrapper)  # refuses an uncalibrated model before tracing
    check_weight_amax(wrapper, "rpn_head int8")  # and one calibrated on another weight axis (older ptq.pth)
    with quiet_library_logs(), _fb_fake_quant(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # amax.item() in _fb_fake_quant
        exported = trace_rpn_head(wrapper, cfg)
    return exported, check_exported_scales(exported, wrapper)


def export_rpn_head_int8(qmodel: nn.Module, cfg: ModelConfig, fp16: bool = False,
                         fp16_io: bool = False) -> RpnHeadExport:
    """Export the calibrated quantized 2D part of `qmodel` as a Q/DQ ONNX file (module doc).

    `fp16`: the float parts (scales, biases, the float reg.3 convs, every float tensor) in float16, for
    strongly typed TensorRT builds (`passes_fp16.to_fp16`, opset 19 for float16 Q/DQ scales); the input
    and outputs stay float32 behind Casts unless `fp16_io` (which needs `fp16`). The metadata props record
    `precision` (int8), `float_precision` (fp16 / fp32) and `io` (fp16 / fp32).
    """
    if fp16_io and not fp16:
        raise ValueError("export_rpn_head_int8: fp16_io=True needs fp16=True (float16 I/O of a float32 graph)")
    names = rpn_head_output_names(qmodel)
    exported, checked = trace_rpn_head_int8(qmodel, cfg)
    passes = [fold_constants, int8_weights, dedupe_qdq, unify_concat_scales,
              functools.partial(name_and_order_outputs, names=names), cleanup_toposort, infer_shapes]
    if fp16:
        passes.append(functools.partial(to_fp16, keep_io_fp32=not fp16_io))
    out, reports = run_passes(exported, passes)
    if fp16:
        set_opset(out, FP16_OPSET)
    out.producer_name = "trt-centerpoint"
    onnx.helper.set_model_props(out, {"precision": "int8", "float_precision": "fp16" if fp16 else "fp32",
                                      "io": "fp16" if fp16_io else "fp32", "qdq_checked": str(checked)})
    return RpnHeadExport(out, names, reports)


def _ort_session(model_bytes: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # --threads (MLAS splits outputs, not sums)
    # Run the graph as written. Even ORT's *basic* level rewrites Q/DQ graphs (its QDQ transformers): on a
    # dense BEV input of the tiny model that alone moved the median error from 3.6e-7 to 2.3e-3, i.e. it
    # would compare ORT's rewrite, not the file, with PyTorch.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # a nuScenes-size head: the arena would stay at its GB-size peak
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _call_index(node_name: str) -> int:
    """0 for a quantizer's first call, k for the scope suffix `_k` (QuantConcat's second input: 1)."""
    for seg in node_name.strip("/").split("/")[:-1]:
        match = re.fullmatch(r"_\w+quantizer_(\d+)", seg)
        if match:
            return int(match.group(1))
    return 0


def _quantizer_inputs(wrapper: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """(PyTorch outputs, {(quantizer path, call index): the tensor it quantized}) for one input."""
    seen: dict[tuple[str, int], torch.Tensor] = {}
    versions: dict[tuple[str, int], int] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, quantizer in iter_quantizers(wrapper):
        def hook(_module, args, name=name):
            index = counts.get(name, 0)
            counts[name] = index + 1
            # kept, not copied (a nuScenes-size head quantizes dozens of 8M-element tensors): the version counter
            # says whether an in-place op changed one after it was quantized
            seen[(name, index)], versions[(name, index)] = args[0].detach(), args[0]._version
        handles.append(quantizer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), quiet_library_logs():
            outputs = [t.detach() for t in wrapper(x.float())]
    finally:
        for handle in handles:
            handle.remove()
    changed = [key for key, t in seen.items() if t._version != versions[key]]
    if changed:
        raise RuntimeError(f"rpn_head int8 validation: {changed[0][0]}'s input was changed in place after it was "
                           "quantized; the reference would not be what it quantized")
    return outputs, seen


def _forced(model: onnx.ModelProto, calls: dict):
    """A copy of `model` whose activation QuantizeLinear nodes read new graph inputs instead of the tensor
    computed before them, and whose those tensors are extra outputs. Returns (model, {input name: (quantizer
    path, call index)} = what to feed, {extra output name: (quantizer path, call index)} = what to check)."""
    forced = onnx.ModelProto()
    forced.CopyFrom(model)
    values = _constant_values(forced)
    constants = set(values)
    outputs = {o.name for o in forced.graph.output}
    feeds, checks = {}, {}
    for node in forced.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        key = (_scope_to_path(node.name), _call_index(node.name))
        if key not in calls:
            continue
        name = f"{node.name}:forced"
        feeds[name] = key
        if node.input[0] not in outputs and node.input[0] != RPN_HEAD_INPUT:
            checks[node.input[0]] = key
            outputs.add(node.input[0])
            forced.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.input[0]))
        node.input[0] = name
        shape = list(calls[key].shape)
        scale = values.get(node.input[1])  # QuantizeLinear's input has its scale's type (float16 scales: FP16 file)
        elem = onnx.helper.np_dtype_to_tensor_dtype(scale.dtype) if scale is not None else onnx.TensorProto.FLOAT
        forced.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, shape))
    return forced, feeds, checks


def _frame_stats(r: np.ndarray, g: np.ndarray) -> tuple[float, float, float, int, int]:
    """One frame's |reference - got| (in float64) as (median, max, sum, count, count > 1e-5): kept per frame, not
    the arrays, so a nuScenes-size head (dozens of 8M-element tensors per BEV) does not hold gigabytes."""
    d = np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64)).reshape(-1)
    stats = float(d.max()), float(d.sum()), int(d.size), int(np.count_nonzero(d > 1e-5))
    return (float(np.median(d, overwrite_input=True)), *stats)  # last: the median reorders `d` (no copy of it)


def _summarise(stats: dict[str, list[tuple]]) -> dict[str, dict]:
    """Per name over the frames: the worst frame's median, the largest error, the mean, the differing fraction."""
    out = {}
    for name, frames in stats.items():
        count = sum(f[3] for f in frames)
        out[name] = {"median_abs": max(f[0] for f in frames), "max_abs": max(f[1] for f in frames),
                     "mean_abs": sum(f[2] for f in frames) / count,
                     "differing_fraction": sum(f[4] for f in frames) / count}
    return out


def _input_dtypes(session) -> dict[str, type]:
    """{graph input name: the NumPy type to feed}: float16 where the file takes float16, else float32."""
    return {i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in session.get_inputs()}


def _float_precision(model: onnx.ModelProto) -> str:
    return {p.key: p.value for p in model.metadata_props}.get("float_precision", "fp32")


def validate_rpn_head_int8(exported: RpnHeadExport, qmodel: nn.Module, bevs: list[torch.Tensor],
                           tolerance: float | None = None, runs: dict | None = None) -> dict:
    """Checker + strict shape inference + ONNX Runtime vs the PyTorch fake-quant head on `bevs`.

    Two runs per input:
    - layer by layer (the gate): every activation QuantizeLinear of the file is fed the tensor PyTorch
      quantized at that point, so each segment between quantizers runs on PyTorch's input; the tensor each
      segment hands to the next quantizer and every head output must match PyTorch with a median abs
      error <= `tolerance` (on its worst frame). This isolates the file's arithmetic: two float32 convolution
      implementations (ONNX Runtime's MLAS, PyTorch's oneDNN) round differently in the last bit, a value
      near a rounding boundary then lands one INT8 step apart, and in a free run those flips cascade
      through every later layer (sample model: 7 of 102400 elements at the second conv's input, ~3 % at the
      last; hm median abs error 0.011), which says nothing about the file.
    - free running: ONNX Runtime alone from the BEV; figures reported (`free_running`), not gated.
    `tolerance` defaults to RPN_HEAD_INT8_TOLERANCE, or RPN_HEAD_FP16_TOLERANCE for a file whose metadata
    says `float_precision: fp16`; pass a larger one to accept more. Inputs are fed in the type the file
    takes (float16 for an `io: fp16` file and for the forced quantizer inputs of an FP16 file: rounded
    from PyTorch's float32 tensors), and differences are taken in float64.
    Raises ValidationError naming the worst output. `runs`, when given, receives the free-running outputs of
    both per BEV ({"onnxrt": [...], "pytorch": [...]}, {name: array} each) for a second comparison.
    """
    if tolerance is None:
        tolerance = RPN_HEAD_FP16_TOLERANCE if _float_precision(exported.model) == "fp16" else RPN_HEAD_INT8_TOLERANCE
    proto = exported.model
    check_onnx(proto, "rpn_head int8")
    session = _ort_session(exported.to_bytes())
    got_names = [o.name for o in session.get_outputs()]
    if got_names != exported.output_names:
        raise ValidationError(f"rpn_head int8: outputs {got_names}, expected {exported.output_names}")
    wrapper = RpnHeadModule(qmodel).eval()
    forced_diffs: dict[str, list[tuple]] = {name: [] for name in exported.output_names}
    free_diffs: dict[str, list[tuple]] = {name: [] for name in exported.output_names}
    segment_diffs: dict[str, list[tuple]] = {}
    forced_count = 0
    forced_session = None
    for x in bevs:
        ref, calls = _quantizer_inputs(wrapper, x)
        if forced_session is None:  # which quantizers run, and their shapes, do not change between BEVs
            forced_model, feeds, checks = _forced(proto, calls)
            forced_count = len(feeds)
            forced_session = _ort_session(forced_model.SerializeToString())
            dtypes = _input_dtypes(forced_session)
        inputs = {RPN_HEAD_INPUT: x.float().numpy(), **{n: calls[k].numpy() for n, k in feeds.items()}}
        inputs = {n: v.astype(dtypes[n], copy=False) for n, v in inputs.items()}
        forced_out = forced_session.run(exported.output_names + list(checks), inputs)
        free_out = session.run(None, {RPN_HEAD_INPUT: inputs[RPN_HEAD_INPUT]})
        if runs is not None:
            runs.setdefault("onnxrt", []).append(dict(zip(exported.output_names, free_out)))
            runs.setdefault("pytorch", []).append({n: r.numpy() for n, r in zip(exported.output_names, ref)})
        for diffs, got in ((forced_diffs, forced_out), (free_diffs, free_out)):
            for name, r, g in zip(exported.output_names, ref, got):
                diffs[name].append(_frame_stats(r.numpy(), g))
        for (tensor, key), g in zip(checks.items(), forced_out[len(exported.output_names):]):
            label = f"{key[0]}" + (f"[{key[1]}]" if key[1] else "") + " input"
            segment_diffs.setdefault(label, []).append(_frame_stats(calls[key].numpy(), g))
        del calls, forced_out, free_out, ref  # one BEV's tensors at a time
    per_output, free = _summarise(forced_diffs), _summarise(free_diffs)
    segments = _summarise(segment_diffs)
    gated = {**per_output, **segments}  # every segment is gated like an output
    worst = max(gated, key=lambda n: gated[n]["median_abs"]) if gated else None
    figures = {"frames": len(bevs), "tolerance": tolerance, "mode": "layer by layer", "forced_quantizers": forced_count,
               "checked_segments": len(segments), "per_output": per_output, "per_segment": segments,
               "max_median_abs_error": gated[worst]["median_abs"] if worst else 0.0,
               "max_abs_error": max((v["max_abs"] for v in gated.values()), default=0.0),
               "free_running": {"per_output": free,
                                "max_median_abs_error": max((v["median_abs"] for v in free.values()), default=0.0),
                                "max_abs_error": max((v["max_abs"] for v in free.values()), default=0.0)}}
    if worst is not None and gated[worst]["median_abs"] > tolerance:
        raise ValidationError(f"rpn_head int8: ONNX Runtime differs from PyTorch fake quant on {worst}: median abs "
                              f"error {gated[worst]['median_abs']:.3g} > {tolerance} layer by layer (max "
                              f"{gated[worst]['max_abs']:.3g})")
    exported.validation = figures
    return figures
