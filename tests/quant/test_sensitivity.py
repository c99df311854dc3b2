"""`trt-centerpoint sensitivity`: per-layer ranking, reproducibility, the budget skip list and `ptq --skip-from`."""

import json

import pytest
import torch
from calib_helpers import make_tiny_model

from trt_centerpoint import cli
from trt_centerpoint._compat.pytorch_quantization import iter_quantizers
from trt_centerpoint.config import load_config
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import save_checkpoint
from trt_centerpoint.quant.calibrate import select_calibration_files, set_amax
from trt_centerpoint.quant.ptq import load_quantized_model, read_ptq_meta
from trt_centerpoint.quant.quantize import quantizable_layers
from trt_centerpoint.quant.sensitivity import (
    FidelityMetric,
    SensitivityError,
    analyze,
    calibrated_model,
    fidelity_frames,
    layer_quantizers,
    read_skip_list,
    run_sensitivity,
)


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory, tiny_cfg):
    path = tmp_path_factory.mktemp("sens") / "tiny_fp32.pth"
    save_checkpoint(make_tiny_model(tiny_cfg, seed=8), path)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_cfg, float_ckpt, tiny_data):
    out = tmp_path_factory.mktemp("sens_base")
    doc = run_sensitivity(tiny_cfg, float_ckpt, tiny_data, out, progress=False)
    return out, doc


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(r) == len(header) for r in rows)
    return header, rows


