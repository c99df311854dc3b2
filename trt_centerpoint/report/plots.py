"""PNG charts for reports: grouped bars, latency per stage, error histograms.

matplotlib's object-oriented API on the Agg canvas: no pyplot, so no global figure state and no display
needed. Every chart is written atomically and its path returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trt_centerpoint.fileio import atomic_path

__all__ = ["bar_chart", "errors_chart", "latency_chart"]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def bar_chart(path: str | Path, labels: list[str], series: dict[str, list[float]], title: str = "",
              ylabel: str = "") -> Path:
    """Grouped vertical bars, one group per label, one bar per series."""
    n = len(labels)
    fig = _figure(max(6.0, 0.22 * n + 2.0), 5.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    x = np.arange(n)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_chart(path: str | Path, series: dict[str, dict[str, dict]], title: str = "Latency") -> Path:
    """Grouped horizontal bars: one group per stage, one bar per label (median ms), whisker up to p90.

    `series` is {label: {stage: {"median_ms": .., "p90_ms": ..}}}.
    """
    stages: list[str] = []
    for per_stage in series.values():
        stages += [s for s in per_stage if s not in stages]
    k = max(1, len(series))
    fig = _figure(8.0, max(3.0, 0.35 * len(stages) * k + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / k
    y = np.arange(len(stages))
    for i, (label, per_stage) in enumerate(series.items()):
        med = np.array([float(per_stage.get(s, {}).get("median_ms") or 0.0) for s in stages])
        p90 = np.array([float(per_stage.get(s, {}).get("p90_ms") or m) for s, m in zip(stages, med)])
        err = np.vstack([np.zeros_like(med), np.maximum(p90 - med, 0.0)])
        ax.barh(y + (i - (k - 1) / 2) * height, med, height, xerr=err, capsize=2, label=label)
    ax.set_yticks(y)
    ax.set_yticklabels(stages, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms (bar: median, whisker: p90)")
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def errors_chart(path: str | Path, tensors: dict[str, dict]) -> Path:
    """One small histogram of log10 |INT8 - FP32| per output (from tensors[name]["histogram"])."""
    hists = {name: m["histogram"] for name, m in tensors.items() if isinstance(m.get("histogram"), dict)}
    cols = min(3, len(hists))
    rows = -(-len(hists) // cols)
    fig = _figure(4.0 * cols, 2.8 * rows)
    for i, (name, hist) in enumerate(hists.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        edges, counts = hist["edges"], hist["counts"]
        ax.bar(edges[:-1], counts, np.diff(edges), align="edge")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("log10 |INT8 - FP32|", fontsize=8)
        ax.tick_params(labelsize=7)
    return _save(fig, path)
