"""eval.bench: percentiles, the stage timer on a fake frame of known sleeps, warm-up, JSON + PNG output.

Sleeps are short (2-5 ms) and few; tolerances are one-sided generous, since a shared CPU only ever makes a
sleep longer.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.bench import (
    END_TO_END,
    BenchResult,
    LatencyStats,
    StageTimer,
    run_benchmark,
    write_bench,
)

STAGES = {"voxelize": 2.0, "backbone": 5.0, "decode": 3.0}


def _fake_frame(calls: list[int]):
    def run_frame(timer: StageTimer, i: int) -> None:
        calls.append(i)
        for name, ms in STAGES.items():
            with timer.stage(name):
                time.sleep(ms / 1e3)

    return run_frame


def test_latency_stats_matches_numpy():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    s = LatencyStats.from_ms(samples)
    arr = np.array(samples)
    assert s.median_ms == 4.0 and s.min_ms == 1.0 and s.max_ms == 10.0 and s.count == 7
    assert s.p90_ms == pytest.approx(np.percentile(arr, 90)) and s.p99_ms == pytest.approx(np.percentile(arr, 99))
    assert s.mean_ms == pytest.approx(arr.mean()) and s.std_ms == pytest.approx(arr.std())
    assert LatencyStats.from_dict(s.as_dict()) == s
    with pytest.raises(ValueError):
        LatencyStats.from_ms([])


def test_run_benchmark_medians_order_and_warmup():
    calls: list[int] = []
    result = run_benchmark(_fake_frame(calls), iterations=6, warmup=2, progress=False)
    assert calls == list(range(8))
    assert list(result.stages) == [*STAGES, END_TO_END]
    for name, ms in STAGES.items():
        stats = result.stages[name]
        assert stats.count == 6  # warm-up discarded
        assert ms <= stats.median_ms < ms + 4.0, (name, stats)
    e2e = result.stages[END_TO_END].median_ms
    assert sum(STAGES.values()) <= e2e < sum(STAGES.values()) + 8.0
    assert result.stages["voxelize"].median_ms < result.stages["decode"].median_ms < result.stages["backbone"].median_ms
    assert result.meta["timer"] == "perf_counter" and result.meta["device"] == "cpu"
    assert result.meta["iterations"] == 6 and result.meta["warmup"] == 2 and result.meta["device_name"]


class FakeClock:
    """`time.perf_counter` stand-in that moves only when told: timings become exact, whatever the machine's load."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_end_to_end_is_wall_time_unless_timed_explicitly(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("trt_centerpoint.eval.bench.time.perf_counter", clock)
    timer = StageTimer("cpu")
    timer.begin_iteration()
    with timer.stage("a"):
        clock.sleep(0.002)
    clock.sleep(0.003)  # untimed work between stages still counts end to end
    times = timer.end_iteration()
    assert times["a"] == pytest.approx(2.0) and times[END_TO_END] == pytest.approx(5.0)
    timer.begin_iteration()
    with timer.stage(END_TO_END), timer.stage("a"):
        clock.sleep(0.002)
    clock.sleep(0.003)  # outside the explicit end_to_end stage: not counted
    times = timer.end_iteration()
    assert times[END_TO_END] == pytest.approx(2.0) and timer.samples[END_TO_END][-1] == times[END_TO_END]


def test_repeated_stage_sums():
    timer = StageTimer("cpu")
    for _ in range(2):
        with timer.stage("a"):
            time.sleep(0.002)
    assert timer.end_iteration()["a"] >= 4.0


def test_cuda_without_cuda_is_a_user_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="cuda"):
        StageTimer("cuda")
    with pytest.raises(UserError, match="cuda"):
        run_benchmark(lambda timer, i: None, iterations=1, warmup=0, device="cuda", progress=False)
    with pytest.raises(UserError):
        StageTimer("tpu")


def test_write_bench_round_trip(tmp_path):
    fp32 = run_benchmark(_fake_frame([]), iterations=3, warmup=1, progress=False)
    int8 = BenchResult({k: LatencyStats.from_ms([v.median_ms / 2]) for k, v in fp32.stages.items()}, {"x": 1})
    path_json, path_png = write_bench(tmp_path / "bench.json", tmp_path / "bench.png", {"fp32": fp32, "int8": int8})
    data = json.loads(path_json.read_text())
    assert set(data) == {"fp32", "int8"}
    assert BenchResult.from_dict(data["fp32"]) == fp32
    assert data["int8"]["stages"]["backbone"]["median_ms"] == pytest.approx(fp32.stages["backbone"].median_ms / 2)
    png = path_png.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]


def test_progress_goes_to_stderr(capsys):
    run_benchmark(lambda timer, i: None, iterations=2, warmup=1, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "3/3" in captured.err


def test_max_seconds_stops_the_timed_frames_but_keeps_a_few(monkeypatch):
    """A nuScenes-size model takes seconds per frame on CPU: `max_seconds` caps the timed frames (a fake clock:
    each frame takes 10 s), never below MIN_TIMED_ITERATIONS, and the meta says how many ran."""
    from trt_centerpoint.eval.bench import MIN_TIMED_ITERATIONS, run_benchmark

    clock = FakeClock()
    monkeypatch.setattr("trt_centerpoint.eval.bench.time.perf_counter", clock)

    def frame(timer, i):
        with timer.stage("a"):
            clock.sleep(10.0)

    result = run_benchmark(frame, iterations=20, warmup=2, progress=False, max_seconds=35.0)
    assert result.meta["iterations"] == 4 and result.meta["iterations_asked"] == 20  # 40 s >= 35 s after 4
    result = run_benchmark(frame, iterations=20, warmup=0, progress=False, max_seconds=1.0)
    assert result.meta["iterations"] == MIN_TIMED_ITERATIONS
    result = run_benchmark(frame, iterations=5, warmup=0, progress=False, max_seconds=None)
    assert result.meta["iterations"] == 5 and "iterations_asked" not in result.meta
