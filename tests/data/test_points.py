"""Point-cloud readers: .bin / .npy round trips, error messages, NaN handling, folder listing."""

from __future__ import annotations

import numpy as np
import pytest

from trt_centerpoint.data.points import (
    PointCloud,
    ReadStats,
    describe_layout,
    iter_frames,
    list_point_files,
    read_points,
    write_points_bin,
)
from trt_centerpoint.errors import UserError


def cloud(n: int, f: int, seed: int = 0) -> np.ndarray:
    """Points that look like LiDAR: x, y over +-50 m, z near the ground, intensity 0..255, time lag 0 / 0.05 s
    (plus arbitrary extra columns)."""
    rng = np.random.default_rng(seed)
    cols = [rng.uniform(-50, 50, n), rng.uniform(-50, 50, n), rng.normal(-1.0, 1.0, n),
            rng.integers(0, 256, n).astype(float), rng.choice([0.0, 0.05], n)]
    cols += [rng.standard_normal(n) * 20 for _ in range(f - 5)]
    return np.stack(cols[:f], axis=1).astype(np.float32)


@pytest.mark.parametrize("f", [4, 5])
def test_bin_round_trip(tmp_path, f):
    pts = cloud(100, f)
    path = write_points_bin(tmp_path / "frame.bin", pts)
    assert path == tmp_path / "frame.bin" and path.stat().st_size == 100 * f * 4
    assert [p.name for p in tmp_path.iterdir()] == ["frame.bin"]  # no temp file left behind
    pc = read_points(path, f)
    assert isinstance(pc, PointCloud) and pc.stem == "frame" and len(pc) == 100
    assert pc.points.dtype == np.float32 and pc.points.flags.c_contiguous
    np.testing.assert_array_equal(pc.points, pts)
    assert pc.stats == ReadStats(num_read=100, num_nonfinite=0, file_columns=f)
    # Raw little-endian float32, nothing else: the KITTI / nuScenes layout.
    np.testing.assert_array_equal(np.fromfile(path, dtype="<f4").reshape(-1, f), pts)


