import pytest

from trt_centerpoint.config import ConfigError, bundled_names, load_config


def test_bundled_configs_load():
    assert {"nuscenes_voxel0075", "synthetic_small", "tiny"} <= set(bundled_names())
    for name in bundled_names():
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.backbone_out_depth >= 1


def test_nuscenes_geometry_matches_det3d():
    cfg = load_config("nuscenes_voxel0075")
    assert cfg.voxel.grid_size == [1440, 1440, 40]
    assert cfg.voxel.sparse_shape == [41, 1440, 1440]
    assert cfg.backbone_out_depth == 2
    assert cfg.bev_channels == 256
    assert cfg.bev_shape == [180, 180]
    assert len(cfg.class_names) == 10
    assert cfg.voxel.max_voxels == 160000 and cfg.voxel.max_voxels_train == 120000


def test_yaml_path_and_unknown_key(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("voxel:\n  point_cloud_range: [-54, -54, -5, 54, 54, 3]\n  voxel_size: [0.075, 0.075, 0.2]\n")
    cfg = load_config(good)
    assert cfg.name == "mine" and cfg.voxel.point_cloud_range[0] == -54.0

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text() + "backbone:\n  chanels: [16, 32, 64, 128]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key\(s\) backbone\.chanels"):
        load_config(bad)


def test_wrong_type_and_missing_section(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("voxel:\n  point_cloud_range: [-54, -54, -5, 54, 54, 3]\n  voxel_size: [0.075, 0.075, 0.2]\n"
                   "  max_voxels: many\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: voxel\.max_voxels must be int"):
        load_config(bad)
    nosec = tmp_path / "n.yaml"
    nosec.write_text("backbone: {}\n")
    with pytest.raises(ConfigError, match=r"n\.yaml.*voxel"):
        load_config(nosec)


def test_too_shallow_grid_is_refused(tmp_path):
    bad = tmp_path / "flat.yaml"
    bad.write_text("voxel:\n  point_cloud_range: [-10, -10, -2, 10, 10, 2]\n  voxel_size: [0.2, 0.2, 0.4]\n")
    with pytest.raises(ConfigError, match="too small"):
        load_config(bad)


def test_unknown_name():
    with pytest.raises(ConfigError, match="no such config.*bundled: "):
        load_config("nuscenes_voxel0100")


VOXEL = "voxel:\n  point_cloud_range: [-54, -54, -5, 54, 54, 3]\n  voxel_size: [0.075, 0.075, 0.2]\n"


@pytest.mark.parametrize("extra, message", [
    ("post:\n  score_threshold: -0.1\n", r"post\.score_threshold = -0\.1 is out of range \(allowed: in \[0, 1\]\)"),
    ("post:\n  nms_iou_threshold: 7.0\n", r"post\.nms_iou_threshold = 7\.0 is out of range \(allowed: in \[0, 1\]\)"),
    ("  max_voxels: -1\n", r"voxel\.max_voxels = -1 is out of range \(allowed: >= 1\)"),
    ("backbone:\n  channels: [16, 0, 64, 128]\n", r"backbone\.channels\[1\] = 0 is out of range \(allowed: >= 1\)"),
    ("backbone:\n  bn_momentum: 0.0\n", r"backbone\.bn_momentum = 0\.0 is out of range \(allowed: in \(0, 1\]\)"),
    ("head:\n  common_heads: {reg: 2, height: 0}\n", r"head\.common_heads\['height'\] = 0 is out of range"),
    ("post:\n  circle_radius: [4.0, -1.0]\n", r"post\.circle_radius\[1\] = -1\.0 is out of range \(allowed: > 0\)"),
])
def test_every_value_out_of_range_names_file_key_value_and_range(tmp_path, extra, message):
    path = tmp_path / "c.yaml"
    path.write_text(VOXEL + extra)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'c.yaml'}: {message}"):
        load_config(path)


def test_a_range_with_min_above_max_says_so(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("voxel:\n  point_cloud_range: [54, -54, -5, -54, 54, 3]\n  voxel_size: [0.075, 0.075, 0.2]\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: voxel\.point_cloud_range: x_min 54 must be below x_max -54"):
        load_config(path)
