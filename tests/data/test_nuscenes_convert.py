"""`convert nuscenes` and dataroots given to data options: a synthetic dataroot (the generator's scenes in the
devkit's format) converted, checked against the generator's own objects (worked out here by hand in the nuScenes
LiDAR frame) and against the devkit's `from_file_multisweep`; and a dataroot read on the fly gives the same frames
as its converted folder, in every reader and through the CLI."""

import json

import numpy as np
import pytest
import torch
from tiny_models import firing_model

from trt_centerpoint.args import DataArgs
from trt_centerpoint.cli import build_parser, main
from trt_centerpoint.config import load_config
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.frames import load_frames
from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.nuscenes.synth import scene_plan, write_nuscenes
from trt_centerpoint.data.source import source_sha256
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.calibrate import iter_points, select_calibration_files
from trt_centerpoint.quant.distill import UnlabeledFrames

nuscenes = pytest.importorskip("nuscenes")

SEED, SCENES, SAMPLES = 3, 2, 3
DETECTION_NAME = {"car": "car", "truck": "truck", "pedestrian": "pedestrian", "cyclist": "bicycle"}
CLASSES = ("car", "truck", "pedestrian", "cyclist")


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert") / "nuscenes"
    write_nuscenes(root, scenes=SCENES, samples_per_scene=SAMPLES, seed=SEED, progress=False)
    return root


@pytest.fixture(scope="module")
def converted(dataroot):
    out = dataroot.parent / "mini_val"
    assert main(["convert", "nuscenes", "--dataroot", str(dataroot), "--split", "mini_val", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def selection(dataroot):
    return NuScenesSelection(dataroot, "v1.0-mini", "mini_val")


@pytest.fixture(scope="module")
def nusc(dataroot):
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def timeline(nusc):
    """The sample tokens in (scene, sample) order, from the devkit's scene and sample chains."""
    tokens = []
    for scene in nusc.scene:
        token = scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
    return tokens


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def generator_boxes(plan, tau):
    """The generator's objects `tau` s before the scene's last sweep, in that sweep's nuScenes LiDAR frame (x right,
    y forward): (boxes [x, y, z, w, l, h, yaw, vx, vy], in-range mask, class names)."""
    layout, objects = plan.layout, plan.layout.objects
    origin, sensor_yaw = layout.ego_pose(tau)
    xy = layout.object_xy(tau)
    c, s = np.cos(sensor_yaw), np.sin(sensor_yaw)
    forward = c * (xy[:, 0] - origin[0]) + s * (xy[:, 1] - origin[1])
    left = -s * (xy[:, 0] - origin[0]) + c * (xy[:, 1] - origin[1])
    z = layout.ground.height(xy[:, 0], xy[:, 1]) + objects.dims[:, 2] / 2 - origin[2]
    v = objects.velocity
    v_forward, v_left = c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]
    heading = objects.heading - sensor_yaw + np.pi / 2  # direction of travel in the LiDAR frame
    boxes = np.stack([-left, forward, z, objects.dims[:, 1], objects.dims[:, 0], objects.dims[:, 2],
                      _wrap(heading - np.pi / 2), -v_left, v_forward], axis=1)
    r = plan.scene.point_cloud_range
    in_range = ((forward >= r[0]) & (forward < r[3]) & (left >= r[1]) & (left < r[4]) & (z >= r[2]) & (z < r[5]))
    return boxes, in_range, [CLASSES[k] for k in objects.cls]


def test_labels_are_the_generators_objects(converted, timeline):
    meta = json.loads((converted / "meta.json").read_text())
    assert meta["format"] == "trt_centerpoint.nuscenes/1" and meta["split"] == "mini_val" and meta["sweeps"] == 10
    assert sorted(meta["stems"]) == meta["stems"] == sorted(timeline) and set(meta["poses"]) == set(timeline)
    stems = iter(timeline)
    checked = moving = 0
    for scene in range(SCENES):
        plan = scene_plan(SEED, scene, SAMPLES)
        seen = np.zeros(len(plan.layout.objects), int)  # samples each object is annotated in
        for j in plan.keys:
            seen += generator_boxes(plan, plan.taus[j])[1]
        for j in plan.keys:
            expected, in_range, names = generator_boxes(plan, plan.taus[j])
            labels = json.loads((converted / "labels" / f"{next(stems)}.json").read_text())
            got = np.array(labels["boxes"])
            assert len(got) == in_range.sum() == len(labels["names"]) == len(labels["num_lidar_pts"]) > 0
            for box, name in zip(got, labels["names"]):
                obj = int(np.argmin(np.hypot(*(expected[:, :2] - box[:2]).T)))
                want = expected[obj]
                assert in_range[obj] and name == DETECTION_NAME[names[obj]]
                assert np.linalg.norm(box[:3] - want[:3]) < 0.02 and np.allclose(box[3:6], want[3:6], atol=1e-6)
                assert abs(_wrap(box[6] - want[6])) < 2e-3
                velocity = want[7:9] if seen[obj] > 1 else np.zeros(2)  # one annotation: no velocity (NaN -> 0)
                assert np.allclose(box[7:9], velocity, atol=1e-6)
                checked, moving = checked + 1, moving + bool(np.any(velocity))
    assert checked > 20 and moving > 3


def test_points_are_the_devkits_multisweep_aggregation(nusc, converted, timeline):
    """Point counts, coordinates and time lags are what the devkit's `from_file_multisweep` returns directly (this
    dataroot has full histories and no return within 1 m, so det3d's stacking, the default, gives the devkit's
    points: test_nuscenes_points covers where they differ); and
    the poses chain is right: the oldest sweep's returns, taken by hand from the key frame's LiDAR frame back into
    the generator's world, leave the sensor's position at that sweep along the 32 beam elevations."""
    from nuscenes.utils.data_classes import LidarPointCloud

    for k, token in enumerate(timeline):
        cloud, times = LidarPointCloud.from_file_multisweep(nusc, nusc.get("sample", token), "LIDAR_TOP",
                                                            "LIDAR_TOP", nsweeps=10)
        points = np.fromfile(converted / "points" / f"{token}.bin", "<f4").reshape(-1, 5)
        assert len(points) == cloud.nbr_points() > 100_000
        np.testing.assert_array_equal(points[:, :4], cloud.points.T)
        np.testing.assert_array_equal(points[:, 4], times[0].astype(np.float32))
        assert len(np.unique(points[:, 4])) == 10
        plan = scene_plan(SEED, k // SAMPLES, SAMPLES)
        tau = plan.taus[plan.keys[k % SAMPLES]]
        origin, yaw = plan.layout.ego_pose(tau)
        oldest = points[points[:, 4] == points[:, 4].max(), :3].astype(np.float64)
        forward, left = oldest[:, 1], -oldest[:, 0]
        world = np.stack([origin[0] + np.cos(yaw) * forward - np.sin(yaw) * left,
                          origin[1] + np.sin(yaw) * forward + np.cos(yaw) * left, origin[2] + oldest[:, 2]], axis=1)
        then, _ = plan.layout.ego_pose(tau + 0.45)
        d = world - then
        elevation = np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1]))
        beams = plan.sensor.elevations
        assert np.abs(elevation[:, None] - beams[None]).min(axis=1).max() < 1e-4


