"""The build directory's record (`manifest.json`): per stage, what went in, what came out, with hashes.

A stage is up to date when its recorded inputs (file hashes and parameters) equal the current ones and
every recorded output still exists with its recorded hash. Deleting or changing one artifact therefore
reruns exactly the stages that produced or consumed it. The manifest itself is written atomically after
every stage, so an interrupted build leaves a consistent record of what finished.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from trt_centerpoint.artifacts import MANIFEST
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_json

TRACKED_PACKAGES = ("trt-centerpoint", "torch", "spconv", "pytorch-quantization", "onnx", "onnxruntime",
                    "onnx-graphsurgeon", "polygraphy", "tensorrt")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_sha256(obj) -> str:
    """Hash of a JSON-able value, independent of key order (a config, a parameter set)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Hash of a file, or of a folder's files (relative names + contents), for data-set inputs."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class StageRecord:
    inputs: dict[str, str]  # name -> sha256 of a file / folder
    params: dict  # JSON-able options that change the result
    outputs: dict[str, str]  # file name (relative to the build dir) -> sha256
    seconds: float = 0.0
    finished: str = ""
    extra: dict = field(default_factory=dict)  # what the stage wants to report (pass log, metrics)


class Manifest:
    """`manifest.json` in a build directory: load, check a stage, record a stage."""

    def __init__(self, build_dir: str | Path):
        self.dir = Path(build_dir)
        self.path = self.dir / MANIFEST
        self.stages: dict[str, StageRecord] = {}
        self.versions = library_versions()
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.stages = {k: StageRecord(**v) for k, v in data.get("stages", {}).items()}
            except (json.JSONDecodeError, TypeError, AttributeError) as exc:
                raise UserError(f"{self.path}: unreadable manifest ({exc}); delete it to rebuild everything") from None

    def up_to_date(self, stage: str, inputs: dict[str, str], params: dict) -> bool:
        rec = self.stages.get(stage)
        if rec is None or rec.inputs != inputs or rec.params != json.loads(json.dumps(params)):
            return False
        for name, digest in rec.outputs.items():
            out = self.dir / name
            if not out.is_file() or file_sha256(out) != digest:
                return False
        return True

    def record(self, stage: str, inputs: dict[str, str], params: dict, outputs: list[str],
               seconds: float, extra: dict | None = None) -> StageRecord:
        rec = StageRecord(
            inputs=inputs,
            params=json.loads(json.dumps(params)),
            outputs={name: file_sha256(self.dir / name) for name in outputs},
            seconds=round(seconds, 3),
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            extra=extra or {},
        )
        self.stages[stage] = rec
        self.save()
        return rec

    def output_hash(self, stage: str, name: str) -> str | None:
        rec = self.stages.get(stage)
        return rec.outputs.get(name) if rec else None

    def save(self) -> None:
        atomic_write_json(self.path, {
            "versions": self.versions,
            "stages": {k: vars(v) for k, v in self.stages.items()},
        })
