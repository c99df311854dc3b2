"""Point-cloud files: readers for `.bin` / `.npy` frames, folder listing, atomic `.bin` writer.

Formats:
- `.bin`: raw little-endian float32, `num_features` values per point (4: KITTI x, y, z, intensity;
  5: nuScenes x, y, z, intensity, time lag). The config's `voxel.num_point_features` says how many.
- `.npy`: a 2-D floating-point array [N, F] with F >= num_features; only the first `num_features`
  columns are used (extra columns, e.g. a ring index, are ignored and reported in `ReadStats.file_columns`).
  Fewer columns than needed is an error.
An empty (0-byte) file of either kind is a valid frame with 0 points. Rows with a NaN or Inf are dropped
and counted. Every problem with a file is a `UserError` whose one-line message names the file.

Other sources (`layout`, see `POINT_LAYOUTS`): a raw nuScenes `LIDAR_TOP` sweep (`*.pcd.bin`, chosen by its
name) is float32 x 5 whose 5th column is the laser's ring index 0..31, not a time lag: it becomes time lag 0
(one sweep), with a note, and its frame name drops `.pcd`. A KITTI velodyne `.bin` (`layout="kitti"`) is
float32 x 4 with intensity 0..1: intensity is scaled by 255 (the nuScenes range the models were trained on)
and a zero time lag is appended for 5-feature models.

Shape sanity: raw float32 has no header, so a file read with the wrong column count (a 4-column KITTI frame
read as 5, a text file whose size happens to divide) gives garbage that still "fits". The columns are checked
for what LiDAR points look like (`check_columns`) and a misfit is refused, naming the layout it fits instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_bytes

__all__ = [
    "POINT_LAYOUTS",
    "POINT_SUFFIXES",
    "PointCloud",
    "ReadStats",
    "check_columns",
    "describe_layout",
    "frame_name",
    "iter_frames",
    "list_point_files",
    "read_points",
    "set_point_layout",
    "write_points_bin",
]

POINT_SUFFIXES = (".bin", ".npy")
RAW_SWEEP_SUFFIX = ".pcd.bin"
_FEATURE_NAMES = ["x", "y", "z", "intensity", "time lag"]
# what a file holds: "auto" = the model's own columns, or a raw nuScenes sweep when named *.pcd.bin
POINT_LAYOUTS = ("auto", "kitti")
# The layout files are read with when a caller does not say: the CLI sets it once per command from
# `--point-layout` (like the thread count), so every stage of a run reads frames the same way.
_default_layout = ["auto"]


def set_point_layout(layout: str) -> None:
    """The layout `read_points` uses when none is given (one of POINT_LAYOUTS)."""
    if layout not in POINT_LAYOUTS:
        raise UserError(f"--point-layout {layout}: choose from {', '.join(POINT_LAYOUTS)}")
    _default_layout[0] = layout

KITTI_INTENSITY_SCALE = 255.0  # KITTI reflectance 0..1 -> the 0..255 of nuScenes-trained models
MAX_TIME_LAG_S = 2.0  # 10 nuScenes sweeps span 0.45 s; anything past 2 s is not a time lag


@dataclass(frozen=True)
class ReadStats:
    num_read: int  # rows in the file
    num_nonfinite: int  # rows dropped because of a NaN / Inf
    file_columns: int  # columns in the file (> num_features for a wide .npy)
    note: str = ""  # how the file was read when it is not the model's own layout (raw sweep, KITTI)

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
        return frame_name(self.path)

    def __len__(self) -> int:
        return int(self.points.shape[0])


def describe_layout(num_features: int) -> str:
    """'float32 x 5 per point (x, y, z, intensity, time lag)'."""
    names = _FEATURE_NAMES[:num_features] + [f"f{i}" for i in range(len(_FEATURE_NAMES), num_features)]
    return f"float32 x {num_features} per point ({', '.join(names)})"


def frame_name(path: str | Path) -> str:
    """The frame a point file holds: its name without the extension, and without `.pcd` for a raw nuScenes
    sweep (`n008-...__LIDAR_TOP__1533151603547590.pcd.bin` -> `n008-...__LIDAR_TOP__1533151603547590`)."""
    path = Path(path)
    if path.name.lower().endswith(RAW_SWEEP_SUFFIX):
        return path.name[: -len(RAW_SWEEP_SUFFIX)]
    return path.stem


def _is_raw_sweep(path: Path) -> bool:
    return path.name.lower().endswith(RAW_SWEEP_SUFFIX)


def _misfit(cols: np.ndarray) -> str:
    """Why `cols` (rows of x, y, z[, intensity[, time lag]]) do not look like LiDAR points; "" when they do.

    Thresholds are loose on purpose (real frames pass with a wide margin; garbage fails by a wide margin):
    coordinates in metres (not ~0 like the bytes of text or small integers read as float32, not astronomic),
    intensity >= 0, time lag within 0..2 s. 1 % of odd rows is tolerated (sensor artefacts)."""
    if len(cols) == 0:
        return ""
    sample = cols[:: max(1, len(cols) // 20000)].astype(np.float64)
    xyz = sample[:, :3]
    odd = ((np.abs(xyz) < 1e-6) & (xyz != 0)) | (np.abs(xyz) > 1e5)
    if odd.mean() > 0.5:
        return "most coordinates are not metres (|v| < 1e-6 or > 1e5): not float32 point data"
    if sample.shape[1] > 3 and (sample[:, 3] < 0).mean() > 0.01:
        return f"{(sample[:, 3] < 0).mean():.0%} of the intensities are negative"
    if sample.shape[1] > 4:
        lag = sample[:, 4]
        outside = ((lag < -0.01) | (lag > MAX_TIME_LAG_S)).mean()
        if outside > 0.01:
            if np.all(lag == np.round(lag)) and lag.min() >= 0 and lag.max() <= 255:
                return (f"the 5th column holds whole numbers {int(lag.min())}..{int(lag.max())}, a ring index, not a "
                        "time lag: a raw nuScenes sweep (name it *.pcd.bin to read it as one sweep, or aggregate "
                        "sweeps with `trt-centerpoint convert nuscenes`)")
            return f"{outside:.0%} of the time lags are outside 0..{MAX_TIME_LAG_S:g} s"
    return ""


def _roughness(cols: np.ndarray) -> float:
    """Median jump between consecutive points relative to the frame's spread. A scan is stored beam by beam, so
    neighbours in the file are neighbours in space (small); columns read with the wrong count mix x, y, z and
    intensity from row to row (about 1)."""
    xyz = cols[:20000, :3].astype(np.float64)
    if len(xyz) < 3:
        return 0.0
    step = np.median(np.abs(np.diff(xyz, axis=0)).sum(axis=1))
    return float(step / (np.median(np.abs(xyz - np.median(xyz, axis=0)).sum(axis=1)) + 1e-9))


def _likely_layout(path: Path, size: int, wrong: int) -> str:
    """The column count other than `wrong` under which the .bin reads as plausible points (the smoothest scan
    when several do), described for the error message; "" when none does."""
    fits = []
    for k in range(3, 7):
        if k == wrong or size % (4 * k):
            continue
        cols = np.fromfile(path, dtype="<f4").reshape(-1, k)
        cols = cols[np.isfinite(cols).all(axis=1)][:, : min(k, 5)]
        why = _misfit(cols)
        if why and "ring index" not in why:
            continue
        if "ring index" in why:
            what = "float32 x 5 per point (x, y, z, intensity, ring index): a raw nuScenes sweep (name it *.pcd.bin)"
        elif k == 4:
            what = f"{describe_layout(4)}, e.g. KITTI velodyne (--point-layout kitti)"
        else:
            what = describe_layout(k)
        fits.append((_roughness(cols), what))
    return min(fits)[1] if fits else ""


def check_columns(path: Path, cols: np.ndarray, size: int | None = None) -> None:
    """Refuse columns that do not look like LiDAR points (`_misfit`), naming the layouts that would fit."""
    why = _misfit(cols)
    if not why:
        return
    hint = ""
    if size is not None and "ring index" not in why:
        likely = _likely_layout(path, size, cols.shape[1])
        hint = f"; it reads as {likely}" if likely else "; no float32 layout of 3-6 columns fits it"
    raise UserError(f"{path}: does not look like {describe_layout(cols.shape[1])}: {why}{hint}")


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
        kitti = " (4: KITTI velodyne? --point-layout kitti)" if 4 in fits else ""
        hint = (
            f"; sizes that fit: {', '.join(f'{k} features' for k in fits)}{kitti}"
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
        hint = "; a KITTI frame (x, y, z, intensity 0..1)? use --point-layout kitti" if arr.shape[1] == 4 else ""
        raise UserError(
            f"{path}: has {arr.shape[1]} columns, needs at least {num_features} ({describe_layout(num_features)}){hint}"
        )
    return arr


def _to_model_columns(raw: np.ndarray, num_features: int, path: Path, layout: str) -> tuple[np.ndarray, str]:
    """A raw sweep's or a KITTI frame's columns -> the model's (x, y, z, intensity, time lag), and the note."""
    if _is_raw_sweep(path):
        pts = raw[:, :5].copy()
        pts[:, 4] = 0.0
        return pts[:, :num_features], (f"{path}: a raw nuScenes sweep: its 5th column (ring index) is replaced by "
                                       "time lag 0 (one sweep; the model was trained on 10 aggregated sweeps)")
    if layout == "kitti":
        pts = np.zeros((len(raw), max(num_features, 4)), np.float32)
        pts[:, :4] = raw[:, :4]
        pts[:, 3] *= KITTI_INTENSITY_SCALE
        return pts[:, :num_features], (f"{path}: KITTI layout: intensity x {KITTI_INTENSITY_SCALE:g}"
                                       + (", time lag 0" if num_features > 4 else ""))
    return raw[:, :num_features], ""


