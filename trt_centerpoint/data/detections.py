"""The detection JSON every command reads and writes.

`{"<frame stem>": [{"box": [x, y, z, w, l, h, yaw, vx, vy], "score": s, "name": "car"}, ...], ...}`
"""

from __future__ import annotations

from pathlib import Path

from trt_centerpoint.fileio import atomic_write_json


def write_detections(path: str | Path, detections: dict[str, list[dict]]) -> Path:
    """Atomically: a reader never sees half a file."""
    return atomic_write_json(path, detections)