def test_write_overwrites_and_casts(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    write_points_bin(path, cloud(10, 5).astype(np.float64))
    write_points_bin(path, cloud(3, 5, seed=1).astype(np.float64))
    np.testing.assert_array_equal(read_points(path, 5).points, cloud(3, 5, seed=1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]
    with pytest.raises(ValueError):
        write_points_bin(tmp_path / "b.bin", np.zeros(5))


@pytest.mark.parametrize("extra", [0, 2])
def test_npy_round_trip_and_extra_columns(tmp_path, extra):
    pts = cloud(50, 5 + extra).astype(np.float64)
    np.save(tmp_path / "f.npy", pts)
    pc = read_points(tmp_path / "f.npy", 5)
    assert pc.points.shape == (50, 5) and pc.points.dtype == np.float32
    np.testing.assert_array_equal(pc.points, pts[:, :5].astype(np.float32))
    assert pc.stats.file_columns == 5 + extra
    pc4 = read_points(tmp_path / "f.npy", 4)  # first 4 columns of a 5-column file
    np.testing.assert_array_equal(pc4.points, pts[:, :4].astype(np.float32))


def test_bin_bad_size_message(tmp_path):
    path = tmp_path / "broken.bin"
    cloud(7, 4).tofile(path)  # 112 bytes: a KITTI frame given to a nuScenes config
    with pytest.raises(UserError) as info:
        read_points(path, 5)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and "112 bytes" in msg and "multiple of 20" in msg
    assert "float32 x 5 per point (x, y, z, intensity, time lag)" in msg
    assert "4 features" in msg  # what would fit
    path.write_bytes(b"\0" * 21)
    with pytest.raises(UserError, match="21 bytes.*not a whole number of float32"):
        read_points(path, 5)


def test_describe_layout():
    assert describe_layout(4) == "float32 x 4 per point (x, y, z, intensity)"
    assert describe_layout(5) == "float32 x 5 per point (x, y, z, intensity, time lag)"


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_nonfinite_rows_dropped_and_counted(tmp_path, suffix):
    pts = cloud(20, 5)
    pts[3, 0] = np.nan
    pts[7, 4] = np.inf
    pts[11, 2] = -np.inf
    path = tmp_path / f"f{suffix}"
    if suffix == ".bin":
        write_points_bin(path, pts)
    else:
        np.save(path, pts)
    pc = read_points(path, 5)
    assert pc.stats.num_read == 20 and pc.stats.num_nonfinite == 3 and pc.stats.num_kept == 17
    np.testing.assert_array_equal(pc.points, np.delete(pts, [3, 7, 11], axis=0))


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_empty_file_is_empty_frame(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    pc = read_points(path, 5)
    assert pc.points.shape == (0, 5) and pc.points.dtype == np.float32 and pc.stats.num_read == 0


def test_npy_errors(tmp_path):
    cases = {
        "narrow.npy": (np.zeros((4, 3), np.float32), "3 columns, needs at least 5"),
        "flat.npy": (np.zeros(10, np.float32), "2-D"),
        "ints.npy": (np.zeros((4, 5), np.int32), "dtype int32"),
    }
    for name, (arr, expect) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(UserError, match=expect) as info:
            read_points(tmp_path / name, 5)
        assert name in str(info.value)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    for name in ("obj.npy", "junk.npy"):
        with pytest.raises(UserError, match="not a readable .npy") as info:
            read_points(tmp_path / name, 5)
        assert name in str(info.value)


def test_missing_unknown_and_folder(tmp_path):
    with pytest.raises(UserError, match="no such point-cloud file") as info:
        read_points(tmp_path / "nope.bin", 5)
    assert "nope.bin" in str(info.value)
    (tmp_path / "frame.pcd").write_bytes(b"")
    with pytest.raises(UserError, match="unknown point-cloud extension '.pcd'"):
        read_points(tmp_path / "frame.pcd", 5)
    with pytest.raises(UserError, match="is a folder"):
        read_points(tmp_path, 5)


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_points_bin(tmp_path / "locked.bin", cloud(2, 5))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "fromfile", denied)  # chmod 0 does not stop root
    with pytest.raises(UserError, match="locked.bin: cannot read: Permission denied"):
        read_points(path, 5)


def test_list_point_files(tmp_path):
    for name in ("b.bin", "a.npy", "c.BIN"):
        write_points_bin(tmp_path / name, cloud(1, 5))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.bin").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    write_points_bin(tmp_path / "sub" / "deep.bin", cloud(1, 5))  # not recursive
    assert [p.name for p in list_point_files(tmp_path)] == ["a.npy", "b.bin", "c.BIN"]
    assert list_point_files(tmp_path / "b.bin") == [tmp_path / "b.bin"]
    with pytest.raises(UserError, match="notes.txt: unknown point-cloud extension"):
        list_point_files(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="missing: no such point-cloud file or folder"):
        list_point_files(tmp_path / "missing")


def test_list_points_subfolder_and_empty(tmp_path):
    ds = tmp_path / "dataset"
    (ds / "points").mkdir(parents=True)
    (ds / "labels.json").write_text("{}")
    with pytest.raises(UserError) as info:
        list_point_files(ds)
    assert str(ds) in str(info.value) and "no .bin or .npy" in str(info.value)
    write_points_bin(ds / "points" / "0001.bin", cloud(3, 5))
    write_points_bin(ds / "points" / "0000.bin", cloud(2, 5))
    assert [p.relative_to(ds).as_posix() for p in list_point_files(ds)] == ["points/0000.bin", "points/0001.bin"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty: no .bin or .npy"):
        list_point_files(empty)


def test_duplicate_stems_rejected(tmp_path):
    write_points_bin(tmp_path / "a.bin", cloud(1, 5))
    np.save(tmp_path / "a.npy", cloud(1, 5))
    with pytest.raises(UserError, match="share the frame name 'a'"):
        list_point_files(tmp_path)


def test_iter_frames(tmp_path):
    write_points_bin(tmp_path / "x1.bin", cloud(4, 5, seed=1))
    bad = cloud(3, 5, seed=2)
    bad[0, 1] = np.nan
    np.save(tmp_path / "x2.npy", bad)
    (tmp_path / "x3.bin").write_bytes(b"\0" * 8)  # broken, but only read when reached
    frames = iter_frames(tmp_path, 5)
    stem, pts, stats = next(frames)
    assert stem == "x1" and pts.shape == (4, 5) and stats.num_nonfinite == 0
    stem, pts, stats = next(frames)
    assert stem == "x2" and pts.shape == (2, 5) and stats.num_nonfinite == 1
    with pytest.raises(UserError, match="x3.bin: 8 bytes"):
        next(frames)
    with pytest.raises(UserError):  # listing errors are raised at the call, not at the first next()
        iter_frames(tmp_path / "missing", 5)
