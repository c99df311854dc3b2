"""nuScenes points stacked as det3d stacks them (the default) or as the devkit does (`--point-source devkit`), on a
synthetic dataroot where every case occurs: returns of the ego vehicle within 1 m of the sensor in every sweep, a
scene's first sample with no earlier sweep, a sample with a history shorter than --sweeps, one with a full one.

The reference is assembled here from the devkit's own pieces (`LidarPointCloud.from_file` for a raw sweep,
`from_file_multisweep` for each earlier sweep moved into the key frame, split by its time lag) following det3d's
rules as tianweiy/CenterPoint writes them: the key frame read as it is; each earlier sweep cut at |x|, |y| < 1 m;
a short history padded by repeating the oldest sweep, or the (cut) key frame when there is none."""

import json

import numpy as np
import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.nuscenes.reader import sample_points
from trt_centerpoint.data.nuscenes.synth import write_nuscenes

nuscenes = pytest.importorskip("nuscenes")
from nuscenes.utils.data_classes import LidarPointCloud  # noqa: E402

EGO_RETURNS = 40


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    """One scene, two samples, no lead-in: the first sample has no earlier sweep, the second has ten."""
    root = tmp_path_factory.mktemp("points") / "nuscenes"
    write_nuscenes(root, scenes=1, samples_per_scene=2, seed=11, progress=False, lead_in=0, ego_returns=EGO_RETURNS)
    return root


@pytest.fixture(scope="module")
def nusc(dataroot):
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def samples(nusc):
    first = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    return first, nusc.get("sample", first["next"])


def _raw_key(nusc, sample):
    path = nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"])
    return LidarPointCloud.from_file(path).points  # [4, N]


def _cut(points):
    return points[:, ~((np.abs(points[0]) < 1.0) & (np.abs(points[1]) < 1.0))]


def _devkit_sweeps(nusc, sample, count):
    """The devkit's multisweep aggregation of `count` sweeps, split into its sweeps: [(points [4, n], lag)]."""
    cloud, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=count)
    lags = times[0]
    starts = np.flatnonzero(np.r_[True, lags[1:] != lags[:-1]])
    ends = np.r_[starts[1:], len(lags)]
    return [(cloud.points[:, a:b], lags[a]) for a, b in zip(starts, ends)]


def _stack(parts):
    points = np.concatenate([p for p, _ in parts], axis=1).T
    lags = np.concatenate([np.full(p.shape[1], lag) for p, lag in parts]).astype(np.float32)
    return np.column_stack([points, lags]).astype(np.float32)


def test_the_dataroot_has_every_case(nusc, samples):
    first, second = samples
    assert nusc.get("sample_data", first["data"]["LIDAR_TOP"])["prev"] == ""
    assert len(_devkit_sweeps(nusc, second, 20)) == 11  # ten earlier sweeps, then the chain stops
    raw = _raw_key(nusc, first)
    assert raw.shape[1] - _cut(raw).shape[1] == EGO_RETURNS  # the ego vehicle's returns, within 1 m


def test_first_sample_pads_with_its_own_cut_key_frame(nusc, samples):
    first, _ = samples
    points, dropped, _ = sample_points(nusc, first["token"], 10)
    raw = _raw_key(nusc, first)
    want = _stack([(raw, 0.0)] + [(_cut(raw), 0.0)] * 9)
    assert dropped == 0
    np.testing.assert_array_equal(points, want)
    devkit, _, _ = sample_points(nusc, first["token"], 10, source="devkit")
    assert len(devkit) == raw.shape[1] - EGO_RETURNS  # the devkit: the key frame alone, cut


def test_a_short_history_repeats_its_oldest_sweep(nusc, samples):
    _, second = samples
    raw, earlier = _raw_key(nusc, second), _devkit_sweeps(nusc, second, 11)[1:]
    assert len(earlier) == 10 and all(lag > 0 for _, lag in earlier)
    points, _, _ = sample_points(nusc, second["token"], 13)
    np.testing.assert_array_equal(points, _stack([(raw, 0.0)] + earlier + [earlier[-1]] * 2))
    assert len(np.unique(points[:, 4])) == 11


def test_a_full_history_differs_from_the_devkit_only_in_the_key_frame(nusc, samples):
    _, second = samples
    points, _, _ = sample_points(nusc, second["token"], 10)
    raw, earlier = _raw_key(nusc, second), _devkit_sweeps(nusc, second, 10)[1:]
    np.testing.assert_array_equal(points, _stack([(raw, 0.0)] + earlier))
    devkit, _, _ = sample_points(nusc, second["token"], 10, source="devkit")
    cloud, times = LidarPointCloud.from_file_multisweep(nusc, second, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
    np.testing.assert_array_equal(devkit, np.column_stack([cloud.points.T, times[0]]).astype(np.float32))
    assert len(points) - len(devkit) == EGO_RETURNS


def test_the_point_source_reaches_a_converted_folder(tmp_path, dataroot, nusc, samples, capsys):
    first, _ = samples
    for source, expect in (("devkit", raw_count := _raw_key(nusc, first).shape[1] - EGO_RETURNS),
                           (None, raw_count + EGO_RETURNS + 9 * raw_count)):
        out = tmp_path / (source or "default")
        extra = ["--point-source", source] if source else []
        assert main(["convert", "nuscenes", "--dataroot", str(dataroot), "--split", "mini_val", "--sweeps", "10",
                     "--out", str(out), "--quiet", *extra]) == 0
        meta = json.loads((out / "meta.json").read_text())
        assert meta["point_source"] == (source or "det3d")
        points = np.fromfile(out / "points" / f"{first['token']}.bin", "<f4").reshape(-1, 5)
        assert len(points) == expect
    assert NuScenesSelection(dataroot, split="mini_val").point_source == "det3d"
    assert main(["convert", "nuscenes", "--dataroot", str(dataroot), "--split", "mini_val", "--out",
                 str(tmp_path / "bad"), "--point-source", "openpcdet", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--point-source must be one of det3d, devkit" in err and "\n" not in err
