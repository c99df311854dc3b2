"""PNG charts for reports. matplotlib (Agg backend) is imported lazily; without it a plain chart with no
text is drawn with numpy and written by a small PNG encoder, so a report never fails for want of it."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from trt_centerpoint.fileio import atomic_path, atomic_write_bytes

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def bar_chart(path: str | Path, labels: list[str], series: dict[str, list[float]], title: str = "",
              ylabel: str = "") -> Path:
    """Grouped vertical bars, one group per label, one bar per series; written atomically to `path`."""
    try:
        import matplotlib
    except ImportError:
        warnings.warn("matplotlib is not installed: writing a bar chart without text", stacklevel=2)
        return atomic_write_bytes(path, _plain_bar_png(len(labels), series))
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = len(labels)
    fig = Figure(figsize=(max(6.0, 0.22 * n + 2.0), 5.5), dpi=100)
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _plain_bar_png(n: int, series: dict[str, list[float]], height: int = 300) -> bytes:
    k = max(1, len(series))
    bar = 4
    width = max(64, n * (k * bar + 4) + 8)
    img = np.full((height, width, 3), 255, np.uint8)
    values = np.array([list(v) for v in series.values()], dtype=np.float64).reshape(k, n) if n else np.zeros((k, 0))
    values = np.nan_to_num(values)
    span = max(float(np.abs(values).max()) if values.size else 0.0, 1e-12)
    zero = height // 2
    img[zero, :] = 0
    for j in range(n):
        for i in range(k):
            left = 4 + j * (k * bar + 4) + i * bar
            h = round(abs(values[i, j]) / span * (zero - 4))
            top, bottom = (zero - h, zero) if values[i, j] >= 0 else (zero + 1, zero + 1 + h)
            img[top:bottom, left:left + bar - 1] = _COLORS[i % len(_COLORS)]
    return encode_png(img)


def encode_png(img: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> PNG bytes."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
