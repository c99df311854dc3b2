"""The command line's option groups: one spelling per option, old spellings still parsed, help with defaults,
and each subcommand wiring its options to its stage function (the stage functions replaced by recorders)."""

import argparse

import onnx
import pytest
from onnx import TensorProto, helper

from trt_centerpoint import cli
from trt_centerpoint.args import (
    DataArgs,
    FrameArgs,
    FrameCount,
    MethodArgs,
    ModelArgs,
    OutputArgs,
    ProgressArgs,
    RuntimeArgs,
    TrainingArgs,
    add_option,
)
from trt_centerpoint.quant.calibrate import METHODS
from trt_centerpoint.quant.quantize import DEFAULT_SKIP
from trt_centerpoint.quant.recipe import FLOAT_LAYERS

COMMANDS = ("infer", "synth", "convert", "init-checkpoint", "train", "eval", "ptq", "qat", "sensitivity", "engine",
            "export", "compare", "bench", "build", "check")


@pytest.fixture(scope="module")
def subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_every_command_has_a_description_and_helped_options_with_defaults(subparsers):
    assert set(subparsers) == set(COMMANDS)
    for name, p in subparsers.items():
        assert p.description and p.description.strip(), name
        text = p.format_help()
        assert p.description.split()[0] in text
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and not action.required and action.default not in (None, False):
                assert "default" in action.help, f"{name} {action.option_strings[0]}: help without its default"


def test_old_frame_spellings_still_parse_but_help_shows_the_new_ones(subparsers):
    renamed = {"ptq": ("--num-frames", "frames"), "qat": ("--num-frames", "frames"),
               "sensitivity": ("--num-frames", "calib_frames"), "export": ("--max-frames", "frames"),
               "compare": ("--max-frames", "frames")}
    for command, (old, dest) in renamed.items():
        text = subparsers[command].format_help()
        assert old not in text, command
        assert ("--frames" if dest == "frames" else "--calib-frames") in text, command
    required = {"ptq": ["-p", "x.pth", "--calib-data", "d", "--out", "o"],
                "qat": ["-p", "x", "--data", "d", "--out", "o"],
                "sensitivity": ["-p", "x", "--calib-data", "d", "--out", "o"], "export": ["-p", "x", "--out", "o"],
                "compare": ["--artifacts", "a", "--data", "d"]}
    for command, (old, dest) in renamed.items():
        base = [command, *required[command]]
        assert getattr(parse(*base, old, "7"), dest) == 7
        new = "--frames" if dest == "frames" else "--calib-frames"
        assert getattr(parse(*base, new, "5"), dest) == 5
        assert getattr(parse(*base, new, "5", old, "6"), dest) == 6  # the last one given wins, as for any option
    args = parse("build", "--calib-frames", "2", "--eval-frames", "3")
    assert FrameArgs.read(args).calib == 2 and FrameArgs.read(args).eval == 3
    args = parse("sensitivity", *required["sensitivity"], "--eval-frames", "4")
    assert FrameArgs.read(args).eval == 4 and FrameArgs.read(args).calib == 16


def test_defaults_come_from_the_stages(subparsers):
    args = parse("ptq", "-p", "x.pth", "--calib-data", "d", "--out", "o")
    assert (args.frames, args.method) == (100, "mse") and args.skip is None
    assert args.recipe == "learn-ranges"
    skip = next(a for a in subparsers["ptq"]._actions if a.dest == "skip")
    assert all(pattern in skip.help for pattern in FLOAT_LAYERS)
    recipe = next(a for a in subparsers["ptq"]._actions if a.dest == "recipe")
    assert all(pattern in recipe.help for pattern in DEFAULT_SKIP)  # what --recipe calibrate keeps float
    assert parse("export", "-p", "x", "--out", "o").frames == 16
    assert parse("compare", "--artifacts", "a", "--data", "d").frames == 50
    assert parse("qat", "-p", "x", "--data", "d", "--out", "o").frames is None
    build = parse("build")
    assert (build.out, build.calib_frames, build.eval_frames, build.iterations) == ("build", 32, 50, 20)
    assert build.recipe == "learn-ranges" and parse("build", "--recipe", "calibrate").recipe == "calibrate"
    for command in ("ptq", "sensitivity", "build"):
        method = next(a for a in subparsers[command]._actions if a.dest == "method")
        assert tuple(method.choices) == METHODS and "default mse" in method.help


def test_export_and_check_take_quiet():
    assert ProgressArgs.read(parse("export", "-p", "x", "--out", "o")) is True
    assert ProgressArgs.read(parse("export", "-p", "x", "--out", "o", "--quiet")) is False
    assert parse("check", "--quiet", "a.onnx").quiet


def test_groups_read_typed_values():
    args = parse("bench", "--data", "d", "--artifacts", "a", "--backend", "onnx", "trt", "--precision", "int8")
    runtime = RuntimeArgs.read(args)
    assert runtime.backends == ("onnx", "trt") and runtime.precisions == ("int8",)
    assert DataArgs.read(args) == DataArgs.read(argparse.Namespace(data="d", artifacts="a"))
    assert DataArgs.read(args).calib_data is None
    assert RuntimeArgs.read(parse("bench", "--data", "d")).precisions == ("fp32", "int8")
    eval_args = parse("eval", "--data", "d", "--backend", "trt", "--artifacts", "a")
    # eval picks the precision itself (int8 for a quantized checkpoint): no --precision reads back as None
    assert (RuntimeArgs.read(eval_args).backend, RuntimeArgs.read(eval_args).precision) == ("trt", None)
    model = ModelArgs.read(eval_args)
    assert (model.config, model.checkpoint) == ("synthetic_small", None)
    train = TrainingArgs.read(parse("train", "--data", "d", "--out", "o", "--no-augment", "--lr", "0.5"))
    assert (train.epochs, train.batch_size, train.lr, train.seed, train.augment) == (20, 2, 0.5, 0, False)
    qat = TrainingArgs.read(parse("qat", "-p", "x", "--data", "d", "--out", "o"))
    assert (qat.epochs, qat.lr) == (2, 1e-4)
    assert ModelArgs.read(parse("qat", "-p", "x", "--data", "d", "--out", "o")).checkpoint == "x"


