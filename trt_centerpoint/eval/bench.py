"""Latency measurement: per-stage timings over many frames, summarised as percentiles, saved as JSON + PNG.

Why stages: an INT8 speed-up claim is only believable per stage (voxelise, backbone, head, decode), since
a fast backbone can hide behind slow post-processing. Why CUDA events on the GPU: kernels run
asynchronously, so a host clock around a launch measures the launch, not the work; events are read after
one synchronisation at the end of each iteration, so timing does not serialise the stages.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.report.plots import latency_chart

__all__ = ["END_TO_END", "BenchResult", "LatencyStats", "StageTimer", "bench_meta", "run_benchmark", "write_bench"]

END_TO_END = "end_to_end"


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one stage's samples, in milliseconds (percentiles: numpy 'linear')."""

    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    count: int

    @classmethod
    def from_ms(cls, samples) -> LatencyStats:
        arr = np.asarray(list(samples), dtype=np.float64)
        if arr.size == 0:
            raise ValueError("LatencyStats.from_ms: no samples")
        p50, p90, p99 = np.percentile(arr, [50, 90, 99], method="linear")
        return cls(mean_ms=float(arr.mean()), median_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   min_ms=float(arr.min()), max_ms=float(arr.max()), std_ms=float(arr.std()), count=int(arr.size))

    @classmethod
    def from_dict(cls, d: dict) -> LatencyStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def as_dict(self) -> dict:
        return asdict(self)


class StageTimer:
    """Times named stages of each iteration: `with timer.stage("backbone"): ...`, then `end_iteration()`.

    CPU: `time.perf_counter`; end_to_end is the iteration's wall time (begin_iteration - or the first stage -
    to end_iteration). CUDA: a `torch.cuda.Event` pair per stage, read after one synchronise in
    `end_iteration`; end_to_end spans the first stage's start event to the last stage's end event (the
    stages plus the gaps between them on the GPU's timeline). Either way an explicitly timed "end_to_end"
    stage wins. A stage entered twice in one iteration counts the sum.
    """

    def __init__(self, device: str = "cpu"):
        if device not in ("cpu", "cuda"):
            raise UserError(f"bench: device must be 'cpu' or 'cuda', not {device!r}")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise UserError("bench: device 'cuda' asked for, but torch.cuda.is_available() is False "
                                "(no GPU, or a CPU-only PyTorch build); use --device cpu")
        self.device = device
        self.kind = "cuda_events" if device == "cuda" else "perf_counter"
        self.samples: dict[str, list[float]] = {}
        self._pending: list[tuple] = []  # (name, start, end): floats on CPU, events on CUDA
        self._iter_start: float | None = None

    def begin_iteration(self) -> None:
        self._pending = []
        self._iter_start = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._iter_start is None:
            self._iter_start = time.perf_counter()
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._pending.append((name, t0, time.perf_counter()))

    def end_iteration(self) -> dict[str, float]:
        """Record this iteration's stage times (ms, end_to_end included) and return them."""
        wall_end = time.perf_counter()
        times: dict[str, float] = {}
        if self.device == "cuda" and self._pending:
            torch.cuda.synchronize()
            for name, start, end in self._pending:
                times[name] = times.get(name, 0.0) + float(start.elapsed_time(end))
            if END_TO_END not in times:
                times[END_TO_END] = float(self._pending[0][1].elapsed_time(self._pending[-1][2]))
        else:
            for name, t0, t1 in self._pending:
                times[name] = times.get(name, 0.0) + (t1 - t0) * 1e3
            if END_TO_END not in times and self._iter_start is not None:
                times[END_TO_END] = (wall_end - self._iter_start) * 1e3
        for name, ms in times.items():
            self.samples.setdefault(name, []).append(ms)
        self._pending = []
        self._iter_start = None
        return times

    def reset(self) -> None:
        """Forget every recorded iteration (after warm-up)."""
        self.samples = {}
        self._pending = []
        self._iter_start = None

    def stats(self) -> dict[str, LatencyStats]:
        """Per-stage statistics, stages in first-seen order, end_to_end last."""
        order = [n for n in self.samples if n != END_TO_END] + ([END_TO_END] if END_TO_END in self.samples else [])
        return {name: LatencyStats.from_ms(self.samples[name]) for name in order}


@dataclass
class BenchResult:
    stages: dict[str, LatencyStats]
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"stages": {name: s.as_dict() for name, s in self.stages.items()}, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls({name: LatencyStats.from_dict(s) for name, s in d["stages"].items()}, dict(d.get("meta", {})))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def bench_meta(device: str, timer_kind: str) -> dict:
    """What the numbers were measured on: they mean nothing without the machine and the versions."""
    meta = {"device": device, "timer": timer_kind, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    meta["device_name"] = torch.cuda.get_device_name() if device == "cuda" else meta["cpu"]
    return meta


MIN_TIMED_ITERATIONS = 3  # a median and a p90 need a few samples, whatever the time limit


def run_benchmark(run_frame: Callable[[StageTimer, int], None], iterations: int, warmup: int = 10,
                  device: str = "cpu", progress: bool = True, max_seconds: float | None = None) -> BenchResult:
    """Call `run_frame(timer, i)` for `warmup` (discarded) then `iterations` frames; summarise per stage.

    `i` counts from 0 over warm-up and measured frames together, so `run_frame` may cycle through inputs.
    `max_seconds`: stop the timed frames once they took this long (at least MIN_TIMED_ITERATIONS run): a
    nuScenes-size model on CPU takes seconds per frame, and a build should not spend minutes on latency there.
    The meta records how many ran.
    """
    if iterations < 1 or warmup < 0:
        raise UserError(f"bench: need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    timer = StageTimer(device)
    total = warmup + iterations
    timed_start = None
    ran = 0
    for i in range(total):
        if i == warmup:
            timer.reset()
            timed_start = time.perf_counter()
        timer.begin_iteration()
        run_frame(timer, i)
        timer.end_iteration()
        ran = max(0, i + 1 - warmup)
        if (max_seconds is not None and timed_start is not None and ran >= min(iterations, MIN_TIMED_ITERATIONS)
                and time.perf_counter() - timed_start >= max_seconds and ran < iterations):
            if progress:
                print(f"\rbench: {i + 1}/{total} (stopped: the timed frames took {max_seconds:g} s)", file=sys.stderr,
                      flush=True)
            break
        if progress and (i + 1 == total or (i + 1) % max(1, total // 20) == 0):
            phase = "warm-up" if i < warmup else "timed"
            print(f"\rbench: {i + 1}/{total} ({phase})", end="\n" if i + 1 == total else "", file=sys.stderr,
                  flush=True)
    meta = bench_meta(device, timer.kind)
    meta.update(iterations=ran, warmup=warmup)
    if ran < iterations:
        meta.update(iterations_asked=iterations, max_seconds=max_seconds)
    return BenchResult(timer.stats(), meta)


def write_bench(path_json: str | Path, path_png: str | Path, results: dict[str, BenchResult]) -> tuple[Path, Path]:
    """{label: BenchResult} -> JSON ({label: {"stages", "meta"}}) and the latency chart, each atomically."""
    atomic_write_json(path_json, {label: r.as_dict() for label, r in results.items()})
    series = {label: {s: st.as_dict() for s, st in r.stages.items()} for label, r in results.items()}
    latency_chart(path_png, series, title="Latency per stage")
    return Path(path_json), Path(path_png)
