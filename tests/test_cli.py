"""The command line: real subcommands on small generated data, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import firing_model

from trt_centerpoint import __version__
from trt_centerpoint.cli import main
from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = load_config("tiny")
    model = firing_model(cfg, 1.0)
    save_checkpoint(model, root / "tiny.pth")
    write_dataset(root / "data", frames=2, seed=3, config=cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    return root


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "trt_centerpoint.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"trt-centerpoint {__version__}"
    out = subprocess.run([sys.executable, "-m", "trt_centerpoint.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("infer", "synth", "train", "eval"):
        assert command in out.stdout


def test_infer_writes_detection_json(tiny_run, capsys):
    out = tiny_run / "dets.json"
    rc = main(["infer", "--config", "tiny", "--checkpoint", str(tiny_run / "tiny.pth"),
               "--points", str(tiny_run / "data"), "--out", str(out), "--quiet"])
    assert rc == 0
    dets = json.loads(out.read_text())
    assert sorted(dets) == ["0003_000000", "0003_000001"]
    some = [d for frame in dets.values() for d in frame]
    assert some, "the biased random model should fire"
    for d in some:
        assert set(d) == {"box", "score", "name"} and len(d["box"]) == 9
        assert d["name"] in ("car", "pedestrian", "cyclist") and 0.1 < d["score"] <= 1
    printed = capsys.readouterr().out
    assert "0003_000000:" in printed and "score" in printed


def test_empty_frame_gives_empty_detections(tiny_run, tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    far = np.array([[500.0, 0, 0, 1, 0]], np.float32)  # outside the range: voxelizes to nothing
    far.tofile(tmp_path / "far.bin")
    assert main(["infer", "-c", "tiny", "-p", str(tiny_run / "tiny.pth"), "--points", str(tmp_path),
                 "--out", str(tmp_path / "d.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == {"empty": [], "far": []}


def test_eval_writes_metrics(tiny_run, capsys):
    out = tiny_run / "metrics.json"
    rc = main(["eval", "-c", "tiny", "-p", str(tiny_run / "tiny.pth"), "--data", str(tiny_run / "data"),
               "--out", str(out), "--dump-detections", str(tiny_run / "all.json"), "--quiet"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class"]) == {"car", "pedestrian", "cyclist"}
    assert set(json.loads((tiny_run / "all.json").read_text())) == {"0003_000000", "0003_000001"}
    assert "mAP" in capsys.readouterr().out


@pytest.mark.parametrize("make_bad, expect", [
    (lambda d: (d / "bad.bin").write_bytes(b"\0" * 22) and d / "bad.bin", "bad.bin: 22 bytes"),
    (lambda d: d / "missing.bin", "missing.bin"),
])
def test_bad_points_are_one_line_errors(tiny_run, tmp_path, capsys, make_bad, expect):
    bad = make_bad(tmp_path)
    rc = main(["infer", "-c", "tiny", "-p", str(tiny_run / "tiny.pth"), "--points", str(bad), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and expect in err and "\n" not in err and "Traceback" not in err


def test_bad_checkpoint_and_config_are_one_line_errors(tiny_run, tmp_path, capsys):
    assert main(["infer", "-c", "tiny", "-p", str(tmp_path / "nope.pth"), "--points", str(tiny_run / "data")]) == 2
    assert "nope.pth: checkpoint not found" in capsys.readouterr().err
    # a checkpoint of another config: the key / shape error, one line
    assert main(["infer", "-c", "synthetic_small", "-p", str(tiny_run / "tiny.pth"), "--points",
                 str(tiny_run / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit the model (synthetic_small)" in err and "\n" not in err
    assert main(["infer", "-c", "no_such_config", "-p", "x.pth", "--points", "y"]) == 2
    assert "no_such_config: no such config" in capsys.readouterr().err


def test_metrics_json_is_strict(tiny_run, tmp_path):
    """NaN metrics (e.g. AOE of a class without true positives) are written as null, not NaN."""
    out = tmp_path / "m.json"
    assert main(["eval", "-c", "tiny", "-p", str(tiny_run / "tiny.pth"), "--data", str(tiny_run / "data"),
                 "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
