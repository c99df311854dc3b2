"""`synth --format nuscenes`: a dataroot the nuScenes devkit itself loads, aggregates, splits and evaluates, made of
the generator's scenes; and the folder format for a config with classes the generator does not make."""

import json

import numpy as np
import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.data.nuscenes.synth import scene_plan, write_nuscenes
from trt_centerpoint.data.synth.dataset import points_in_boxes
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.manifest import tree_sha256

nuscenes = pytest.importorskip("nuscenes")

SEED = 5
SAMPLES = 3


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_nus") / "nuscenes"
    assert main(["synth", "--format", "nuscenes", "--out", str(root), "--seed", str(SEED), "--samples-per-scene",
                 str(SAMPLES), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def nusc(dataroot):
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)


def test_scenes_carry_real_split_names_and_chains(nusc):
    from nuscenes.utils.splits import create_splits_scenes

    assert [s["name"] for s in nusc.scene] == create_splits_scenes()["mini_val"]  # the default: v1.0-mini mini_val
    for scene in nusc.scene:
        samples, token = [], scene["first_sample_token"]
        while token:
            samples.append(nusc.get("sample", token))
            token = samples[-1]["next"]
        assert len(samples) == scene["nbr_samples"] == SAMPLES and samples[-1]["token"] == scene["last_sample_token"]
        assert np.diff([s["timestamp"] for s in samples]).tolist() == [500_000] * (SAMPLES - 1)  # 2 Hz


def test_every_sample_stacks_ten_sweeps_at_20_hz_with_ring_indices(nusc, dataroot):
    from nuscenes.utils.data_classes import LidarPointCloud

    for sample in nusc.sample:
        _, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
        assert np.allclose(np.unique(times), np.arange(10) * 0.05, atol=1e-6)  # the first sample too (lead-in)
        raw = np.fromfile(dataroot / nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["filename"], "<f4")
        raw = raw.reshape(-1, 5)
        assert len(raw) > 15_000 and set(np.unique(raw[:, 4])) <= set(range(32)) and len(np.unique(raw[:, 4])) > 25
        assert 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255


def test_sweeps_are_in_their_own_sensor_frame_and_the_ego_drives(nusc, dataroot):
    """A raw sweep's returns leave the sensor along the 32 beam elevations (its own frame, no motion in it), the
    ego poses move between sweeps, and the LiDAR's x axis points to the ego's right (nuScenes)."""
    sensor = SensorConfig()
    for sd in nusc.sample_data[::7]:
        raw = np.fromfile(dataroot / sd["filename"], "<f4").reshape(-1, 5).astype(np.float64)
        elevation = np.arctan2(raw[:, 2], np.hypot(raw[:, 0], raw[:, 1]))
        beam = sensor.elevations[raw[:, 4].astype(int)]
        assert np.abs(elevation - beam).max() < 1e-4
    for scene in nusc.scene:
        poses = [nusc.get("ego_pose", sd["ego_pose_token"]) for sd in nusc.sample_data
                 if nusc.get("sample", sd["sample_token"])["scene_token"] == scene["token"]]
        travelled = np.linalg.norm(np.subtract(poses[-1]["translation"], poses[0]["translation"]))
        assert travelled > 1.0  # >= 1 m/s over 1.45 s
    cs = nusc.calibrated_sensor[0]
    from pyquaternion import Quaternion

    assert np.allclose(Quaternion(cs["rotation"]).rotate([1.0, 0.0, 0.0]), [0.0, -1.0, 0.0])  # x -> ego's right


def test_annotations_follow_the_generator(nusc):
    """Centres, sizes and speeds (the devkit's `box_velocity` from the annotation chains) of every annotation are
    the generator's objects at that time; `num_lidar_pts` is what the devkit's `points_in_box` counts in the raw
    key-frame sweep."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    for index, scene in enumerate(nusc.scene):
        plan = scene_plan(SEED, index, SAMPLES)
        speeds = plan.layout.objects.speed
        token, k = scene["first_sample_token"], 0
        while token:
            sample = nusc.get("sample", token)
            tau = plan.taus[plan.keys[k]]
            boxes = plan.world_boxes(tau)
            inside_range = np.flatnonzero(plan.in_range(boxes, tau))
            anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
            assert len(anns) == len(inside_range) > 0
            centres = plan.to_global(boxes[:, :3])
            sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            _, lidar_boxes, _ = nusc.get_sample_data(sd["token"])
            cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
            for ann, box in zip(anns, lidar_boxes, strict=True):
                obj = int(np.argmin(np.linalg.norm(centres - ann["translation"], axis=1)))
                assert np.linalg.norm(centres[obj] - ann["translation"]) < 1e-6
                assert np.allclose(ann["size"], boxes[obj, 3:6])  # [w, l, h]
                velocity = nusc.box_velocity(ann["token"])[:2]
                if ann["prev"] or ann["next"]:
                    expected = np.hypot(*boxes[obj, 7:9])
                    assert abs(np.hypot(*velocity) - expected) < 1e-6 and abs(speeds[obj] - expected) < 1e-9
                count = int(points_in_box(box, cloud.points[:3]).sum())  # the key-frame sweep, in its own frame
                assert abs(count - ann["num_lidar_pts"]) <= 1, (count, ann["num_lidar_pts"])  # float32 at a face
            token, k = sample["next"], k + 1


def test_the_devkits_evaluation_loads_the_split(nusc):
    from nuscenes.eval.common.loaders import load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    gt = load_gt(nusc, "mini_val", DetectionBox)
    assert set(gt.sample_tokens) == {s["token"] for s in nusc.sample}
    names = {box.detection_name for token in gt.sample_tokens for box in gt[token]}
    assert len(gt.all) == len(nusc.sample_annotation) and names <= {"car", "truck", "pedestrian", "bicycle"}
    assert {box.attribute_name for box in gt.all} <= {"vehicle.moving", "vehicle.parked", "pedestrian.moving",
                                                     "pedestrian.standing", "cycle.with_rider"}


def test_same_seed_same_bytes(tmp_path, dataroot):
    small = SensorConfig(beams=8, azimuth_resolution_deg=2.0)
    for name in ("a", "b"):
        write_nuscenes(tmp_path / name, scenes=1, samples_per_scene=1, seed=1, progress=False, sensor=small)
    write_nuscenes(tmp_path / "c", scenes=1, samples_per_scene=1, seed=2, progress=False, sensor=small)
    assert tree_sha256(tmp_path / "a") == tree_sha256(tmp_path / "b") != tree_sha256(tmp_path / "c")
    assert json.loads((tmp_path / "a" / "v1.0-mini" / "scene.json").read_text())[0]["name"] == "scene-0103"


def test_folder_synth_of_a_config_with_unknown_classes(tmp_path, capsys):
    out = tmp_path / "nus_cfg"
    assert main(["synth", "--config", "nuscenes_voxel0075", "--frames", "1", "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("config nuscenes_voxel0075: labeling car, truck, pedestrian only;") and \
        "(7 classes)" in lines[0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["car", "truck", "pedestrian"] and len(meta["classes_not_generated"]) == 7
    labels = json.loads((out / "labels" / f"{meta['stems'][0]}.json").read_text())
    assert set(labels) == {"boxes", "names", "num_lidar_pts"} and set(labels["names"]) <= set(meta["classes"])
    points = np.fromfile(out / "points" / f"{meta['stems'][0]}.bin", "<f4").reshape(-1, 5)
    latest = points[points[:, 4] == 0, :3]
    inside = points_in_boxes(latest, np.array(labels["boxes"]), margin=0.05).sum(axis=0)
    counts = np.array(labels["num_lidar_pts"])
    assert len(counts) == len(labels["boxes"]) > 0 and (counts <= inside).all() and (counts > 0).mean() > 0.8