def test_a_dataroot_reads_the_same_frames_as_its_converted_folder(selection, converted):
    cfg = load_config("synthetic_small")
    direct, folder = load_frames(selection, cfg, limit=4), load_frames(converted, cfg, limit=4)
    assert direct.stems == folder.stems and len(direct.stems) == 4
    assert all(np.array_equal(a, b) for a, b in zip(direct.points, folder.points))
    assert direct.ground_truth == folder.ground_truth
    labeled, on_disk = LabeledFrames(selection, 5, cfg.class_names), LabeledFrames(converted, 5, cfg.class_names)
    assert len(labeled) == len(on_disk) == SCENES * SAMPLES
    for i in (0, len(labeled) - 1):
        a, b = labeled[i], on_disk[i]
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]
    assert labeled.ground_truth() == on_disk.ground_truth()
    unlabeled = UnlabeledFrames(selection, 4)[1]
    assert unlabeled[0] == on_disk[1][0] and np.array_equal(unlabeled[1], on_disk[1][1][:, :4])
    files = select_calibration_files(selection, 3)
    assert [f.stem for f in files] == [f.stem for f in select_calibration_files(converted, 3)]
    for a, b in zip(iter_points(files, 5), iter_points(select_calibration_files(converted, 3), 5)):
        assert torch.equal(a, b)


def test_data_options_take_a_dataroot(dataroot, selection, converted, tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["build", "--calib-data", str(dataroot), "--eval-data", str(converted), "--split",
                              "mini_val", "--sweeps", "10"])
    paths = DataArgs.read(args)
    assert paths.calib_data == selection and paths.eval_data == str(converted)
    assert DataArgs.read(parser.parse_args(["eval", "--data", "d"])).data == "d"  # other folders as given
    assert source_sha256(selection) == source_sha256(NuScenesSelection(dataroot, None, "mini_val"))
    assert source_sha256(selection) != source_sha256(NuScenesSelection(dataroot, None, "mini_val", sweeps=5))

    cfg = load_config("tiny")
    model = firing_model(cfg, 1.0)
    save_checkpoint(model, tmp_path / "tiny.pth")
    for name, data in (("direct", [str(dataroot), "--split", "mini_val"]), ("folder", [str(converted)])):
        assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--points", *data, "--out",
                     str(tmp_path / f"{name}.json"), "--quiet", "--show", "0"]) == 0
        assert main(["ptq", "-c", "tiny", "-p", str(tmp_path / "tiny.pth"), "--calib-data", *data, "--frames", "2",
                     "--method", "max", "--out", str(tmp_path / f"{name}.pth"), "--quiet"]) == 0
    capsys.readouterr()
    direct, folder = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("direct", "folder"))
    assert direct == folder and list(direct) == json.loads((converted / "meta.json").read_text())["stems"]
    assert sum(map(len, direct.values())) > 0
    a, b = (torch.load(tmp_path / f"{n}.pth", weights_only=True) for n in ("direct", "folder"))
    assert a["meta"]["num_frames"] == b["meta"]["num_frames"] == 2
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