def test_groups_on_a_bare_parser():
    p = argparse.ArgumentParser()
    for group in (ModelArgs(checkpoint="optional"), MethodArgs(), ProgressArgs(), OutputArgs("o", required=False),
                  FrameArgs(FrameCount("--frames", 4, "frames", old=("--n",))),
                  DataArgs(data="d", required=("data",))):
        group.add_to_parser(p)
    args = p.parse_args(["--data", "x", "--n", "9", "-c", "tiny"])
    assert FrameArgs.read(args).frames == 9 and ModelArgs.read(args).config == "tiny"
    frames = next(a for a in p._actions if a.dest == "frames")
    assert "--n" not in p.format_help() and frames.help.endswith("(default 4; all if fewer)")
    with pytest.raises(ValueError, match="not taken"):
        DataArgs(data="d", required=("artifacts",))
    with pytest.raises(ValueError, match="--frames"):
        FrameArgs(FrameCount("--num", 1, "frames"))
    q = argparse.ArgumentParser()
    add_option(q, "--new", old=("--old", "--older"), type=int, default=1, help="x (default 1)")
    assert q.parse_args([]).new == 1 and q.parse_args(["--older", "3"]).new == 3
    assert "--old" not in q.format_help()


# --- wiring: each command hands its options to its stage function


def test_infer_wires_backend_precision_and_artifacts(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "run_inference", lambda *a, **k: calls.append((a, k)) or {"f": []})
    assert cli.main(["infer", "--backend", "onnx", "--precision", "int8", "--artifacts", "b", "--points", "p",
                     "--quiet"]) == 0
    (args, kwargs), = calls
    assert args == ("synthetic_small", None, "p")
    assert kwargs == {"out": None, "backend": "onnx", "precision": "int8", "artifacts": "b", "progress": False,
                      "allow_overflow": False}
    assert "f: 0 detections" in capsys.readouterr().out


def test_infer_torch_backend_needs_a_checkpoint(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_inference", lambda *a, **k: pytest.fail("should not run"))
    assert cli.main(["infer", "--points", "p"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend torch needs --checkpoint" in err


def test_ptq_merges_the_skip_list_before_calibrating(monkeypatch, capsys):
    calls = []
    meta = {"quantized_layers": [], "num_quantizers": 0, "skip": [], "amax_method": "mse", "num_frames": 1,
            "num_frames_empty": 0, "float_layers": {}}
    monkeypatch.setattr(cli, "run_recipe", lambda *a, **k: calls.append((a, k)) or meta)
    assert cli.main(["ptq", "-c", "tiny", "-p", "x.pth", "--calib-data", "d", "--num-frames", "3", "--out", "o"]) == 0
    assert calls[-1][1]["skip"] == list(FLOAT_LAYERS) and calls[-1][1]["num_frames"] == 3
    assert calls[-1][1]["recipe"] == "learn-ranges"
    assert cli.main(["ptq", "-c", "tiny", "-p", "x.pth", "--calib-data", "d", "--recipe", "calibrate", "--out",
                     "o"]) == 0
    assert calls[-1][1]["skip"] == list(DEFAULT_SKIP) and calls[-1][1]["recipe"] == "calibrate"
    assert cli.main(["ptq", "-c", "tiny", "-p", "x.pth", "--calib-data", "d", "--skip", "--out", "o"]) == 0
    assert calls[-1][1]["skip"] == [] and calls[-1][1]["num_frames"] == 100
    assert "wrote o" in capsys.readouterr().out


def test_export_quiet_drops_the_validation_lines(monkeypatch, capsys):
    calls = []

    def fake_export(*args, **kwargs):
        calls.append(kwargs)
        kwargs["log"]("validation line")
        return {"outputs": {"scn.fp16.onnx": "0" * 64}}

    monkeypatch.setattr(cli, "run_export", fake_export)
    assert cli.main(["export", "-p", "x", "--out", "o", "--max-frames", "4"]) == 0
    assert "validation line" in capsys.readouterr().out and calls[-1]["max_frames"] == 4
    assert cli.main(["export", "-p", "x", "--out", "o", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "validation line" not in out and "wrote o/scn.fp16.onnx" in out and "wrote o/manifest.json" in out


def test_compare_prints_the_stage_summary(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_compare", lambda *a, **k: {"frames": k["max_frames"]})
    monkeypatch.setattr(cli, "summary_lines", lambda figures, out: [f"{figures['frames']} frames", f"wrote {out}"])
    assert cli.main(["compare", "--artifacts", "a", "--data", "d", "--frames", "5", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == ["5 frames", "wrote a"]


def test_check_quiet_prints_findings_only(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert cli.main(["check", str(path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{path}: ok (onnx; ")  # then which NVIDIA parser ran, or why none could
    assert cli.main(["check", "--quiet", str(path)]) == 0
    assert capsys.readouterr().out == ""
