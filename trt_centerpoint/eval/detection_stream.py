"""Detections streamed to disk frame by frame: a JSON-lines part file that a killed evaluation resumes from.

A full nuScenes validation split is 6,019 frames, hours on CPUs: the detections of each frame are appended to
``<output>.part.jsonl`` as soon as the frame is done (and flushed, so a killed process loses at most the frame it
was running), instead of living only in memory until the end. The first line is a header with the run's key, a
hash of everything that decides the detections (checkpoint or exported files, data, config, backend, precision):
a rerun with the same key skips the frames the file already holds; a run with another key starts over, so stale
frames of a changed run are never mixed in. The final detection JSON is assembled from the part file, written
atomically, and then the part file is removed.

Layout: ``{"format": FORMAT, "key": "<sha256>", "frames": N}`` then one ``{"stem": "...", "detections": [...]}``
per frame. A half-written last line (the process was killed while writing it) is cut off on resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import json_safe

__all__ = ["FORMAT", "PART_SUFFIX", "DetectionPart", "part_path"]

FORMAT = "trt_centerpoint.detections.part"
PART_SUFFIX = ".part.jsonl"


def part_path(output: str | Path) -> Path:
    """Where the part file of `output` (the metrics or detections file a run writes at the end) lives."""
    output = Path(output)
    return output.with_name(output.name + PART_SUFFIX)


def _line(obj) -> bytes:
    return (json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False) + "\n").encode()


class DetectionPart:
    """The part file of one run (`key`) over `stems` (the frames, in order)."""

    def __init__(self, path: str | Path, key: str, stems: list[str], log: Callable[[str], None] = print):
        self.path, self.key, self.stems, self.log = Path(path), key, list(stems), log
        self._file = None

    def open(self) -> set[str]:
        """Open for appending; returns the stems already done by an earlier run with the same key."""
        done, keep = self._read_done()
        try:
            if keep is None:  # no usable file: a fresh one with this run's header
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
                self._write(_line({"format": FORMAT, "key": self.key, "frames": len(self.stems)}))
                return set()
            self._file = open(self.path, "r+b")  # noqa: SIM115
            self._file.truncate(keep)  # a half-written last line of a killed run
            self._file.seek(keep)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot write the detections part file: {exc.strerror or exc}") from None
        if done:
            self.log(f"resuming from {self.path}: {len(done)} of {len(self.stems)} frame(s) already done")
        return done

    def _read_done(self) -> tuple[set[str], int | None]:
        """(stems done, bytes to keep), or (empty, None) when the file is absent, unreadable or of another run."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return set(), None
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read the detections part file: {exc}") from None
        known, done, keep = set(self.stems), set(), 0
        with handle:
            header = _parse(handle.readline())
            if not (isinstance(header, dict) and header.get("format") == FORMAT and header.get("key") == self.key):
                self.log(f"{self.path}: detections of another run (checkpoint, data or options differ); starting over")
                return set(), None
            keep = handle.tell()
            for raw in handle:
                row = _parse(raw)
                if not (raw.endswith(b"\n") and isinstance(row, dict) and row.get("stem") in known
                        and isinstance(row.get("detections"), list)):
                    break  # the line a killed run was writing: this frame runs again
                done.add(row["stem"])
                keep += len(raw)
        return done, keep

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    def append(self, stem: str, detections: list[dict]) -> None:
        """One finished frame, on disk before the next one starts."""
        try:
            self._write(_line({"stem": stem, "detections": detections}))
        except OSError as exc:  # e.g. a full disk: the frames written so far stay, a rerun resumes after them
            raise UserError(f"{self.path}: cannot append detections: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self) -> dict[str, list[dict]]:
        """{stem: detections} of every frame, in the frames' order (every frame must be done)."""
        rows = {}
        with open(self.path, "rb") as handle:
            handle.readline()
            for raw in handle:
                row = json.loads(raw)
                rows[row["stem"]] = row["detections"]
        missing = [s for s in self.stems if s not in rows]
        if missing:
            raise RuntimeError(f"{self.path}: {len(missing)} frame(s) missing, e.g. {missing[0]}")
        return {s: rows[s] for s in self.stems}

    def remove(self) -> None:
        self.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _parse(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None
