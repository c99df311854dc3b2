"""Polygraphy 0.53.6 with trt_centerpoint's workarounds: the CPU PyTorch runner, the compare function, the logger."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import polygraphy.comparator as comparator
import pytest
import torch
from polygraphy.backend.pyt import PytRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER
from polygraphy.logger import logger as logger_module

from trt_centerpoint._compat import polygraphy as compat
from trt_centerpoint._compat.polygraphy import (
    CpuPytRunner,
    PytorchRunner,
    needs_cpu_pyt_runner,
    quiet_logger,
    simple_compare_func,
)


class _Net(torch.nn.Module):
    """A conv + ReLU returning its outputs as a tuple, as Polygraphy's PyTorch runner expects."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return (torch.relu(self.conv(x)),)


def _module():
    return _Net().eval()


def _runner(cls, module, name="pytorch"):
    meta = TensorMetadata().add("x", np.float32, [1, 2, 4, 4])
    return cls(lambda: module, meta, ["y"], name=name)


def _feed(seed=0):
    return OrderedDict(x=np.random.default_rng(seed).normal(size=(1, 2, 4, 4)).astype(np.float32))


def test_version_guard():
    assert needs_cpu_pyt_runner("0.53.6") and needs_cpu_pyt_runner("0.49.0")
    assert not needs_cpu_pyt_runner("0.54.0") and not needs_cpu_pyt_runner("1.0.0")
    assert needs_cpu_pyt_runner("not a version")  # unknown: keep the fix
    assert PytorchRunner is (CpuPytRunner if needs_cpu_pyt_runner() else PytRunner)


def test_cpu_runner_runs_on_cpu_and_reports_its_time():
    module = _module()
    feed = _feed()
    with _runner(CpuPytRunner, module) as runner:
        out = runner.infer(feed)
        assert list(out) == ["y"] and isinstance(out["y"], np.ndarray)
        with torch.no_grad():
            np.testing.assert_array_equal(out["y"], module(torch.from_numpy(feed["x"]))[0].numpy())
        assert runner.last_inference_time() is not None and runner.last_inference_time() >= 0


@pytest.mark.skipif(torch.cuda.is_available() or not needs_cpu_pyt_runner(),
                    reason="the bug shows on a CPU-only PyTorch with a Polygraphy the guard covers")
def test_polygraphy_own_runner_still_needs_the_fix():
    """Where the guard applies, Polygraphy's own PytRunner cannot run on CPU: its infer_impl casts with the
    metadata's Polygraphy DataType (TypeError in numpy) and then calls .cuda() (no CUDA in this torch)."""
    with _runner(PytRunner, _module()) as runner, pytest.raises((TypeError, AssertionError, RuntimeError)):
        runner.infer(_feed())


def test_cpu_runner_plugs_into_comparator():
    module = _module()
    runners = [_runner(CpuPytRunner, module, "a"), _runner(CpuPytRunner, module, "b")]
    with quiet_logger(G_LOGGER.ERROR):
        results = Comparator.run(runners, data_loader=[_feed(0), _feed(1)])
        accuracy = Comparator.compare_accuracy(results, compare_func=simple_compare_func(atol=0.0, rtol=0.0))
    assert list(results.keys()) == ["a", "b"] and len(results["a"]) == 2 and bool(accuracy)


def test_simple_compare_func_falls_back_to_compare_func_simple(monkeypatch):
    assert type(simple_compare_func(atol=1.0, rtol=0.0)).__name__ == "SimpleCompareFunc"
    seen = {}
    monkeypatch.delattr(comparator, "SimpleCompareFunc")
    monkeypatch.setattr(comparator.CompareFunc, "simple", staticmethod(lambda **kw: seen.update(kw) or "old"))
    assert simple_compare_func(atol=1.0, rtol=0.5) == "old" and seen == {"atol": 1.0, "rtol": 0.5}


def test_quiet_logger_hides_the_colored_notice_and_restores(monkeypatch, capsys):
    monkeypatch.setattr(compat, "colored_missing", lambda: True)
    monkeypatch.setattr(logger_module, "COLORED_MODULE_PRESENT", None)  # the notice is printed once per process
    monkeypatch.setattr(logger_module, "has_colors", lambda: pytest.fail("colors were asked for"))
    colors, severity = G_LOGGER.colors, G_LOGGER.module_severity.get()
    with quiet_logger(G_LOGGER.INFO) as log:
        assert log is G_LOGGER and not G_LOGGER.colors
        log.info("hello from polygraphy")
    assert "hello from polygraphy" in capsys.readouterr().out
    assert G_LOGGER.colors == colors and G_LOGGER.module_severity.get() == severity
    with quiet_logger(G_LOGGER.CRITICAL) as log:
        log.info("silenced")
    assert "silenced" not in capsys.readouterr().out


def test_quiet_logger_keeps_colors_where_colored_is_installed(monkeypatch):
    monkeypatch.setattr(compat, "colored_missing", lambda: False)
    monkeypatch.setattr(G_LOGGER, "colors", True)
    with quiet_logger():
        assert G_LOGGER.colors
