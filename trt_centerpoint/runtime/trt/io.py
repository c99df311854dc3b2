"""Name-based engine I/O, shared by the TensorRT runners (numpy only; no TensorRT import).

An engine's I/O is a list of ``TensorSpec`` (name, input or output, numpy dtype, shape with -1 for a dynamic
dimension). ``prepare_feed`` checks a feed against the input specs and casts it to the engine's types, so a
float32 array can be fed to an FP16-I/O engine (``--fp16-io``); outputs come back in the engine's types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trt_centerpoint.errors import UserError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)


class SpecNames:
    """`input_names` / `output_names` of a runner with a `specs` list (both engine runners share them)."""

    specs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs if s.is_input]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.specs if not s.is_input]


def io_specs(engine, trt) -> list[TensorSpec]:
    """The engine's I/O tensors by name (``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``)."""
    specs = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        trt_dtype = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype))
        except Exception:
            raise UserError(f"engine tensor '{name}' has type {trt_dtype}, which numpy cannot hold") from None
        specs.append(TensorSpec(name, is_input, dtype, tuple(int(d) for d in engine.get_tensor_shape(name))))
    return specs


def _cast(array, spec: TensorSpec, where: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != spec.dtype:
        same_kind = (array.dtype.kind in "fc" and spec.dtype.kind == "f") or (
            array.dtype.kind in "iub" and spec.dtype.kind in "iub")
        if not same_kind:
            raise UserError(f"{where}: input '{spec.name}' must be {spec.dtype}, got {array.dtype}")
        array = array.astype(spec.dtype)
    if len(array.shape) != len(spec.shape) or any(
            want >= 0 and want != got for want, got in zip(spec.shape, array.shape)):
        shown = "x".join("?" if d < 0 else str(d) for d in spec.shape)
        raise UserError(f"{where}: input '{spec.name}' must have shape {shown}, got {'x'.join(map(str, array.shape))}")
    return np.ascontiguousarray(array)


def prepare_feed(feed, inputs: list[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """``{name: array}`` (or one array for a one-input engine) -> arrays in the engine's dtypes and order.

    Raises ``UserError`` naming ``where`` (the engine file) for a missing / unknown input, an impossible
    cast (float <-> int) or a shape that contradicts the engine's static dimensions.
    """
    if not isinstance(feed, dict):
        if len(inputs) != 1:
            raise UserError(f"{where}: the engine has {len(inputs)} inputs "
                            f"({', '.join(s.name for s in inputs)}); pass a dict by name")
        feed = {inputs[0].name: feed}
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in feed]
    extra = [n for n in feed if n not in names]
    if missing or extra:
        raise UserError(f"{where}: the engine's inputs are {', '.join(names)}; "
                        + "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                                f"unknown {', '.join(map(str, extra))}" if extra else "") if p))
    return {s.name: _cast(feed[s.name], s, where) for s in inputs}
