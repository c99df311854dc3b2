"""Polygraphy on CPU: its CUDA-only PyTorch runner, its renamed compare function and its 'colored' notice.

1. ``PytRunner.infer_impl`` of Polygraphy <= 0.53.6 casts each input with the metadata's Polygraphy
   ``DataType`` (numpy cannot read it: TypeError), moves every input to CUDA (``.cuda()``), so a PyTorch
   model cannot run on CPU, and returns ``(outputs, time)`` where ``BaseRunner.infer`` expects the outputs
   alone (and ``self.inference_time`` set). ``CpuPytRunner`` feeds the arrays as they are (``infer`` has
   checked them against the metadata) on the device of the model's parameters and returns the outputs.
   Version guard: ``PytorchRunner`` is ``CpuPytRunner`` for Polygraphy ``<= 0.53.6`` (the version this
   project was measured with) and Polygraphy's own ``PytRunner`` after it; re-check the bug before
   widening the guard.
2. ``simple_compare_func(...)``: Polygraphy's per-element check (|ref - got| <= atol + rtol * |ref|) is the
   class ``SimpleCompareFunc`` in recent versions, which deprecate ``CompareFunc.simple``; older ones (the
   project accepts >= 0.49) only have ``CompareFunc.simple``. Feature-detected, not version-guarded.
3. Polygraphy prints "[W] 'colored' module is not installed ..." to stdout the first time it logs with
   colours on. ``quiet_logger(severity)`` turns colours off where ``colored`` is missing (only there: it
   changes nothing else) and sets the log severity, restoring both on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import time
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import polygraphy
import torch
from polygraphy import comparator, util
from polygraphy.backend.pyt import PytRunner
from polygraphy.logger import G_LOGGER

__all__ = ["CpuPytRunner", "PytorchRunner", "colored_missing", "library_version", "needs_cpu_pyt_runner",
           "quiet_logger", "simple_compare_func"]

KNOWN_BAD_MAX = (0, 53, 6)  # last Polygraphy version whose PytRunner moves inputs to CUDA


def library_version() -> str:
    return str(getattr(polygraphy, "__version__", "unknown"))


def _parse(version: str) -> tuple[int, ...] | None:
    found = re.match(r"^\s*(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(g) for g in found.groups()) if found else None


def needs_cpu_pyt_runner(version: str | None = None) -> bool:
    """True where Polygraphy's ``PytRunner`` cannot run on CPU (<= 0.53.6, or an unreadable version)."""
    parsed = _parse(version if version is not None else library_version())
    return parsed is None or parsed <= KNOWN_BAD_MAX


class CpuPytRunner(PytRunner):
    """Polygraphy's ``PytRunner`` that feeds the model on the device of its parameters (CPU included)."""

    @util.check_called_by("infer")
    def infer_impl(self, feed_dict):
        device = next(self.model.parameters()).device
        with torch.no_grad():
            inputs = [torch.as_tensor(np.asarray(value)).to(device) for value in feed_dict.values()]
            start = time.perf_counter()
            outputs = self.model(*inputs)
            self.inference_time = time.perf_counter() - start
        return OrderedDict((name, out.cpu().numpy()) for name, out in zip(self.output_names, outputs))


PytorchRunner = CpuPytRunner if needs_cpu_pyt_runner() else PytRunner  # the PyTorch runner to use here


def simple_compare_func(**kwargs):
    """Polygraphy's per-element compare function (``SimpleCompareFunc``, else ``CompareFunc.simple``)."""
    simple = getattr(comparator, "SimpleCompareFunc", None)
    return simple(**kwargs) if simple is not None else comparator.CompareFunc.simple(**kwargs)


def colored_missing() -> bool:
    return importlib.util.find_spec("colored") is None


@contextlib.contextmanager
def quiet_logger(severity: int | None = None) -> Iterator:
    """Polygraphy's logger without the 'colored' notice and, given a `severity`, below it silenced."""
    colors = G_LOGGER.colors
    if colored_missing():
        G_LOGGER.colors = False
    try:
        if severity is None:
            yield G_LOGGER
        else:
            with G_LOGGER.verbosity(severity):
                yield G_LOGGER
    finally:
        G_LOGGER.colors = colors
