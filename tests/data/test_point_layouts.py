"""What a point file holds: raw nuScenes sweeps (*.pcd.bin), KITTI frames, and files read with the wrong
column count (refused, naming the layout that fits) on real-shaped scans from the generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import firing_model

from trt_centerpoint.data.points import iter_frames, list_point_files, read_points
from trt_centerpoint.data.synth.dataset import generate_frame
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.errors import UserError


@pytest.fixture(scope="module")
def scans():
    """One generated scan in the three shapes users have, trimmed to a multiple of 60 rows so every wrong
    column count 3, 4, 5 divides the file size (the dangerous case: nothing but the values can tell)."""
    points, _ = generate_frame(7, 0, SensorConfig(beams=16, num_sweeps=2))
    points = points[: len(points) // 60 * 60]
    ring = np.repeat(np.arange(16), -(-len(points) // 16))[: len(points)].astype(np.float32)
    kitti = points[:, :4].copy()
    kitti[:, 3] /= 255.0
    return {
        5: points,  # x, y, z, intensity 0..255, time lag (this project's and det3d's layout)
        4: kitti,  # KITTI velodyne: intensity 0..1
        3: points[:, :3].copy(),
        "raw": np.concatenate([points[:, :4], ring[:, None]], axis=1),  # a nuScenes sweep: 5th column = ring
    }


@pytest.mark.parametrize("true, wrong, likely", [
    (4, 5, "float32 x 4"), (3, 5, "float32 x 3"), (5, 4, "float32 x 5"), (3, 4, "float32 x 3"),
    ("raw", 4, "float32 x 5 per point (x, y, z, intensity, ring index): a raw nuScenes sweep"),
])
def test_wrong_column_count_is_refused_naming_the_layout(tmp_path, scans, true, wrong, likely):
    path = tmp_path / "frame.bin"
    scans[true].astype("<f4").tofile(path)
    assert path.stat().st_size % (4 * wrong) == 0  # the size alone cannot tell
    with pytest.raises(UserError) as err:
        read_points(path, wrong)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not look like float32 x {wrong}") and "\n" not in msg
    assert f"it reads as {likely}" in msg


@pytest.mark.parametrize("k", [4, 5])
def test_right_column_count_reads(tmp_path, scans, k):
    path = tmp_path / "frame.bin"
    scans[k].astype("<f4").tofile(path)
    np.testing.assert_array_equal(read_points(path, k).points, scans[k])


def test_ring_index_in_a_plain_bin_is_named(tmp_path, scans):
    path = tmp_path / "sweep.bin"
    scans["raw"].astype("<f4").tofile(path)
    with pytest.raises(UserError, match="ring index, not a time lag: a raw nuScenes sweep"):
        read_points(path, 5)


def test_text_file_whose_size_divides_is_not_points(tmp_path):
    path = tmp_path / "notes.bin"
    text = ("x y z intensity t\n" + "12.5 3.25 -1.5 40 0.05\n" * 30).encode()
    path.write_bytes(text[: len(text) // 20 * 20])  # a multiple of 20 bytes: 5 float32 per "point"
    with pytest.raises(UserError, match="not float32 point data"):
        read_points(path, 5)


def test_raw_sweep_reads_as_one_sweep_with_time_lag_zero(tmp_path, scans):
    raw = tmp_path / "n008__LIDAR_TOP__1533151603547590.pcd.bin"
    scans["raw"].astype("<f4").tofile(raw)
    cloud = read_points(raw, 5)
    expect = scans["raw"].copy()
    expect[:, 4] = 0
    np.testing.assert_array_equal(cloud.points, expect)
    assert cloud.stem == "n008__LIDAR_TOP__1533151603547590"  # no ".pcd"
    assert "ring index" in cloud.stats.note and "time lag 0" in cloud.stats.note
    assert read_points(raw, 4).points.shape[1] == 4
    assert [f.name for f in list_point_files(tmp_path)] == [raw.name]
    assert [stem for stem, _, _ in iter_frames(tmp_path, 5)] == ["n008__LIDAR_TOP__1533151603547590"]
    bad = tmp_path / "lag.pcd.bin"
    scans[5].astype("<f4").tofile(bad)  # already a time lag in the 5th column: not a raw sweep
    with pytest.raises(UserError, match="not a ring index"):
        read_points(bad, 5)


def test_kitti_layout(tmp_path, scans):
    path = tmp_path / "000123.bin"
    scans[4].astype("<f4").tofile(path)
    cloud = read_points(path, 5, layout="kitti")
    assert cloud.points.shape == (len(scans[4]), 5) and not cloud.points[:, 4].any()
    np.testing.assert_allclose(cloud.points[:, 3], scans[4][:, 3] * 255, rtol=1e-6)
    np.testing.assert_array_equal(cloud.points[:, :3], scans[4][:, :3])
    assert "KITTI" in cloud.stats.note
    np.save(tmp_path / "k.npy", scans[4])
    with pytest.raises(UserError, match="--point-layout kitti"):
        read_points(tmp_path / "k.npy", 5)  # 4 columns for a 5-feature model


def test_raw_sweep_and_time_lag_zero_give_the_same_detections(tmp_path, scans):
    """The done-when of the raw-sweep path, through `infer`: a .pcd.bin and the same points with time lag 0."""
    from trt_centerpoint.cli import main
    from trt_centerpoint.config import load_config
    from trt_centerpoint.model.checkpoint import save_checkpoint

    model = firing_model(load_config("tiny"), 1.0)
    save_checkpoint(model, tmp_path / "tiny.pth")
    frames = tmp_path / "frames"
    frames.mkdir()
    scans["raw"].astype("<f4").tofile(frames / "a.pcd.bin")
    zero = scans["raw"].copy()
    zero[:, 4] = 0
    zero.astype("<f4").tofile(frames / "b.bin")
    out = tmp_path / "d.json"
    assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--points", str(frames),
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    dets = json.loads(out.read_text())
    assert sorted(dets) == ["a", "b"] and dets["a"] and dets["a"] == dets["b"]

    # a KITTI frame with --point-layout kitti == the same points already scaled to 0..255 with time lag 0
    kitti = tmp_path / "kitti"
    kitti.mkdir()
    scans[4].astype("<f4").tofile(kitti / "000001.bin")
    assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--points", str(kitti), "--point-layout",
                 "kitti", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    got = json.loads(out.read_text())["000001"]
    native = scans[4].copy()
    native[:, 3] *= 255
    np.concatenate([native, np.zeros((len(native), 1), np.float32)], axis=1).astype("<f4").tofile(frames / "c.bin")
    assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--points", str(frames / "c.bin"),
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert got and got == json.loads(out.read_text())["c"]
    assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--points", str(kitti), "--quiet"]) == 2
