"""Calibrated quantizers of a fused backbone -> the INT8 specs `export_scn` writes (`int8_spec.py`).

Why here and not in calib/: the calibrated model knows amax per quantizer; only the exporter knows the
graph, and `output_precision` is a graph property. Rules (libspconv's INT8 attributes, as CUDA-CenterPoint sets them):

- a conv / add whose input quantizer is enabled and calibrated runs int8 with that amax (the residual
  add's one shared quantizer gives both `input0_dynamic_range` and `input1_dynamic_range`); a conv's
  weight ranges are its per-output-channel weight amax. Layers calibration left float (the skip list:
  `conv_input`, `conv1.0.*` by default) run fp16 and carry no ranges.
- `output_precision` is "int8" only when every consumer of the output (looking through the Relu after a
  residual add) is an int8 layer and all of them quantize it with the same amax: then storing the output
  as int8 at that scale is exactly what the consumers would do, so the file means what the fake-quant
  model computes. Otherwise "fp16": a tensor feeding both the next block's conv and its residual add
  (different amax), an fp16 layer, or ScatterDense (so `extra_conv` writes fp16, as CUDA-CenterPoint does).
"""

from __future__ import annotations

from collections import Counter

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.scn.spec import AddQuant, ConvQuant
from trt_centerpoint.export.scn.walk import SparseOp

__all__ = ["ScnQuantError", "precision_summary", "scn_quant_specs"]


class ScnQuantError(UserError):
    """A quantizer is enabled but has no usable amax (the checkpoint was not calibrated)."""


def _enabled(quantizer) -> bool:
    return quantizer is not None and not quantizer._disabled


def _uncalibrated(ops: list[SparseOp]) -> list[str]:
    """Enabled quantizers without amax, by name."""
    names = []
    for op in ops:
        for attr in ("_input_quantizer", "_weight_quantizer"):
            quantizer = getattr(op.module, attr, None)
            if _enabled(quantizer) and quantizer.amax is None:
                names.append(f"{op.path}.{attr}")
    return names


def _amax_values(quantizer, what: str) -> list[float]:
    return [float(v) for v in quantizer.amax.detach().cpu().flatten()]


def _input_amax(op: SparseOp) -> float | None:
    """The amax an int8 layer quantizes its input with; None for a float layer."""
    quantizer = getattr(op.module, "_input_quantizer", None)
    if not _enabled(quantizer):
        return None
    values = _amax_values(quantizer, f"{op.path}._input_quantizer")
    if len(values) != 1:
        raise ScnQuantError(f"{op.path}._input_quantizer: per-tensor amax expected, got {len(values)} values")
    return values[0]


def _consumers(ops: list[SparseOp]) -> dict[int, list[SparseOp]]:
    """Tensor id -> the ops that read it, looking through Relu (it keeps its input's scale)."""
    direct: dict[int, list[SparseOp]] = {}
    for op in ops:
        for tensor in op.inputs:
            direct.setdefault(tensor, []).append(op)

    def resolve(tensor: int) -> list[SparseOp]:
        out = []
        for op in direct.get(tensor, []):
            out.extend(resolve(op.output) if op.kind == "relu" else [op])
        return out

    return {tensor: resolve(tensor) for tensor in direct}


def scn_quant_specs(ops: list[SparseOp]) -> dict[str, ConvQuant | AddQuant]:
    """INT8 spec per conv / add path of a fused, calibrated backbone walk (`walk.walk_backbone`)."""
    missing = _uncalibrated([op for op in ops if op.kind in ("conv", "add")])
    if missing:
        shown = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
        raise ScnQuantError(f"{len(missing)} quantizer(s) enabled but not calibrated (amax is None): {shown}; "
                            "calibrate with `trt-centerpoint ptq` first")
    amax_in = {op.path: _input_amax(op) for op in ops if op.kind in ("conv", "add")}
    consumers = _consumers(ops)

    def output_precision(op: SparseOp) -> str:
        readers = consumers.get(op.output, [])
        ranges = {amax_in.get(r.path) if r.kind in ("conv", "add") else None for r in readers}
        return "int8" if readers and None not in ranges and len(ranges) == 1 else "fp16"

    specs: dict[str, ConvQuant | AddQuant] = {}
    for op in ops:
        if op.kind not in ("conv", "add"):
            continue
        amax = amax_in[op.path]
        precision, out_precision = ("int8" if amax is not None else "fp16"), output_precision(op)
        if op.kind == "add":
            specs[op.path] = AddQuant(amax, amax, precision, out_precision)
            continue
        weight_amax = None
        if amax is not None:
            weight_q = getattr(op.module, "_weight_quantizer", None)
            if not _enabled(weight_q):
                raise ScnQuantError(f"{op.path}: input quantized but weight quantizer disabled (half-quantized conv)")
            weight_amax = tuple(_amax_values(weight_q, f"{op.path}._weight_quantizer"))
        specs[op.path] = ConvQuant(amax, weight_amax, precision, out_precision)
    return specs


def precision_summary(specs: dict[str, ConvQuant | AddQuant]) -> str:
    """One log line: how many layers run int8 / fp16 and write int8 / fp16."""
    layers = Counter(s.precision for s in specs.values())
    outputs = Counter(s.output_precision for s in specs.values())
    return (f"precision: {layers['int8']} layer(s) int8, {layers['fp16']} fp16; outputs {outputs['int8']} int8, "
            f"{outputs['fp16']} fp16")
