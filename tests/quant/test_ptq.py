"""PTQ end to end: the `ptq` command, the saved file, bit-exact reload in a new process, `eval --precision int8`."""

from pathlib import Path

import pytest
import torch
from calib_helpers import assert_reload_is_bit_exact, make_tiny_model

from trt_centerpoint import cli
from trt_centerpoint.config import config_to_dict, load_config
from trt_centerpoint.model.checkpoint import CheckpointError, save_checkpoint
from trt_centerpoint.quant.calibrate import select_calibration_files
from trt_centerpoint.quant.ptq import load_quantized_model, ptq_model, read_ptq_meta, save_quantized_model
from trt_centerpoint.stages.evaluate import run_eval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory, tiny_cfg):
    path = tmp_path_factory.mktemp("ptq") / "tiny_fp32.pth"
    save_checkpoint(make_tiny_model(tiny_cfg, seed=8), path)
    return path


def test_cli_ptq_writes_a_weights_only_checkpoint(tmp_path, float_ckpt, tiny_data, capsys):
    out = tmp_path / "ptq.pth"
    rc = cli.main(["ptq", "--config", "tiny", "--checkpoint", str(float_ckpt), "--calib-data", str(tiny_data),
                   "--num-frames", "2", "--method", "mse", "--skip", "backbone.conv_input*", "--out", str(out),
                   "--quiet"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    saved = torch.load(out, map_location="cpu", weights_only=True)
    meta = saved["meta"]
    assert meta["config"] == config_to_dict(load_config("tiny"))
    assert meta["amax_method"] == "mse" and meta["skip"] == ["backbone.conv_input*"]
    assert meta["num_frames"] == 2 and meta["bn_fused"] is True
    assert {"torch", "pytorch_quantization", "spconv", "trt_centerpoint"} <= set(meta["versions"])
    assert "backbone.conv1.0.add" in meta["quantized_layers"]  # the default skip list was replaced
    assert not any(k.startswith("backbone.conv_input.0._") for k in saved["state_dict"])
    assert not any(".bn" in k or "running_mean" in k for k in saved["state_dict"])  # BN folded
    assert read_ptq_meta(out) == meta
    # sparse weights and biases hold exactly the FP16 values the scn files deploy (2D weights do not need to)
    assert meta["sparse_weights_fp16"] is True
    sparse = [k for k in saved["state_dict"] if k.startswith("backbone.") and k.endswith((".weight", ".bias"))]
    assert sparse and all(torch.equal(saved["state_dict"][k], saved["state_dict"][k].half().float()) for k in sparse)
    head = saved["state_dict"]["neck.blocks.0.1.weight"]
    assert not torch.equal(head, head.half().float())


def test_reload_in_a_new_process_is_bit_exact(tmp_path, tiny_cfg, float_ckpt, tiny_data):
    model, meta = ptq_model(tiny_cfg, float_ckpt, select_calibration_files(tiny_data), progress=False)
    path = tmp_path / "ptq.pth"
    save_quantized_model(model, path, meta)
    assert_reload_is_bit_exact(model, path, tiny_data, tmp_path)


def test_eval_int8_runs_the_fake_quant_model(tmp_path, tiny_cfg, float_ckpt, tiny_data, capsys):
    path = tmp_path / "ptq.pth"
    assert cli.main(["ptq", "-c", "tiny", "-p", str(float_ckpt), "--calib-data", str(tiny_data), "--method", "max",
                     "--out", str(path), "--quiet"]) == 0
    model = load_quantized_model(path, expect_config=tiny_cfg)
    assert model.ptq_meta["activation_calibrator"] == "max"
    metrics = run_eval(tiny_cfg, path, tiny_data, precision="int8", progress=False)
    assert metrics["model"]["precision"] == "int8" and "mAP" in metrics
    capsys.readouterr()
    assert cli.main(["eval", "-c", "tiny", "-p", str(path), "--data", str(tiny_data), "--precision", "int8",
                     "--quiet"]) == 0


def test_wrong_files_are_refused(tmp_path, tiny_cfg, float_ckpt, tiny_data, capsys):
    with pytest.raises(CheckpointError, match="not a quantized \\(PTQ\\) checkpoint"):
        load_quantized_model(float_ckpt)
    path = tmp_path / "ptq.pth"
    model, meta = ptq_model(tiny_cfg, float_ckpt, select_calibration_files(tiny_data, 1), method="max", progress=False)
    save_quantized_model(model, path, meta)
    with pytest.raises(CheckpointError, match="quantized for another model config"):
        load_quantized_model(path, expect_config=load_config("synthetic_small"))
    rc = cli.main(["ptq", "-c", "tiny", "-p", str(float_ckpt), "--calib-data", str(tmp_path / "nowhere"),
                   "--out", str(tmp_path / "x.pth"), "--quiet"])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
