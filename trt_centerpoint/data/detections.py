"""The detection JSON every command reads and writes.

`{"<frame stem>": [{"box": [x, y, z, w, l, h, yaw, vx, vy], "score": s, "name": "car"}, ...], ...}`
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_json

DETECTION_SHAPE = '{"box": [9 finite numbers x, y, z, w, l, h, yaw, vx, vy], "score": finite number, "name": string}'


def write_detections(path: str | Path, detections: dict[str, list[dict]]) -> Path:
    """Atomically: a reader never sees half a file."""
    return atomic_write_json(path, detections)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_detections(path: str | Path, stems: Collection[str] | None = None) -> dict[str, list[dict]]:
    """Read and check a detection JSON (`eval --detections`): one error naming the file, the frame and the first
    problem, because a malformed file would otherwise fail deep inside the metric. With `stems` (the frames of the
    data set it is scored on), a frame outside them is refused: detections of another data set score as noise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such detections file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the detections file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {{frame stem: [detections]}}, got a JSON {type(data).__name__}")
    known = None if stems is None else set(stems)
    out = {}
    for stem, dets in data.items():
        if known is not None and stem not in known:
            raise UserError(f"{path}: frame {stem!r} is not in the data set ({len(known)} frames)")
        if not isinstance(dets, list):
            raise UserError(f"{path}: frame {stem!r}: expected a list of detections, got {type(dets).__name__}")
        for i, det in enumerate(dets):
            box = det.get("box") if isinstance(det, dict) else None
            if not (isinstance(box, list) and len(box) == 9 and all(_finite_number(v) for v in box)):
                raise UserError(f"{path}: frame {stem!r} detection {i}: 'box' must be 9 finite numbers "
                                f"[x, y, z, w, l, h, yaw, vx, vy], got {box!r}")
            if not (_finite_number(det.get("score")) and isinstance(det.get("name"), str) and det["name"]):
                raise UserError(f"{path}: frame {stem!r} detection {i}: expected {DETECTION_SHAPE}")
        out[stem] = [{"box": [float(v) for v in d["box"]], "score": float(d["score"]), "name": d["name"]}
                     for d in dets]
    return out
