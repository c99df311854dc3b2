"""`eval`, `compare` and `ptq`'s calibration under torchrun: 2 CPU processes (gloo) against one process on the
tiny config, 3 frames (so one rank has a frame less in the last step). The same metrics, detection files and
amax to the last bit, compare.json equal apart from its timing, and only rank 0 writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import firing_model

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.ptq import run_ptq
from trt_centerpoint.stages.compare import run_compare
from trt_centerpoint.stages.evaluate import run_eval
from trt_centerpoint.stages.export import run_export

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRT_CENTERPOINT_THREADS": "1", "PYTHONPATH": str(REPO)}

# ptq and compare in one launch (one process group for both: the stages leave a group they did not create)
WORKER = """
import sys
import torch.distributed as dist
from trt_centerpoint import cli

dist.init_process_group("gloo")
args = sys.argv[1:]
split = args.index("--")
status = cli.main(args[:split]) or cli.main(args[split + 1:])
dist.destroy_process_group()
sys.exit(status)
"""


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Inputs (checkpoint, data, ptq.pth, build folder) and the results of one process at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks run (ENV)
    try:
        folder = tmp_path_factory.mktemp("dist")
        cfg = load_config("tiny")
        model = firing_model(cfg, 0.0)  # boxes to score and compare
        ckpt = folder / "tiny.pth"
        save_checkpoint(model, ckpt)
        data = folder / "data"
        write_dataset(data, frames=3, seed=5, config=cfg, progress=False, sensor=SensorConfig(beams=16, num_sweeps=1))
        ptq = folder / "ptq.pth"
        run_ptq(cfg, ckpt, data, ptq, progress=False)
        build = folder / "build"
        run_export(cfg, ptq, build, calib_data=data, log=lambda _: None)
        run_eval(cfg, ckpt, data, out=folder / "m.json", dump_detections=folder / "d.json", progress=False)
        run_compare(cfg, build, data, out=folder / "compare", checkpoint=ptq, max_frames=3, progress=False,
                    log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return folder, ckpt, data, ptq, build


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_eval_under_torchrun_equals_one_process(one_process, tmp_path):
    folder, ckpt, data, _, _ = one_process
    proc = _run([*TORCHRUN, "-m", "trt_centerpoint.cli", "eval", "--config", "tiny", "--checkpoint", str(ckpt),
                 "--data", str(data), "--out", str(tmp_path / "m.json"), "--dump-detections",
                 str(tmp_path / "d.json"), "--quiet"], REPO)
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads((folder / "m.json").read_text())
    assert (tmp_path / "d.json").read_bytes() == (folder / "d.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "m.json"]  # no part file, no temp file
    assert proc.stdout.count("mAP:") == 1  # only rank 0 reports


def test_ptq_and_compare_under_torchrun_equal_one_process(one_process, tmp_path):
    folder, ckpt, data, ptq, build = one_process
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "out"
    _run([*TORCHRUN, str(worker),
          "ptq", "--recipe", "calibrate", "--config", "tiny", "--checkpoint", str(ckpt), "--calib-data", str(data),
          "--out", str(out / "ptq.pth"), "--quiet", "--",
          "compare", "--config", "tiny", "--artifacts", str(build), "--data", str(data), "--checkpoint", str(ptq),
          "--out", str(out / "compare"), "--frames", "3", "--quiet"], REPO)

    one, two = (torch.load(p, map_location="cpu", weights_only=True) for p in (ptq, out / "ptq.pth"))
    assert one["state_dict"].keys() == two["state_dict"].keys()
    amax = [k for k in one["state_dict"] if k.endswith("_amax")]
    assert amax and all(torch.equal(one["state_dict"][k], two["state_dict"][k]) for k in one["state_dict"])
    assert one["meta"]["num_frames"] == two["meta"]["num_frames"] == 3

    ref, got = folder / "compare", out / "compare"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in ref.iterdir())
    for name in (p.name for p in ref.iterdir() if p.name != "compare.json"):
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    figures = [json.loads((d / "compare.json").read_text()) for d in (ref, got)]
    for f in figures:
        f.pop("seconds")
    assert figures[0] == figures[1]
    assert sorted(p.name for p in out.iterdir()) == ["compare", "ptq.pth"]
