"""Point-cloud files: readers for `.bin` / `.npy` frames, folder listing, atomic `.bin` writer.

Formats:
- `.bin`: raw little-endian float32, `num_features` values per point (4: KITTI x, y, z, intensity;
  5: nuScenes x, y, z, intensity, time lag). The config's `voxel.num_point_features` says how many.
- `.npy`: a 2-D floating-point array [N, F] with F >= num_features; only the first `num_features`
  columns are used (extra columns, e.g. a ring index, are ignored and reported in `ReadStats.file_columns`).
  Fewer columns than needed is an error.
An empty (0-byte) file of either kind is a valid frame with 0 points. Rows with a NaN or Inf are dropped
and counted. Every problem with a file is a `UserError` whose one-line message names the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_bytes

__all__ = [
    "POINT_SUFFIXES",
    "PointCloud",
    "ReadStats",
    "describe_layout",
    "iter_frames",
    "list_point_files",
    "read_points",
    "write_points_bin",
]

POINT_SUFFIXES = (".bin", ".npy")
_FEATURE_NAMES = ["x", "y", "z", "intensity", "time lag"]


@dataclass(frozen=True)
class ReadStats:
    num_read: int  # rows in the file
    num_nonfinite: int  # rows dropped because of a NaN / Inf
    file_columns: int  # columns in the file (> num_features for a wide .npy)

    @property
    def num_kept(self) -> int:
        return self.num_read - self.num_nonfinite


@dataclass(frozen=True)
class PointCloud:
    path: Path
    points: np.ndarray  # [N, num_features] float32, finite rows only
    stats: ReadStats

    @property
    def stem(self) -> str:
        return self.path.stem

    def __len__(self) -> int:
        return int(self.points.shape[0])


def describe_layout(num_features: int) -> str:
    """'float32 x 5 per point (x, y, z, intensity, time lag)'."""
    names = _FEATURE_NAMES[:num_features] + [f"f{i}" for i in range(len(_FEATURE_NAMES), num_features)]
    return f"float32 x {num_features} per point ({', '.join(names)})"


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such point-cloud file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a .bin or .npy point-cloud file")
    if path.suffix.lower() not in POINT_SUFFIXES:
        raise UserError(f"{path}: unknown point-cloud extension {path.suffix!r} (expected .bin or .npy)")


def _read_bin(path: Path, num_features: int) -> np.ndarray:
    size = path.stat().st_size
    row_bytes = 4 * num_features
    if size % row_bytes:
        fits = [k for k in range(3, 9) if size % (4 * k) == 0]
        hint = (
            f"; sizes that fit: {', '.join(f'{k} features' for k in fits)}"
            if fits
            else ("; not a whole number of float32 values" if size % 4 else "")
        )
        raise UserError(
            f"{path}: {size} bytes is not a multiple of {row_bytes} "
            f"(expected {describe_layout(num_features)}){hint}"
        )
    data = np.fromfile(path, dtype="<f4")
    return data.reshape(-1, num_features)


def _read_npy(path: Path, num_features: int) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros((0, num_features), dtype=np.float32)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:  # not a .npy, truncated, object array (pickle)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable .npy array: {first}") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{path}: expected a .npy array, got {type(arr).__name__}")
    if arr.ndim != 2:
        raise UserError(f"{path}: expected a 2-D array [N, {num_features}], got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise UserError(f"{path}: expected a floating-point array, got dtype {arr.dtype}")
    if arr.shape[1] < num_features:
        raise UserError(
            f"{path}: has {arr.shape[1]} columns, needs at least {num_features} ({describe_layout(num_features)})"
        )
    return arr


def read_points(path: str | Path, num_features: int) -> PointCloud:
    """Read one frame; returns finite rows as float32 [N, num_features] and the read statistics."""
    path = Path(path)
    if num_features < 3:
        raise ValueError(f"num_features must be >= 3, got {num_features}")
    _check_readable_file(path)
    try:
        if path.suffix.lower() == ".bin":
            raw = _read_bin(path, num_features)
        else:
            raw = _read_npy(path, num_features)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    file_columns = int(raw.shape[1])
    pts = np.ascontiguousarray(raw[:, :num_features], dtype=np.float32)
    finite = np.isfinite(pts).all(axis=1)
    num_bad = int(pts.shape[0] - finite.sum())
    if num_bad:
        pts = pts[finite]
    stats = ReadStats(num_read=int(raw.shape[0]), num_nonfinite=num_bad, file_columns=file_columns)
    return PointCloud(path, pts, stats)


def _point_files_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in POINT_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def list_point_files(path: str | Path) -> list[Path]:
    """A single point file, or the `.bin` / `.npy` files of a folder, sorted by name, non-recursive.

    A folder with no point files but a `points/` subfolder (the layout of generated datasets,
    `DIR/points/<stem>.bin`) is listed from that subfolder. Hidden files are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such point-cloud file or folder")
    if not path.is_dir():
        _check_readable_file(path)
        return [path]
    try:
        files = _point_files_in(path)
        if not files and (path / "points").is_dir():
            files = _point_files_in(path / "points")
    except OSError as exc:
        raise UserError(f"{path}: cannot list folder: {exc.strerror or exc}") from None
    if not files:
        raise UserError(f"{path}: no .bin or .npy point-cloud files in this folder (nor in its points/ subfolder)")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise UserError(
                f"{f.parent}: two point files share the frame name {f.stem!r}: {seen[f.stem].name}, {f.name}"
            )
        seen[f.stem] = f
    return files


def iter_frames(path: str | Path, num_features: int) -> Iterator[tuple[str, np.ndarray, ReadStats]]:
    """Yield `(stem, points [N, num_features] float32, ReadStats)` per file, reading one file at a time.

    The file list is built (and its errors raised) when this is called, not at the first `next()`.
    """
    files = list_point_files(path)

    def frames() -> Iterator[tuple[str, np.ndarray, ReadStats]]:
        for f in files:
            cloud = read_points(f, num_features)
            yield f.stem, cloud.points, cloud.stats

    return frames()


def write_points_bin(path: str | Path, points) -> Path:
    """Write [N, F] points as raw little-endian float32, atomically (temp file in the folder + os.replace)."""
    path = Path(path)
    arr = np.asarray(points)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array [N, F], got shape {arr.shape}")
    return atomic_write_bytes(path, np.ascontiguousarray(arr, dtype="<f4").tobytes())
