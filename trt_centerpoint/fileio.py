"""Atomic file writes: every artifact is written to a temporary name in its folder, then renamed.

An interrupted run therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trt_centerpoint.errors import UserError

_UMASK = os.umask(0)  # read once: mkstemp creates 0600 files, artifacts get the usual 0666 & ~umask
os.umask(_UMASK)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (and its parents) or say in one line why it cannot be: checked before a command starts its
    work, so a bad --out fails in a second, not after minutes of export."""
    path = check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a race with another process, or a read-only file system
        raise UserError(f"{path}: cannot create the {what}: {exc.strerror or exc}") from None
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """`ensure_dir`'s checks without creating anything: for commands that must leave no folder behind when they
    fail later on their input."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: the {what} is a file, not a folder")
        existing = path
    else:
        existing = next((p for p in path.parents if p.exists()), Path("."))
        if not existing.is_dir():
            raise UserError(f"{path}: cannot create the {what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{path}: cannot create the {what}: {existing} is not writable")
    return path


def ensure_parent(path: str | Path, what: str = "output file") -> Path:
    """`check_output_dir` for the folder of an output file (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: the {what} is a folder")
    check_output_dir(path.parent, f"folder of the {what}")
    return path


def disk_full(path: Path, exc: OSError, size: int | None = None) -> UserError:
    """ENOSPC as one line naming the folder (and the bytes that did not fit, when known)."""
    need = f" ({size:,} bytes to write)" if size is not None else ""
    return UserError(f"{path.parent}: no space left on the device while writing {path.name}{need}: "
                     f"{exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on failure removed. A full
    disk becomes a `UserError` (`size`: the bytes being written, for its message)."""
    path = Path(path)
    ensure_dir(path.parent, "output folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise (disk_full(path, exc, size) if exc.errno in NO_SPACE else exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise disk_full(path, exc, size) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable_dir(path: str | Path, force: bool, what: str) -> Path:
    """A folder `atomic_dir` may write `what` into: absent, empty, or non-empty with `force` (then replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path}: exists and is not empty; give --force to replace it ({what} is written whole)")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; on success it becomes `path` (an existing one is replaced
    only once the new one is complete, with `replace`), on failure it is removed: a folder appears whole or not
    at all. Its mode is the usual 0777 & ~umask, not mkdtemp's 0700."""
    path = Path(path)
    ensure_dir(path.parent, "parent folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.is_dir() and replace:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(old / path.name)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_files_together(folder: str | Path, files: dict[str, bytes]) -> list[Path]:
    """Write several files so that they appear together or not at all: all go into a temporary folder inside
    `folder` first (a full disk fails there, leaving nothing), then each is renamed into place (renames
    need no space)."""
    folder = ensure_dir(folder)
    total = sum(len(data) for data in files.values())
    try:
        staging = Path(tempfile.mkdtemp(prefix=".files.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise (disk_full(folder / "(staging)", exc, total) if exc.errno in NO_SPACE else exc) from None
    try:
        for name, data in files.items():
            try:
                (staging / name).write_bytes(data)
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise UserError(f"{folder}: no space left on the device for {len(files)} files "
                                    f"({total:,} bytes): {exc.strerror}; nothing was written") from None
                raise
            os.chmod(staging / name, 0o666 & ~_UMASK)
        written = []
        for name in files:
            os.replace(staging / name, folder / name)
            written.append(folder / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """NaN / Inf -> None (JSON null), recursively: strict JSON that every parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n")
