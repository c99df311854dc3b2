"""`trt-centerpoint build` end to end on the tiny config: artifacts, report keys, skipping, reruns, interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from polygraphy.comparator import RunResults
from tiny_models import firing_model

import trt_centerpoint.stages.build as build_stage
from trt_centerpoint.cli import main
from trt_centerpoint.config import load_config
from trt_centerpoint.manifest import file_sha256
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.runtime.trt.env import tensorrt_rtx_status
from trt_centerpoint.stages.build import BuildOptions, run_build
from trt_centerpoint.stages.compare import run_compare

ARTIFACTS = ["ptq.pth", "scn.fp16.onnx", "scn.int8.onnx", "scn.int8.qdq.onnx", "rpn_head.fp32.onnx",
             "rpn_head.int8.onnx", "compare.json", "compare.run_results.json", "detections.fp32.json",
             "detections.int8.json", "bench.json", "bench.png", "report.md", "report.json", "manifest.json"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = firing_model(load_config("tiny"), 0.0)  # some boxes to compare
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(model, path)
    return path


def _opts(checkpoint, out, **kw):
    return BuildOptions(config="tiny", checkpoint=checkpoint, out=out, calib_frames=2, eval_frames=2,
                        bench_iterations=2, bench_warmup=0, progress=False, **kw)


def _rtx_missing() -> str | None:
    return tensorrt_rtx_status()[1] if tensorrt_rtx_status()[0] is None else None


def _ran(data):
    return [name for name, s in data["stages"].items() if s["status"] == "ran"]


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    start = time.perf_counter()
    data = run_build(_opts(checkpoint, out), log=lambda _: None)
    return out, data, time.perf_counter() - start


def test_first_build_writes_every_artifact_and_the_report_keys(built):
    out, data, _ = built
    for name in ARTIFACTS:
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".*"))
    assert _ran(data)[:4] == ["data_calib", "data_eval", "ptq", "export"]
    if _rtx_missing():  # nothing can build an engine here: the stage says why
        assert data["stages"]["engine"]["status"] == "unavailable" and "TensorRT" in data["stages"]["engine"]["detail"]
    else:  # no TensorRT + GPU here, so `auto` built the head engines with TensorRT-RTX; they are never run
        for name in ("rpn_head.fp32.rtx.plan", "rpn_head.int8.rtx.plan"):
            assert (out / name).stat().st_size > 0, name
            layers = json.loads((out / name.replace(".plan", ".layers.json")).read_text())
            assert layers["builder"] == "tensorrt-rtx" and layers["strongly_typed"], name
        assert data["stages"]["engine_fp32"]["status"] == "ran" and data["stages"]["engine_int8"]["status"] == "ran"
        assert data["engine"]["builder"] == "tensorrt-rtx" and not data["engine"]["runnable"]
        assert set(data["latency"]) == {"onnx", "meta", "settings"}  # not benched: an RTX engine needs an RTX GPU
        assert set(data["latency"]["settings"]) == {"onnx/fp32", "onnx/int8"}
        assert "not an INT8 latency figure" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert isinstance(report["accuracy"]["fp32"]["mAP"], float) and isinstance(report["accuracy"]["int8"]["mAP"], float)
    assert set(report["tensors"]) >= {"reg_0", "hm_0", "hm_1"}
    assert all(-1.0 <= t["cosine"] <= 1.0 for t in report["tensors"].values())
    for precision in ("fp32", "int8"):
        for stage in ("voxelize", "backbone", "rpn_head", "decode", "end_to_end"):
            assert report["latency"]["onnx"][precision][stage]["median_ms"] > 0
    assert report["artifacts"]["rpn_head.int8.onnx"]["bytes"] == (out / "rpn_head.int8.onnx").stat().st_size
    backbone = report["per_layer_backbone"]
    assert backbone["layers"][0]["tensor"] == "conv_input.0" and backbone["layers"][0]["cosine"] == pytest.approx(1.0)
    assert backbone["first_jump"] == "conv1.0.conv1"  # the first int8 layer (only conv_input stays fp16)
    quant = report["model"]["quantization"]
    assert quant["recipe"] == "learn-ranges" and quant["ranges_learned"] is True
    assert list(quant["float_layers"]) == ["backbone.conv_input*"]
    assert "FP16" in quant["float_layers"]["backbone.conv_input*"]
    assert [b["png"] for b in report["bev"]] == ["bev_1.png", "bev_2.png"]  # both evaluation frames, worst first
    assert all((out / b["png"]).is_file() for b in report["bev"])
    assert set(report["validation"]) == {"scn.fp16.onnx", "scn.int8.onnx", "scn.int8.qdq.onnx", "rpn_head.fp32.onnx",
                                         "rpn_head.int8.onnx"}
    md = (out / "report.md").read_text()
    assert "## Files checked at export" in md and "executes bit-identically" in md
    assert "| **mAP**" in md and "backbone" in md and "rpn_head.int8.onnx" in md
    assert "](bev_1.png)" in md and "layers left float" in md


def test_run_results_load_with_polygraphy(built):
    out, _, _ = built
    results = RunResults.load(str(out / "compare.run_results.json"))
    assert [name for name, _ in results.items()] == ["onnxrt-fp32", "onnxrt-int8"]
    first = results["onnxrt-int8"][0]
    assert "hm_0" in first and first["hm_0"].ndim == 4


def test_second_build_skips_everything(built, checkpoint):
    out, _, _ = built
    data = run_build(_opts(checkpoint, out), log=lambda _: None)
    assert _ran(data) == []  # (what that saves in time is measured in README's sample figures, not here)
    assert all(s["status"] in ("skipped", "unavailable") for s in data["stages"].values()), data["stages"]


def test_deleting_an_artifact_reruns_only_what_makes_it(built, checkpoint):
    out, _, _ = built
    before = {name: (out / name).read_bytes() for name in ("rpn_head.int8.onnx", "compare.json")}
    (out / "rpn_head.int8.onnx").unlink()
    data = run_build(_opts(checkpoint, out), log=lambda _: None)
    assert _ran(data) == ["export"]  # the export is deterministic: same bytes, nothing downstream reruns
    assert (out / "rpn_head.int8.onnx").read_bytes() == before["rpn_head.int8.onnx"]
    (out / "compare.json").unlink()
    data = run_build(_opts(checkpoint, out), log=lambda _: None)
    assert _ran(data) == ["compare", "report"]


def test_interrupted_build_leaves_nothing_half_written_and_resumes(checkpoint, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_stage, "run_compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_build(_opts(checkpoint, tmp_path), log=lambda _: None)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "compare.json").exists()
    monkeypatch.undo()
    data = run_build(_opts(checkpoint, tmp_path), log=lambda _: None)
    assert _ran(data) == ["compare", "bench", "report"]  # ptq, export and check were complete: kept


def test_bad_inputs_are_one_line_errors(checkpoint, tmp_path, capsys):
    assert main(["build", "--config", "tiny", "--checkpoint", str(tmp_path / "missing.pth"),
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.pth: no such checkpoint" in err
    assert main(["build", "--config", "tiny", "--checkpoint", str(checkpoint), "--calib-data",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nowhere: no such data folder" in err
    assert main(["eval", "--config", "tiny", "--backend", "onnx", "--data", str(tmp_path), "--artifacts",
                 str(tmp_path)]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    os.makedirs(tmp_path / "onnx_only", exist_ok=True)
    assert main(["engine", "--onnx", str(tmp_path / "onnx_only" / "x.onnx"), "--out", str(tmp_path / "x.plan")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "x.onnx" in err or "TensorRT" in err


def test_stage_commands_on_a_build_folder(built, tmp_path, capsys):
    out, _, _ = built
    data = str(out / "data" / "eval")
    assert main(["compare", "--config", "tiny", "--artifacts", str(out), "--data", data, "--out", str(tmp_path),
                 "--checkpoint", str(out / "ptq.pth"), "--max-frames", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "hm_0" in printed and "INT8 vs FP32 boxes within 0.1m" in printed and "mAP FP32" in printed
    assert "INT8 files vs PyTorch fake quant within 0.01m" in printed
    figures = json.loads((tmp_path / "compare.json").read_text())
    assert figures["frames"] == 2 and set(figures["detections"]["int8_files_vs_pytorch_fake_quant"]) == {
        "files", "baseline_fp16_features"}
    assert main(["bench", "--config", "tiny", "--artifacts", str(out), "--checkpoint", str(out / "ptq.pth"),
                 "--data", data, "--backend", "onnx", "torch", "--iterations", "2", "--warmup", "0",
                 "--out", str(tmp_path), "--quiet"]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert set(bench) == {"onnx/fp32", "onnx/int8", "torch/fp32", "torch/int8"}
    assert bench["torch/int8"]["stages"]["backbone"]["count"] == 2
    for precision in ("fp32", "int8"):
        assert main(["eval", "--config", "tiny", "--backend", "onnx", "--precision", precision, "--artifacts", str(out),
                     "--data", data, "--out", str(tmp_path / f"m_{precision}.json"), "--quiet"]) == 0
    # eval on the files reproduces compare's mAP (same frames, same files)
    report = json.loads((out / "report.json").read_text())
    for precision in ("fp32", "int8"):
        metrics = json.loads((tmp_path / f"m_{precision}.json").read_text())
        assert metrics["mAP"] == pytest.approx(report["accuracy"][precision]["mAP"], abs=1e-12)
    assert main(["eval", "--config", "tiny", "--backend", "trt", "--artifacts", str(out), "--data", data]) == 2
    assert "rpn_head.fp32.plan" in capsys.readouterr().err


def test_a_killed_build_resumes(checkpoint, tmp_path):
    """SIGKILL mid-way (after PTQ, during the export): the next run completes and leaves no temporary file."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "trt_centerpoint.cli", "build", "--config", "tiny", "--checkpoint", str(checkpoint),
            "--out", str(out), "--calib-frames", "2", "--eval-frames", "2", "--iterations", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.is_file() and '"ptq"' in manifest.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "report.md").exists()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    for name, record in stages.items():  # what the manifest records is complete on disk
        for artifact in record["outputs"]:
            assert (out / artifact).is_file(), (name, artifact)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for name in ARTIFACTS:
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")) and not [p for p in (out / "data").iterdir() if p.name.startswith(".")]
    final = json.loads((out / "manifest.json").read_text())["stages"]
    assert final["ptq"]["finished"] == stages["ptq"]["finished"]  # PTQ was not redone


def test_qat_build_exports_the_fine_tuned_checkpoint(checkpoint, tmp_path):
    from trt_centerpoint.quant.ptq import read_ptq_meta
    from trt_centerpoint.quant.qat import QAT_SKIP

    data = run_build(_opts(checkpoint, tmp_path, qat=True), log=lambda _: None)
    assert _ran(data)[:5] == ["data_calib", "data_eval", "ptq", "qat", "export"]
    assert "distill QAT" in data["stages"]["qat"]["detail"]  # QAT's default objective, labels or not
    assert read_ptq_meta(tmp_path / "qat.pth")["skip"] == list(QAT_SKIP)  # the whole RPN and head INT8
    export = json.loads((tmp_path / "manifest.json").read_text())["stages"]["export"]
    assert export["inputs"]["checkpoint"] == file_sha256(tmp_path / "qat.pth")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["quantization"]["stage"] == "qat"


def test_compare_without_labels_has_no_accuracy(built, tmp_path):
    out, _, _ = built
    figures = run_compare(load_config("tiny"), out, out / "data" / "eval" / "points", out=tmp_path, max_frames=1,
                          progress=False, log=lambda _: None)
    assert figures["accuracy"] is None and figures["frames"] == 1 and "hm_0" in figures["tensors"]
