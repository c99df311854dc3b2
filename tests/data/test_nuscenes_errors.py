"""Bad nuScenes input through the CLI: one line on stderr naming the path and the problem, exit status 2."""

import shutil
import sys

import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.data.nuscenes.synth import write_nuscenes
from trt_centerpoint.data.synth.sensor import SensorConfig

pytest.importorskip("nuscenes")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small synthetic dataroot (one mini_val scene of 2 samples, a sparse sensor) to copy and break."""
    root = tmp_path_factory.mktemp("bad_nus") / "pristine"
    write_nuscenes(root, scenes=1, samples_per_scene=2, seed=4, progress=False,
                   sensor=SensorConfig(beams=8, azimuth_resolution_deg=2.0))
    return root


@pytest.fixture
def dataroot(pristine, tmp_path):
    root = tmp_path / "nuscenes"
    shutil.copytree(pristine, root)
    return root


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def convert(root, out, *options):
    return ["convert", "nuscenes", "--dataroot", str(root), "--out", str(out), "--quiet", *options]


def test_missing_table(dataroot, tmp_path, capsys):
    (dataroot / "v1.0-mini" / "sample_annotation.json").unlink()
    err = one_line_error(capsys, convert(dataroot, tmp_path / "out", "--split", "mini_val"))
    assert f"{dataroot}/v1.0-mini/sample_annotation.json: missing nuScenes table" in err
    err = one_line_error(capsys, ["ptq", "-c", "tiny", "-p", "x.pth", "--calib-data", str(dataroot), "--split",
                                  "mini_val", "--out", str(tmp_path / "q.pth")])
    assert "sample_annotation.json: missing nuScenes table" in err
    assert not (tmp_path / "out").exists()


def test_missing_sweep_file(dataroot, tmp_path, capsys):
    sweep = sorted((dataroot / "sweeps" / "LIDAR_TOP").iterdir())[3]
    sweep.unlink()
    err = one_line_error(capsys, convert(dataroot, tmp_path / "out", "--split", "mini_val"))
    assert f"{sweep}: missing LIDAR_TOP sweep file" in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["nuscenes"]  # no leftovers


def test_truncated_sweep_file(dataroot, tmp_path, capsys):
    sweep = sorted((dataroot / "samples" / "LIDAR_TOP").iterdir())[0]
    sweep.write_bytes(sweep.read_bytes()[:-4])
    err = one_line_error(capsys, convert(dataroot, tmp_path / "out", "--split", "mini_val"))
    assert f"{sweep}: " in err and "not a whole number of LIDAR_TOP points" in err


@pytest.mark.parametrize("options, message", [
    (["--split", "val"], "unknown split 'val' for v1.0-mini (one of mini_train, mini_val)"),
    ([], "a nuScenes dataroot needs --split (one of mini_train, mini_val for v1.0-mini)"),
    (["--version", "v1.0-trainval", "--split", "val"], "v1.0-trainval: no such nuScenes version folder"),
    (["--version", "v2", "--split", "val"], "unknown nuScenes version 'v2'"),
    (["--split", "mini_train"], "no scene of split mini_train"),
    (["--split", "mini_val", "--sweeps", "0"], "--sweeps must be >= 1"),
])
def test_bad_selection(pristine, tmp_path, capsys, options, message):
    err = one_line_error(capsys, convert(pristine, tmp_path / "out", *options))
    assert message in err and str(pristine) in err
    err = one_line_error(capsys, ["train", "-c", "tiny", "--data", str(pristine), *options, "--out",
                                  str(tmp_path / "t.pth")])
    assert message in err


def test_dataroot_options_without_a_dataroot(pristine, tmp_path, capsys):
    err = one_line_error(capsys, ["compare", "--artifacts", str(tmp_path), "--data", str(tmp_path), "--split",
                                  "mini_val"])
    assert err.endswith(f"--split: only for a nuScenes dataroot (a folder with v1.0-*/sample.json); {tmp_path} is not "
                        "one")
    err = one_line_error(capsys, convert(tmp_path, tmp_path / "out", "--split", "mini_val"))
    assert f"{tmp_path}: not a nuScenes dataroot (no v1.0-*/sample.json)" in err


def test_refuses_a_non_empty_output_unless_forced(pristine, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.bin").write_bytes(b"")
    err = one_line_error(capsys, convert(pristine, tmp_path / "out", "--split", "mini_val"))
    assert "exists and is not empty; give --force" in err
    assert main(convert(pristine, tmp_path / "out", "--split", "mini_val", "--force")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels", "meta.json", "points"]


def test_without_the_devkit(pristine, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nuscenes", None)  # what a missing package looks like to an import
    other = tmp_path / "copy"
    shutil.copytree(pristine, other)  # not loaded before in this process
    err = one_line_error(capsys, convert(other, tmp_path / "out", "--split", "mini_val"))
    assert err.endswith("nuscenes-devkit is not installed: pip install 'trt-centerpoint[nuscenes]'")
