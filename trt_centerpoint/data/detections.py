"""The detection JSON every command reads and writes.

`{"<frame stem>": [{"box": [x, y, z, w, l, h, yaw, vx, vy], "score": s, "name": "car"}, ...], ...}`
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_json


def write_detections(path: str | Path, detections: dict[str, list[dict]]) -> Path:
    return atomic_write_json(path, detections)


def read_detections(path: str | Path) -> dict[str, list[dict]]:
    """Read and validate a detection JSON file (one clear error naming the file and the first problem)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: detections file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable detections JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {{frame stem: [detections]}}, got {type(data).__name__}")
    for stem, dets in data.items():
        if not isinstance(dets, list):
            raise UserError(f"{path}: frame {stem!r}: expected a list of detections")
        for i, det in enumerate(dets):
            ok = (
                isinstance(det, dict)
                and isinstance(det.get("box"), list)
                and len(det["box"]) == 9
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in det["box"])
                and isinstance(det.get("score"), (int, float))
                and isinstance(det.get("name"), str)
            )
            if not ok:
                raise UserError(
                    f"{path}: frame {stem!r} detection {i}: expected "
                    '{"box": [9 finite numbers], "score": number, "name": string}'
                )
    return data
