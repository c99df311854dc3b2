"""INT8 attributes of the scn dialect, as plain values the exporter takes (calibration fills them in).

Why separate: the float export must not depend on calibration, but the INT8 export has to add exactly
these attributes (the ones libspconv's ONNX parser reads): per SparseConvolution `input_dynamic_range` (input amax),
`weight_dynamic_ranges` (per-output-channel weight amax, length out_channels), `precision`,
`output_precision`; per Add `input0_dynamic_range`, `input1_dynamic_range`, `precision`,
`output_precision`; and ScatterDense's optional `input_dynamic_range`. libspconv's scale is amax / 127.
Specs are keyed by the module path in the (unfused) backbone, e.g. "conv2.0", "conv2.3.add".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trt_centerpoint.errors import UserError

PRECISIONS = ("int8", "fp16")

__all__ = ["PRECISIONS", "AddQuant", "ConvQuant", "Int8SpecError", "check_amax"]


class Int8SpecError(UserError, ValueError):
    """A range or precision that libspconv cannot take (NaN, wrong length, unknown precision)."""


def check_amax(value, what: str) -> float:
    """A finite amax >= 0 as float, or Int8SpecError naming `what`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise Int8SpecError(f"{what}: amax must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise Int8SpecError(f"{what}: amax must be finite and >= 0, got {value}")
    return value


def _check_precision(value: str, what: str) -> None:
    if value not in PRECISIONS:
        raise Int8SpecError(f"{what}: precision must be one of {', '.join(PRECISIONS)}, got {value!r}")


@dataclass(frozen=True)
class ConvQuant:
    """INT8 attributes of one SparseConvolution; amax may be None only for an fp16 layer."""

    input_amax: float | None
    weight_amax: tuple[float, ...] | None
    precision: str = "int8"
    output_precision: str = "int8"

    def attributes(self, path: str, out_channels: int) -> dict:
        _check_precision(self.precision, f"{path}.precision")
        _check_precision(self.output_precision, f"{path}.output_precision")
        attrs = {"precision": self.precision, "output_precision": self.output_precision}
        if self.input_amax is None or self.weight_amax is None:
            if self.precision == "int8":
                raise Int8SpecError(f"{path}: int8 layer without input / weight ranges (not calibrated)")
            return attrs
        weights = [check_amax(v, f"{path}.weight_amax[{i}]") for i, v in enumerate(self.weight_amax)]
        if len(weights) != out_channels:
            raise Int8SpecError(f"{path}: {len(weights)} weight ranges for {out_channels} output channels")
        attrs["input_dynamic_range"] = check_amax(self.input_amax, f"{path}.input_amax")
        attrs["weight_dynamic_ranges"] = weights
        return attrs


@dataclass(frozen=True)
class AddQuant:
    """INT8 attributes of one residual Add (QuantAdd: both inputs usually share one amax)."""

    input0_amax: float | None
    input1_amax: float | None
    precision: str = "int8"
    output_precision: str = "int8"

    def attributes(self, path: str) -> dict:
        _check_precision(self.precision, f"{path}.precision")
        _check_precision(self.output_precision, f"{path}.output_precision")
        attrs = {"precision": self.precision, "output_precision": self.output_precision}
        if self.input0_amax is None or self.input1_amax is None:
            if self.precision == "int8":
                raise Int8SpecError(f"{path}: int8 add without input ranges (not calibrated)")
            return attrs
        attrs["input0_dynamic_range"] = check_amax(self.input0_amax, f"{path}.input0_amax")
        attrs["input1_dynamic_range"] = check_amax(self.input1_amax, f"{path}.input1_amax")
        return attrs
