"""`trt-centerpoint bench`: latency per stage (voxelize, backbone, rpn_head, decode + NMS) and end to end.

Each backend x precision runs the same frames (cycled) through `runtime.pipeline.Pipeline`, timed by
`eval.bench.StageTimer`: perf_counter on CPU, CUDA events when the pipeline runs on a GPU (trt).
Results: `bench.json` ({label: {"stages", "meta"}}) and `bench.png`.

What the CPU figures are: the speed of this machine's reference executors (spconv's CPU conv for the
scn files, ONNX Runtime's CPU kernels for the head), useful to compare backends and see where time goes
here; an INT8 *speed-up* needs TensorRT on a GPU (the trt backend), since the reference runner computes
INT8 as fake quant in FP32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trt_centerpoint.artifacts import BENCH_JSON, BENCH_PNG, PRECISIONS
from trt_centerpoint.config import ModelConfig
from trt_centerpoint.data.frames import load_frames
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.bench import run_benchmark, write_bench
from trt_centerpoint.manifest import library_versions
from trt_centerpoint.runtime.pipeline import BACKENDS, make_pipeline

DEFAULT_ITERATIONS, DEFAULT_WARMUP, BENCH_FRAMES = 20, 3, 8

__all__ = ["latency_section", "run_bench"]


def latency_section(results: dict) -> dict:
    """`{backend: {precision: {stage: stats}}, "meta": {...}}` (the report's `latency`) from write_bench's
    {"backend/precision": BenchResult}."""
    section: dict = {}
    settings: dict = {}
    meta = None
    for label, result in results.items():
        backend, precision = label.split("/")
        section.setdefault(backend, {})[precision] = {s: st.as_dict() for s, st in result.stages.items()}
        meta = meta or result.meta
        settings[label] = {k: v for k, v in result.meta.items() if not isinstance(v, dict)}
    section["meta"] = meta or {}
    section["settings"] = settings  # per column: each backend x precision was measured on its own
    return section


def run_bench(cfg: ModelConfig, artifacts: str | Path | None, data: str | Path, *, out: str | Path | None = None,
              backends=("onnx",), precisions=PRECISIONS, checkpoint=None, iterations: int = DEFAULT_ITERATIONS,
              warmup: int = DEFAULT_WARMUP, frames: int = BENCH_FRAMES, progress: bool = True,
              log: Callable[[str], None] = print, allow_overflow: bool = False,
              max_seconds: float | None = None) -> dict:
    """Time every backend x precision; write bench.json + bench.png to `out` (default `artifacts`)."""
    for backend in backends:
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend}: choose from {', '.join(BACKENDS)}")
    if out is None and artifacts is None:
        raise UserError(f"bench: give --artifacts (or --out) for {BENCH_JSON}")
    out = Path(out if out is not None else artifacts)
    points = [p for p in load_frames(data, cfg, frames).points]
    if not points:
        raise UserError(f"{data}: no point files")
    # every pipeline first: a missing file fails in seconds, not after the other benchmarks ran
    pipes = {(b, p): make_pipeline(cfg, b, p, checkpoint=checkpoint, artifacts=artifacts,
                                   allow_overflow=allow_overflow)
             for b in backends for p in precisions}
    results = {}
    for (backend, precision), pipe in pipes.items():
        label = f"{backend}/{precision}"
        with pipe:
            result = run_benchmark(lambda timer, i, pipe=pipe: pipe.detect(points[i % len(points)], timer),
                                   iterations, warmup, device="cuda" if backend in ("trt", "libspconv") else "cpu",
                                   progress=progress, max_seconds=max_seconds)
        result.meta.update(backend=backend, precision=precision, frames=len(points), versions=library_versions())
        results[label] = result
        stages = ", ".join(f"{s} {st.median_ms:.1f}" for s, st in result.stages.items())
        log(f"bench {label}: median ms {stages}")
    write_bench(out / BENCH_JSON, out / BENCH_PNG, results)
    return latency_section(results)
