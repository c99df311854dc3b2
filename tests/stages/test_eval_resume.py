"""`eval` streams detections to `<out>.part.jsonl` and resumes a killed run there: the same metrics and detection
file as a run that was never interrupted, without running the finished frames again; a part file of another run
(other checkpoint) is not reused; a half-written last line is cut off and its frame runs again."""

import json

import pytest
from tiny_models import firing_model

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.detection_stream import part_path
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.runtime.pipeline import Pipeline
from trt_centerpoint.stages.evaluate import run_eval

FRAMES = 4


def _checkpoint(path, seed):
    model = firing_model(load_config("tiny"), 0.0, seed)  # boxes to score
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    cfg = load_config("tiny")
    write_dataset(folder / "data", frames=FRAMES, seed=4, config=cfg, progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    ckpt = _checkpoint(folder / "tiny.pth", 0)
    out = folder / "reference"
    metrics = run_eval(cfg, ckpt, folder / "data", out=out / "m.json", dump_detections=out / "d.json", progress=False)
    return cfg, ckpt, folder / "data", metrics, (out / "d.json").read_bytes()


class _Counting:
    """Pipeline.detect that counts its frames and, like a kill, stops after `stop_after` of them."""

    def __init__(self, monkeypatch, stop_after=None):
        self.calls, self.stop_after, real = 0, stop_after, Pipeline.detect

        def detect(pipe, points, timer=None):
            if self.stop_after is not None and self.calls == self.stop_after:
                raise KeyboardInterrupt
            self.calls += 1
            return real(pipe, points, timer)

        monkeypatch.setattr(Pipeline, "detect", detect)


def _stems_in(part):
    return [json.loads(line)["stem"] for line in part.read_text().splitlines()[1:]]


def test_an_interrupted_eval_resumes_where_it_stopped(setup, tmp_path, monkeypatch):
    cfg, ckpt, data, reference, reference_dets = setup
    out, dets = tmp_path / "m.json", tmp_path / "d.json"
    counting = _Counting(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, ckpt, data, out=out, dump_detections=dets, progress=False)
    part = part_path(out)
    assert len(_stems_in(part)) == 2 and not out.exists() and not dets.exists()

    counting.calls, counting.stop_after = 0, None
    lines = []
    metrics = run_eval(cfg, ckpt, data, out=out, dump_detections=dets, progress=False, log=lines.append)
    assert counting.calls == FRAMES - 2  # the two finished frames did not run again
    assert any("2 of 4 frame(s) already done" in line for line in lines)
    assert metrics == reference
    assert json.loads(out.read_text()) == json.loads(json.dumps(reference))
    assert dets.read_bytes() == reference_dets
    assert not part.exists()  # the results are written: nothing left to resume


def test_a_part_file_of_another_run_is_not_reused(setup, tmp_path, monkeypatch):
    cfg, ckpt, data, reference, _ = setup
    other = _checkpoint(tmp_path / "other.pth", 1)
    out = tmp_path / "m.json"
    counting = _Counting(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, other, data, out=out, progress=False)
    counting.calls, counting.stop_after = 0, None
    lines = []
    assert run_eval(cfg, ckpt, data, out=out, progress=False, log=lines.append) == reference
    assert counting.calls == FRAMES  # every frame ran with the right checkpoint
    assert any("another run" in line for line in lines)


def test_a_half_written_line_is_cut_off_and_its_frame_runs_again(setup, tmp_path, monkeypatch):
    cfg, ckpt, data, reference, reference_dets = setup
    dets = tmp_path / "d.json"
    counting = _Counting(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, ckpt, data, dump_detections=dets, progress=False)
    part = part_path(dets)
    text = part.read_bytes()
    part.write_bytes(text[: text.rindex(b"\n", 0, len(text) - 1) + 1] + b'{"stem": "half')  # killed mid-line
    counting.calls, counting.stop_after = 0, None
    assert run_eval(cfg, ckpt, data, dump_detections=dets, progress=False) == reference
    assert counting.calls == FRAMES - 2
    assert dets.read_bytes() == reference_dets


def test_without_output_files_nothing_is_left_behind(setup, tmp_path, monkeypatch):
    cfg, ckpt, data, reference, _ = setup
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert run_eval(cfg, ckpt, data, progress=False) == reference
    assert list(tmp_path.iterdir()) == []


def test_a_part_file_that_cannot_be_written_is_one_user_error(setup, tmp_path):
    cfg, ckpt, data, _, _ = setup
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="m.json.part.jsonl: cannot (read|write) the detections part file"):
        run_eval(cfg, ckpt, data, out=blocker / "m.json", progress=False)
