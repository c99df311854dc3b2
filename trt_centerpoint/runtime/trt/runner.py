"""Run a TensorRT engine (``rpn_head*.plan``) as a Polygraphy runner, on Polygraphy's ``TrtRunner``.

    with TrtEngineRunner("build/rpn_head.int8.plan") as head:
        outputs = head.infer({"input": bev})      # {output name: numpy array}

``TrtEngineRunner`` is a Polygraphy ``BaseRunner`` (``Comparator.run`` takes it as it is) that adds, around
the ``TrtRunner`` it holds: feeds checked by name and cast to the engine's types (float32 -> FP16 for an
``--fp16-io`` engine; outputs come back in the engine's types), and outputs returned as copies (Polygraphy
reuses its output buffers). ``last_inference_time()`` is Polygraphy's host wall time, copies included (not
GPU-only latency; the pycuda runner measures that with CUDA events).

Everything TensorRT-related is imported when a runner is made: without TensorRT the constructor raises
``UserError`` in one line.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.env import polygraphy_trt, require_tensorrt
from trt_centerpoint.runtime.trt.io import SpecNames, TensorSpec, io_specs, prepare_feed

__all__ = ["TrtEngineRunner", "engine_loader", "make_trt_runner"]


def _check_plan(plan_path) -> Path:
    path = Path(plan_path)
    if not path.is_file():
        raise UserError(f"{path}: no such engine file")
    return path


def engine_loader(plan_path):
    """Polygraphy loader chain ``EngineFromBytes(BytesFromPath(plan))``: deserializes when called."""
    path = _check_plan(plan_path)
    require_tensorrt(f"load {path.name}")
    common, loaders = polygraphy_trt()
    return loaders.EngineFromBytes(common.BytesFromPath(str(path)))


def make_trt_runner(plan_path, name: str | None = None):
    """An inactive Polygraphy ``TrtRunner`` for ``plan_path``."""
    path = _check_plan(plan_path)
    require_tensorrt(f"run {path.name}")
    _, loaders = polygraphy_trt()
    return loaders.TrtRunner(engine_loader(path), name=name or path.stem)


class TrtEngineRunner(SpecNames, BaseRunner):
    """A TensorRT engine as a Polygraphy runner: ``activate()`` (or ``with``), ``infer(feed)``, ``deactivate()``."""

    is_active = False  # until BaseRunner.__init__ runs: its __del__ reads it even when __init__ raised first

    def __init__(self, plan_path, name: str | None = None):
        self.path = _check_plan(plan_path)
        self._trt = require_tensorrt(f"run {self.path.name}")
        super().__init__(name=name or self.path.stem)
        self.runner = make_trt_runner(self.path, name=self.name)
        self._specs: list[TensorSpec] | None = None

    def activate_impl(self) -> None:
        try:
            self.runner.activate()
        except TypeError as exc:  # the bindings' answer when no runtime can be made (no usable GPU / driver)
            if "nullptr" not in str(exc):
                raise
            raise UserError(f"{self.path}: TensorRT {self._trt.__version__} cannot create a runtime, no usable "
                            f"NVIDIA GPU / driver? ({str(exc).strip()})") from None
        self._specs = io_specs(self.runner.engine, self._trt)

    def deactivate_impl(self) -> None:
        self.runner.deactivate()
        self._specs = None

    @property
    def specs(self) -> list[TensorSpec]:
        """The engine's I/O tensors (while active)."""
        if self._specs is None:
            raise UserError(f"{self.path}: the runner is not active (use `with TrtEngineRunner(...)` or activate())")
        return list(self._specs)

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for spec in self.specs:
            if spec.is_input:
                meta.add(spec.name, spec.dtype, [None if d < 0 else d for d in spec.shape])
        return meta

    def infer(self, feed_dict, check_inputs: bool = True) -> dict[str, np.ndarray]:
        """``{"input": array}`` (or the array alone) -> ``{output name: array}`` (copies); the feed is checked
        and cast to the engine's types first, so float32 feeds an FP16-I/O engine."""
        feed = prepare_feed(feed_dict, [s for s in self.specs if s.is_input], str(self.path))
        return super().infer(feed, check_inputs=check_inputs)


    def infer_impl(self, feed_dict) -> OrderedDict:
        outputs = self.runner.infer(feed_dict)
        self.inference_time = self.runner.last_inference_time()
        return OrderedDict((name, np.array(value, copy=True)) for name, value in outputs.items())