def test_table_covers_every_quantizable_layer_and_files_exist(base_run, tiny_cfg):
    out, doc = base_run
    expected = quantizable_layers(CenterPoint(tiny_cfg))
    assert len(expected) > 40 and "neck.concat" in expected and "backbone.conv2.3.add" in expected
    assert sorted(r["name"] for r in doc["layers"]) == sorted(expected)
    assert [r["rank"] for r in doc["layers"]] == list(range(1, len(expected) + 1))
    drops = [r["drop"] for r in doc["layers"]]
    assert drops == sorted(drops, reverse=True)  # most sensitive first
    assert doc["metric"] == "cosine" and doc["reference"]["metric"] == 1.0
    assert 0.9 < doc["all_quantized"]["cosine"] <= 1.0 and doc["all_quantized"]["snr_db"] > 10
    assert doc["skip"] is None and doc["budget"] is None and doc["frames"] == 3
    by_name = {r["name"]: r for r in doc["layers"]}
    assert by_name["neck.concat"]["quantizers"] == ["_input_quantizer"]
    assert by_name["neck.blocks.0.1"]["quantizers"] == ["_input_quantizer", "_weight_quantizer"]
    on_disk = json.loads((out / "sensitivity.json").read_text())
    assert on_disk["layers"][0]["name"] == doc["layers"][0]["name"]

    header, rows = parse_markdown_table((out / "sensitivity.md").read_text())
    assert header[:3] == ["rank", "layer", "kind"]
    assert [int(r[0]) for r in rows] == list(range(1, len(expected) + 1))
    assert [r[1].strip("`") for r in rows] == [r["name"] for r in doc["layers"]]

    png = (out / "sensitivity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_a_deliberately_terrible_layer_ranks_first_and_is_skipped(tiny_cfg, float_ckpt, tiny_data):
    files = select_calibration_files(tiny_data)
    model, _ = calibrated_model(tiny_cfg, float_ckpt, files, progress=False)
    target = "neck.blocks.0.4"
    quantizer = dict(layer_quantizers(model)[target])["neck.blocks.0.4._input_quantizer"]
    set_amax(quantizer, torch.tensor(1e-3))  # clips every activation of that conv to +-1e-3
    frames = fidelity_frames(model, files, tiny_cfg.voxel.num_point_features)
    result = analyze(model, FidelityMetric, frames, budget=1e-6, progress=False)
    first = result["layers"][0]
    assert first["name"] == target
    assert first["drop"] > 10 * result["layers"][1]["drop"]
    assert first["recovery"] == max(r["recovery"] for r in result["layers"])
    assert result["budget"]["met"] and result["skip"] == [target]
    assert result["budget"]["steps"][1] == {**result["budget"]["steps"][1], "action": "add", "layer": target}
    assert all(not q._disabled for _, q in iter_quantizers(model))  # left fully quantized


def test_two_runs_identical_json_and_budget_list_feeds_ptq(tmp_path, base_run, tiny_cfg, float_ckpt, tiny_data, capsys):
    _, base = base_run
    budget = (1.0 - base["all_quantized"]["cosine"]) / 2  # forces at least one layer back to float
    first = run_sensitivity(tiny_cfg, float_ckpt, tiny_data, tmp_path / "a", budget=budget, progress=False)
    assert cli.main(["sensitivity", "--config", "tiny", "--checkpoint", str(float_ckpt), "--calib-data",
                     str(tiny_data), "--budget", repr(budget), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "a" / "sensitivity.json").read_bytes() == (tmp_path / "b" / "sensitivity.json").read_bytes()
    assert first["layers"] == base["layers"]  # the ranking does not depend on the budget

    skip = first["skip"]
    assert skip and first["budget"]["met"] and 1.0 - first["budget"]["metric"] <= budget
    assert read_skip_list(tmp_path / "b" / "sensitivity.json") == skip

    out = tmp_path / "ptq.pth"
    assert cli.main(["ptq", "-c", "tiny", "-p", str(float_ckpt), "--calib-data", str(tiny_data), "--method", "max",
                     "--skip-from", str(tmp_path / "b" / "sensitivity.json"), "--skip", "backbone.conv_input*",
                     "--out", str(out), "--quiet"]) == 0
    meta = read_ptq_meta(out)
    assert meta["skip"] == ["backbone.conv_input*", *skip]
    assert not set(skip) & set(meta["quantized_layers"])
    model = load_quantized_model(out)
    names = {name.rsplit(".", 1)[0] for name, _ in iter_quantizers(model)}
    assert not (set(skip) | {"backbone.conv_input.0"}) & names
    assert len(names) == len(quantizable_layers(CenterPoint(tiny_cfg))) - len(skip) - 1


def test_skip_from_needs_a_budget_run(base_run, tmp_path, float_ckpt, tiny_data, capsys):
    out, _ = base_run
    with pytest.raises(SensitivityError, match="--budget"):
        read_skip_list(out / "sensitivity.json")
    with pytest.raises(SensitivityError, match="another model config"):
        read_skip_list(out / "sensitivity.json", expect_config=load_config("synthetic_small"))
    (tmp_path / "other.json").write_text("{}")
    assert cli.main(["ptq", "-c", "tiny", "-p", str(float_ckpt), "--calib-data", str(tiny_data),
                     "--skip-from", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.pth")]) == 2
    assert "not a sensitivity.json" in capsys.readouterr().err


def test_map_metric_with_labels(tmp_path, tiny_cfg, float_ckpt, tiny_data):
    doc = run_sensitivity(tiny_cfg, float_ckpt, tiny_data, tmp_path, data=tiny_data, num_frames=1, eval_frames=2,
                          budget=0.0, progress=False, plot=False)
    assert doc["metric"] == "mAP" and doc["frames"] == 2 and len(doc["frame_ids"]) == 2
    assert 0.0 <= doc["reference"]["metric"] <= 1.0
    assert doc["reference"]["cosine"] == 1.0 and doc["reference"]["snr_db"] == 200.0
    assert all(0.5 < r["only_this_detail"]["cosine"] <= 1.0 for r in doc["layers"])
    keys = [(-r["drop"], -r["recovery"], r["only_this_detail"]["cosine"]) for r in doc["layers"]]
    assert keys == sorted(keys)
    assert doc["budget"]["met"]  # budget 0 is always reachable (at worst every layer in float)
    assert doc["budget"]["loss"] <= 0.0
    assert (tmp_path / "sensitivity.md").read_text().count("mAP (only this)") == 1


def test_a_quantized_checkpoint_is_ranked_with_its_own_ranges(tmp_path, tiny_cfg, float_ckpt, tiny_data, base_run):
    """After `ptq` / `qat`: `sensitivity` on that file ranks its own ranges (no recalibration), over the layers it
    quantizes; `--budget` then proposes which of them to leave float on top of its skip list."""
    from trt_centerpoint.quant.ptq import run_ptq

    skip = ["backbone.conv_input*"]
    ptq = tmp_path / "ptq.pth"
    run_ptq(tiny_cfg, float_ckpt, tiny_data, ptq, method="max", skip=skip, progress=False)
    doc = run_sensitivity(tiny_cfg, ptq, tiny_data, tmp_path / "sens", budget=0.5, progress=False)
    assert doc["method"]["ranges_from"] == str(ptq) and doc["method"]["skip"] == read_ptq_meta(ptq)["skip"]
    names = {r["name"] for r in doc["layers"]}
    assert names and not any(n.startswith("backbone.conv_input") for n in names)
    assert names < {r["name"] for r in base_run[1]["layers"]}  # the float checkpoint's run covers more
    model = load_quantized_model(ptq, expect_config=tiny_cfg)
    amax = {n: q.amax.clone() for n, q in iter_quantizers(model) if q.amax is not None}
    assert amax  # ranked with these ranges, as loaded: nothing was recalibrated
    assert isinstance(doc["skip"], list)