def _file_columns(path: Path, num_features: int, layout: str) -> int:
    if _is_raw_sweep(path):
        return 5
    return 4 if layout == "kitti" else num_features


def read_points(path: str | Path, num_features: int, layout: str | None = None) -> PointCloud:
    """Read one frame; returns finite rows as float32 [N, num_features] and the read statistics.

    `layout` "auto": the model's own columns, or a raw nuScenes sweep when the name ends in `.pcd.bin`;
    "kitti": float32 x 4 with intensity 0..1 (module doc); None: the one `set_point_layout` chose."""
    path = Path(path)
    layout = _default_layout[0] if layout is None else layout
    if num_features < 3:
        raise ValueError(f"num_features must be >= 3, got {num_features}")
    if layout not in POINT_LAYOUTS:
        raise ValueError(f"layout must be one of {POINT_LAYOUTS}, got {layout!r}")
    _check_readable_file(path)
    columns = _file_columns(path, num_features, layout)
    try:
        if path.suffix.lower() == ".bin":
            raw = _read_bin(path, columns)
        else:
            raw = _read_npy(path, columns)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    file_columns = int(raw.shape[1])
    finite = np.isfinite(raw[:, :columns]).all(axis=1)
    num_bad = int(raw.shape[0] - finite.sum())
    kept = raw[finite] if num_bad else raw
    if _is_raw_sweep(path):
        check_columns(path, kept[:, :4])  # the 5th column is a ring index here, checked by its own rule below
        ring = kept[:, 4] if len(kept) else kept[:, :0]
        if len(ring) and not (np.all(ring == np.round(ring)) and ring.min() >= 0 and ring.max() <= 255):
            raise UserError(f"{path}: named like a raw nuScenes sweep (*.pcd.bin) but its 5th column is not a ring "
                            "index (whole numbers 0..255): rename it .bin if it is already a time lag")
    else:
        check_columns(path, kept[:, : min(columns, 5)], path.stat().st_size if path.suffix.lower() == ".bin" else None)
    pts, note = _to_model_columns(kept, num_features, path, layout)
    pts = np.ascontiguousarray(pts, dtype=np.float32)
    stats = ReadStats(num_read=int(raw.shape[0]), num_nonfinite=num_bad, file_columns=file_columns, note=note)
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
        name = frame_name(f)
        if name in seen:
            raise UserError(f"{f.parent}: two point files share the frame name {name!r}: {seen[name].name}, {f.name}")
        seen[name] = f
    return files


def iter_frames(path: str | Path, num_features: int, layout: str | None = None
                ) -> Iterator[tuple[str, np.ndarray, ReadStats]]:
    """Yield `(stem, points [N, num_features] float32, ReadStats)` per file, reading one file at a time.

    The file list is built (and its errors raised) when this is called, not at the first `next()`.
    """
    files = list_point_files(path)

    def frames() -> Iterator[tuple[str, np.ndarray, ReadStats]]:
        for f in files:
            cloud = read_points(f, num_features, layout)
            yield cloud.stem, cloud.points, cloud.stats

    return frames()


def write_points_bin(path: str | Path, points) -> Path:
    """Write [N, F] points as raw little-endian float32, atomically (temp file in the folder + os.replace)."""
    path = Path(path)
    arr = np.asarray(points)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array [N, F], got shape {arr.shape}")
    return atomic_write_bytes(path, np.ascontiguousarray(arr, dtype="<f4").tobytes())
