"""Run a TensorRT engine (``rpn_head*.plan``) through Polygraphy's ``TrtRunner``.

    with TrtEngineRunner("build/rpn_head.int8.plan") as head:
        outputs = head({"input": bev})          # {output name: numpy array}

``make_trt_runner(plan)`` gives the bare Polygraphy runner, lazily loaded, for ``Comparator.run``.
``last_inference_time()`` is Polygraphy's host wall time, copies included (not GPU-only latency; the
pycuda runner measures that with CUDA events). Outputs are copies in the engine's dtypes (FP16 for an
``--fp16-io`` engine); float32 inputs are cast to FP16 for such an engine.

Everything TensorRT-related is imported when a runner is made: without TensorRT the constructor raises
``UserError`` in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trt_centerpoint.engine.trt_env import _import, require_tensorrt
from trt_centerpoint.engine.trt_io import SpecNames, TensorSpec, io_specs, prepare_feed
from trt_centerpoint.errors import UserError


def _check_plan(plan_path) -> Path:
    path = Path(plan_path)
    if not path.is_file():
        raise UserError(f"{path}: no such engine file")
    return path


def engine_loader(plan_path):
    """Polygraphy loader chain ``EngineFromBytes(BytesFromPath(plan))``: deserializes when called."""
    path = _check_plan(plan_path)
    require_tensorrt(f"load {path.name}")
    common = _import("polygraphy.backend.common")
    loaders = _import("polygraphy.backend.trt")
    return loaders.EngineFromBytes(common.BytesFromPath(str(path)))


def make_trt_runner(plan_path, name: str | None = None):
    """An inactive Polygraphy ``TrtRunner`` for ``plan_path`` (for ``Comparator.run``)."""
    path = _check_plan(plan_path)
    require_tensorrt(f"run {path.name}")
    loaders = _import("polygraphy.backend.trt")
    return loaders.TrtRunner(engine_loader(path), name=name or path.stem)


class TrtEngineRunner(SpecNames):
    """A TensorRT engine as ``feed -> {output: array}``; activates on first use, ``close()`` releases it."""

    def __init__(self, plan_path, name: str | None = None):
        self.path = _check_plan(plan_path)
        self._trt = require_tensorrt(f"run {self.path.name}")
        self.name = name or self.path.stem
        self.runner = make_trt_runner(self.path, name=self.name)
        self._specs: list[TensorSpec] | None = None

    # lifecycle
    def activate(self) -> "TrtEngineRunner":
        if not self.runner.is_active:
            self.runner.activate()
            self._specs = io_specs(self.runner.engine, self._trt)
        return self

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.close()

    # I/O
    @property
    def specs(self) -> list[TensorSpec]:
        self.activate()
        return list(self._specs)

    def infer(self, feed) -> dict[str, np.ndarray]:
        """``{"input": array}`` (or the array alone) -> ``{output name: array}`` (copies)."""
        self.activate()
        arrays = prepare_feed(feed, [s for s in self._specs if s.is_input], str(self.path))
        outputs = self.runner.infer(arrays)
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    __call__ = infer

    def last_inference_time(self) -> float | None:
        """Seconds of the last ``infer`` as Polygraphy measures it (host wall time, copies included)."""
        return self.runner.last_inference_time()
