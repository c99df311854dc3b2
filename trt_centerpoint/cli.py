"""The `trt-centerpoint` command: one thin subcommand per stage.

Each subcommand parses its options (the shared groups live in `trt_centerpoint.args`) and calls one function
of the package. A `UserError` (bad file, bad config, unfit checkpoint) is printed as one line on stderr with
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from trt_centerpoint import __version__
from trt_centerpoint.args import (
    BuilderArgs,
    DataArgs,
    FrameArgs,
    FrameCount,
    LibspconvArgs,
    MethodArgs,
    ModelArgs,
    NuScenesArgs,
    OutputArgs,
    OverflowArgs,
    ProgressArgs,
    RuntimeArgs,
    ThreadArgs,
    TrainingArgs,
    add_point_layout,
    apply_libspconv_option,
)
from trt_centerpoint.artifacts import BENCH_JSON, BENCH_PNG, MANIFEST, REPORT_MD
from trt_centerpoint.config import load_config
from trt_centerpoint.data.nuscenes.convert import convert_nuscenes
from trt_centerpoint.data.nuscenes.synth import DEFAULT_SAMPLES_PER_SCENE, DEFAULT_SCENES, write_nuscenes
from trt_centerpoint.data.points import set_point_layout
from trt_centerpoint.data.synth.dataset import unknown_classes, write_dataset
from trt_centerpoint.distributed import is_main_process
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import format_table
from trt_centerpoint.eval.compare import DEFAULT_RUN_RESULTS_MB
from trt_centerpoint.export.scn.output_bound import DEFAULT_MARGIN
from trt_centerpoint.fileio import ensure_parent
from trt_centerpoint.model.random_init import save_random_checkpoint
from trt_centerpoint.quant.ptq import DEFAULT_NUM_FRAMES as PTQ_FRAMES
from trt_centerpoint.quant.qat import MIN_RANGE_LR, OBJECTIVES, RANGE_KINDS, RANGE_TRAVEL, QATOptions, run_qat
from trt_centerpoint.quant.quantize import DEFAULT_SKIP
from trt_centerpoint.quant.recipe import DEFAULT_RECIPE, RECIPES, default_skip, run_recipe
from trt_centerpoint.quant.sensitivity import DEFAULT_NUM_FRAMES as SENSITIVITY_FRAMES
from trt_centerpoint.quant.sensitivity import run_sensitivity
from trt_centerpoint.quant.skip import resolve_skip_list
from trt_centerpoint.report.markdown import summary_table
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.trt.build import build_engine
from trt_centerpoint.runtime.trt.inspect import format_counts
from trt_centerpoint.stages.bench import run_bench
from trt_centerpoint.stages.build import BuildOptions, run_build
from trt_centerpoint.stages.check import EXIT_FINDINGS, check_files, exit_status
from trt_centerpoint.stages.compare import BACKENDS as COMPARE_BACKENDS
from trt_centerpoint.stages.compare import DEFAULT_MAX_FRAMES as COMPARE_FRAMES
from trt_centerpoint.stages.compare import run_compare, summary_lines
from trt_centerpoint.stages.evaluate import METRICS, eval_notes, run_eval
from trt_centerpoint.stages.export import DEFAULT_MAX_FRAMES as EXPORT_FRAMES
from trt_centerpoint.stages.export import run_export
from trt_centerpoint.stages.infer import detections_table, run_inference
from trt_centerpoint.threads import set_threads
from trt_centerpoint.train.loop import TrainOptions, train

EXIT_USER_ERROR = 2

DEFAULT_SYNTH_FRAMES = 100
DEFAULT_SHOW = 20


def _silent(line: str) -> None:
    """A `log` that drops its lines (`--quiet`)."""


def _require_checkpoint_for_torch(backend: str, checkpoint: str | None) -> None:
    if backend == "torch" and not checkpoint:
        raise UserError("--backend torch needs --checkpoint (onnx / trt read --artifacts BUILD_DIR)")


# --- commands


def cmd_infer(args: argparse.Namespace) -> int:
    model, runtime = ModelArgs.read(args), RuntimeArgs.read(args)
    _require_checkpoint_for_torch(runtime.backend, model.checkpoint)
    points = NuScenesArgs.read(args).sources(args.points)[0]
    results = run_inference(model.config, model.checkpoint, points, out=args.out, backend=runtime.backend,
                            precision=runtime.precision, artifacts=DataArgs.read(args).artifacts,
                            progress=ProgressArgs.read(args), allow_overflow=OverflowArgs.read(args))
    for stem, dets in results.items():
        print(f"{stem}: {len(dets)} detections")
        if dets:
            print(detections_table(dets, limit=args.show))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    if args.format == "nuscenes":
        made = write_nuscenes(args.out, version=args.version, scenes=args.scenes,
                              samples_per_scene=args.samples_per_scene, seed=args.seed,
                              progress=ProgressArgs.read(args), force=args.force)
        print(f"wrote a synthetic nuScenes {made['version']} dataroot to {args.out}: {len(made['scenes'])} scene(s) "
              f"({', '.join(made['scenes'])}), {made['samples']} samples, {made['sweeps']} LIDAR_TOP sweeps, "
              f"{made['annotations']} annotations")
        return 0
    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames} (an empty data set scores nothing)")
    cfg = load_config(ModelArgs.read(args).config)
    unknown = unknown_classes(cfg)
    if unknown and len(unknown) < len(cfg.class_names):
        known = [n for n in cfg.class_names if n not in unknown]
        print(f"config {cfg.name}: labeling {', '.join(known)} only; the generator cannot make "
              f"{', '.join(unknown)} ({len(unknown)} classes)")
    write_dataset(args.out, frames=args.frames, seed=args.seed, config=cfg, progress=ProgressArgs.read(args),
                  force=args.force)
    print(f"wrote {args.frames} frames to {args.out} (points/, labels/)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    selection = NuScenesArgs.read(args).selection(args.dataroot)
    meta = convert_nuscenes(selection, args.out, force=args.force, progress=ProgressArgs.read(args))
    what = "points/, labels/, meta.json" if selection.labeled else "points/, meta.json"
    print(f"wrote {len(meta['stems'])} samples of {selection} to {args.out} ({what})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    t = TrainingArgs.read(args)
    opts = TrainOptions(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, seed=t.seed, augment=t.augment,
                        half=args.half)
    meta = train(load_config(ModelArgs.read(args).config), DataArgs.read(args).data, args.out, opts, init=args.init,
                 resume=not args.no_resume, progress=ProgressArgs.read(args))
    last = meta["history"][-1] if meta["history"] else {}
    print(f"wrote {args.out} (epochs {opts.epochs}, final loss {last.get('loss', float('nan')):.4f})")
    return 0


def cmd_init_checkpoint(args: argparse.Namespace) -> int:
    cfg = load_config(ModelArgs.read(args).config)
    ensure_parent(args.out, "checkpoint")
    meta = save_random_checkpoint(cfg, args.out, seed=args.seed)
    print(f"wrote {args.out} ({cfg.name}, {meta['init']['parameters']:,} parameters, random init seed {args.seed}: "
          "detections are noise, for size / time / memory runs)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    model, runtime, data = ModelArgs.read(args), RuntimeArgs.read(args), DataArgs.read(args)
    if args.detections is None:
        _require_checkpoint_for_torch(runtime.backend, model.checkpoint)
    metrics = run_eval(load_config(model.config), model.checkpoint, data.data, out=args.out,
                       dump_detections=args.dump_detections, backend=runtime.backend, precision=runtime.precision,
                       progress=ProgressArgs.read(args), artifacts=data.artifacts, metric=args.metric,
                       detections=args.detections, allow_overflow=OverflowArgs.read(args),
                       max_frames=FrameArgs.read(args).frames, announce=print)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    print(format_table(metrics))
    for line in eval_notes(metrics):
        print(line)
    for path in (args.out, args.dump_detections):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    model = ModelArgs.read(args)
    skip = resolve_skip_list(args.skip, args.skip_from, model.config, default=default_skip(args.recipe))
    meta = run_recipe(model.config, model.checkpoint, DataArgs.read(args).calib_data, args.out, recipe=args.recipe,
                      num_frames=FrameArgs.read(args).frames, method=MethodArgs.read(args), skip=skip,
                      percentile=args.percentile, bn_fused=not args.no_fuse_bn, device=args.device,
                      progress=ProgressArgs.read(args))
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    print(f"quantized {len(meta['quantized_layers'])} layers ({meta['num_quantizers']} quantizers), "
          f"skipped {', '.join(meta['skip']) or 'nothing'}; amax {meta['amax_method']} over "
          f"{meta['num_frames']} frames ({meta['num_frames_empty']} empty)")
    for pattern, why in meta["float_layers"].items():
        print(f"float: {pattern}: {why}")
    if "learned_ranges" in meta:
        r = meta["learned_ranges"]
        print(f"learned the activation ranges label-free ({r['epochs']} epoch distilled from FP32 on {r['frames']} "
              f"frames, weights unchanged, {r['seconds']:.0f} s)")
    print(f"wrote {args.out}")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    t = TrainingArgs.read(args)
    opts = QATOptions(objective=args.objective, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                seed=t.seed, augment=t.augment, num_frames=FrameArgs.read(args).frames,
                                teacher=args.teacher, device=args.device, ranges=args.ranges,
                                range_lr=args.range_lr, range_warmup=args.range_warmup)
    _, meta = run_qat(ModelArgs.read(args).checkpoint, DataArgs.read(args).data, args.out, opts,
                                progress=ProgressArgs.read(args))
    qat = meta["qat"]
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        last = qat["history"][-1] if qat["history"] else {}
        print(f"QAT ({qat['objective']}) {qat['epochs']} epoch(s) on {qat['frames']} frames x {qat['world_size']} "
              f"process(es), final loss {last.get('loss', float('nan')):.4f}")
        print(f"wrote {args.out}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    model, data, frames = ModelArgs.read(args), DataArgs.read(args), FrameArgs.read(args)
    start = time.perf_counter()
    doc = run_sensitivity(model.config, model.checkpoint, data.calib_data, args.out,
                                            data=data.data, num_frames=frames.calib, eval_frames=frames.eval,
                                            budget=args.budget, method=MethodArgs.read(args), seed=args.seed,
                                            progress=ProgressArgs.read(args))
    name = doc["metric"]
    print(f"{len(doc['layers'])} layers, {doc['frames']} frames, {name}: FP32 {doc['reference']['metric']:.6f}, "
          f"all quantized {doc['all_quantized']['metric']:.6f} ({time.perf_counter() - start:.1f} s)")
    for row in doc["layers"][: args.show]:
        print(f"  {row['rank']:>3}  {row['name']:<40} drop {row['drop']:+.3e}  recovery {row['recovery']:+.3e}")
    if doc["budget"] is not None:
        b = doc["budget"]
        print(f"budget {b['value']:g}: {'met' if b['met'] else 'NOT met'}; skip {', '.join(b['skip']) or 'nothing'}")
    for stem in ("json", "md", "png"):
        print(f"wrote {Path(args.out) / f'sensitivity.{stem}'}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    chosen = BuilderArgs.read(args)
    result = build_engine(args.onnx, args.out, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                          fp16_io=args.fp16_io, builder=chosen.builder,
                          compute_capabilities=chosen.compute_capabilities or None)
    print(f"built {result.engine} in {result.seconds:.1f} s ({result.settings.describe()}; runs on "
          f"{result.settings.describe_targets()}); {format_counts(result.summary)}")
    for path in (result.engine, result.layers, result.log, result.timing_cache):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = ModelArgs.read(args)
    record = run_export(model.config, model.checkpoint, args.out,
                                     calib_data=DataArgs.read(args).calib_data, max_frames=FrameArgs.read(args).frames,
                                     margin=args.bound_margin, fp16=args.fp16, fp16_io=args.fp16_io,
                                     log=print if ProgressArgs.read(args) else _silent,
                                     output_bound=args.output_bound)
    for name, digest in record["outputs"].items():
        print(f"wrote {Path(args.out) / name} (sha256 {digest[:12]})")
    print(f"wrote {Path(args.out) / MANIFEST} (stage export)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    model, data = ModelArgs.read(args), DataArgs.read(args)
    apply_libspconv_option(args)
    figures = run_compare(load_config(model.config), data.artifacts, data.data, out=args.out,
                                        checkpoint=model.checkpoint, max_frames=FrameArgs.read(args).frames,
                                        save_frames=args.save_frames, progress=ProgressArgs.read(args),
                                        backend=args.backend, allow_overflow=OverflowArgs.read(args),
                                        run_results_mb=args.run_results_mb)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    for line in summary_lines(figures, args.out or data.artifacts):
        print(line)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    model, data, runtime = ModelArgs.read(args), DataArgs.read(args), RuntimeArgs.read(args)
    run_bench(load_config(model.config), data.artifacts, data.data, out=args.out, backends=list(runtime.backends),
              precisions=list(runtime.precisions), checkpoint=model.checkpoint, iterations=args.iterations,
              warmup=args.warmup, progress=ProgressArgs.read(args), allow_overflow=OverflowArgs.read(args),
              max_seconds=args.max_seconds)
    out = args.out or data.artifacts
    print(f"wrote {out}/{BENCH_JSON} and {out}/{BENCH_PNG}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    model, data, frames = ModelArgs.read(args), DataArgs.read(args), FrameArgs.read(args)
    builder = BuilderArgs.read(args)
    opts = BuildOptions(config=model.config, checkpoint=model.checkpoint, calib_data=data.calib_data,
                        eval_data=data.eval_data, out=args.out, qat=args.qat, recipe=args.recipe,
                        method=MethodArgs.read(args),
                        calib_frames=frames.calib, eval_frames=frames.eval, bench_iterations=args.iterations,
                        progress=ProgressArgs.read(args), builder=builder.builder,
                        compute_capabilities=builder.compute_capabilities,
                        allow_overflow=OverflowArgs.read(args), libspconv=LibspconvArgs.read(args).folder)
    report = run_build(opts)
    print(summary_table(report))
    ran = [name for name, s in report["stages"].items() if s["status"] == "ran"]
    what = f"ran: {', '.join(ran)}" if ran else "every stage up to date, nothing ran"
    print(f"build finished in {report['seconds']:.1f} s ({what}); report: {Path(args.out) / REPORT_MD}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    chosen = LibspconvArgs.read(args)
    spconv = open_libspconv(chosen.folder, chosen.compute_capabilities) if chosen.folder else None
    if spconv is not None:
        print(spconv.verdict.line, file=sys.stdout if spconv.verdict.ok else sys.stderr)
        if not spconv.verdict.ok:
            return EXIT_FINDINGS
    checks = check_files(args.files, use_parser=not args.no_parser, spconv=spconv)
    for check in checks:
        for line in check.lines(verbose=ProgressArgs.read(args)):
            print(line, file=sys.stderr if check.error else sys.stdout)
    return exit_status(checks)


# --- the parser


def _command(sub, name: str, summary: str, description: str, func, *groups) -> argparse.ArgumentParser:
    """A subcommand: `summary` in the command list, `description` atop its --help, then the option groups."""
    p = sub.add_parser(name, help=summary, description=description)
    for group in (*groups, ThreadArgs()):
        group.add_to_parser(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trt-centerpoint",
        description="Quantize, export and deploy CenterPoint LiDAR detectors to TensorRT INT8, with numbers.",
    )
    parser.add_argument("--version", action="version", version=f"trt-centerpoint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    progress = ProgressArgs()

    p = _command(sub, "infer", "run a model on point clouds and print / save detections",
                 "Detect objects in point clouds with the PyTorch model (--backend torch) or the exported files "
                 "of a build folder (onnx, trt), and print a table per frame or write detection JSON.",
                 cmd_infer,
                 ModelArgs(checkpoint="optional", checkpoint_help="checkpoint (.pth) of the config's source "
                                                                  "project; needed by the torch backend"),
                 RuntimeArgs(), OverflowArgs(),
                 DataArgs(artifacts="build folder holding the exported files (onnx / trt backends)"),
                 OutputArgs("write detections JSON here ({frame stem: [{box, score, name}, ...]}) (default: "
                            "print only)", required=False),
                 NuScenesArgs(), progress)
    p.add_argument("--points", required=True,
                   help="a .bin / .npy point cloud, a folder of them, or a nuScenes dataroot (with --split)")
    add_point_layout(p)
    p.add_argument("--show", type=int, default=DEFAULT_SHOW,
                   help=f"rows of the table printed per frame (default {DEFAULT_SHOW})")

    p = _command(sub, "synth", "generate a labeled synthetic LiDAR data set (points/*.bin, labels/*.json, or a "
                               "nuScenes dataroot)",
                 "Generate a labeled synthetic LiDAR data set: points/*.bin and labels/*.json, deterministic per "
                 "(seed, frame index); or (--format nuscenes) a synthetic nuScenes dataroot that the nuScenes devkit "
                 "loads: scenes of 20 Hz LIDAR_TOP sweeps with 2 Hz annotated samples, deterministic per seed.",
                 cmd_synth,
                 OutputArgs("output folder"),
                 ModelArgs(checkpoint=None, config_help="folder format: config whose point cloud range and classes "
                                                        "to use"),
                 progress)
    p.add_argument("--format", choices=("folder", "nuscenes"), default="folder",
                   help="folder: points/, labels/, meta.json; nuscenes: a nuScenes dataroot (v1.0-*/ tables, "
                        "samples/, sweeps/, maps/) (default folder)")
    p.add_argument("--frames", type=int, default=DEFAULT_SYNTH_FRAMES, metavar="N",
                   help=f"folder format: frames to generate (default {DEFAULT_SYNTH_FRAMES})")
    p.add_argument("--seed", type=int, default=0,
                   help="data set seed; frames are deterministic per (seed, index), scenes per (seed, scene) "
                        "(default 0)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder (default: refuse it; the data set is written whole into a "
                        "temporary folder and renamed, so old and new frames never mix)")
    p.add_argument("--version", default="v1.0-mini",
                   help="nuscenes format: the table folder, whose split lists name the scenes (validation split "
                        "first) (default v1.0-mini)")
    p.add_argument("--scenes", type=int, default=DEFAULT_SCENES, metavar="N",
                   help=f"nuscenes format: scenes (default {DEFAULT_SCENES}: v1.0-mini's mini_val)")
    p.add_argument("--samples-per-scene", type=int, default=DEFAULT_SAMPLES_PER_SCENE, metavar="K",
                   help=f"nuscenes format: annotated samples (2 Hz) per scene (default {DEFAULT_SAMPLES_PER_SCENE})")

    p = _command(sub, "convert", "convert a nuScenes split to labeled frames (points/, labels/, meta.json)",
                 "Convert a split of a nuScenes dataroot into a folder every command reads: per sample, the "
                 "stacked LIDAR_TOP sweeps (float32 x, y, z, intensity, time lag) and its boxes in the LiDAR frame, "
                 "with meta.json (sample tokens, poses). Read with the nuScenes devkit, as a dataroot given "
                 "to --data is.",
                 cmd_convert,
                 OutputArgs("output folder: points/<sample token>.bin, labels/<sample token>.json, meta.json"),
                 NuScenesArgs(), progress)
    p.add_argument("format", choices=("nuscenes",), help="the data set's format: nuscenes")
    p.add_argument("--dataroot", required=True, help="the nuScenes dataroot (v1.0-*/ tables, samples/, sweeps/)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder (default: refuse it; the folder is written whole)")

    p = _command(sub, "init-checkpoint", "write a random-init checkpoint of a config (its project's layout)",
                 "Write a randomly initialised checkpoint of a config in its source project's file layout and key "
                 "names (det3d, OpenPCDet or MMDetection3D), to run the whole chain at the "
                 "config's real size (time, memory, file sizes) without trained weights; its detections are noise.",
                 cmd_init_checkpoint,
                 ModelArgs(checkpoint=None, config_help="config to initialise"),
                 OutputArgs("checkpoint to write (.pth)"))
    p.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation (default 0)")

    t = TrainOptions()
    p = _command(sub, "train", "train a config on labeled frames (CenterPoint loss, resumable)",
                 "Train a model config from scratch (or from --init) on labeled frames with the CenterPoint loss; "
                 "resumes from <out>.state.pth unless --no-resume.",
                 cmd_train,
                 ModelArgs(checkpoint=None),
                 DataArgs(data="labeled data folder (points/, labels/), e.g. from `synth`", required=("data",)),
                 OutputArgs("checkpoint to write (det3d layout)"),
                 TrainingArgs(epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=t.seed),
                 progress)
    p.add_argument("--init", help="start from this checkpoint instead of random weights (default: random)")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved <out>.state.pth and start over")
    p.add_argument("--half", action="store_true", help="store the checkpoint in FP16 (half the size)")

    p = _command(sub, "eval", "score a model on labeled frames (nuScenes-style AP, mAP)",
                 "Score a model on labeled frames: nuScenes-style AP per class and mAP, for the PyTorch model or "
                 "the exported files of a build folder, or an existing detection JSON (--detections); with "
                 "--metric nuscenes the nuScenes devkit scores it (mAP, NDS).",
                 cmd_eval,
                 ModelArgs(checkpoint="optional", checkpoint_help="checkpoint (.pth) of the config's source "
                                                                  "project; needed by the torch backend"),
                 DataArgs(data="labeled data folder (points/, labels/)",
                          artifacts="build folder holding the exported files (onnx / trt backends)",
                          required=("data",)),
                 FrameArgs(FrameCount("--frames", None, "frames to score")),
                 RuntimeArgs(precision_default="int8 for a quantized checkpoint (`ptq` / `qat`) on torch, else fp32"),
                 OverflowArgs(),
                 OutputArgs("write metrics JSON here (default: print only)", required=False),
                 progress)
    p.add_argument("--dump-detections", help="write all detections (detection JSON) here (default: not written)")
    p.add_argument("--metric", choices=METRICS, default="builtin",
                   help="builtin: the nuScenes AP re-implemented (no NDS); nuscenes: the nuScenes devkit itself "
                        "(mAP, NDS; needs nuScenes data: a dataroot with --split, or a `convert nuscenes` folder) "
                        "(default builtin)")
    p.add_argument("--detections", metavar="FILE",
                   help="score this detection JSON instead of running a model (no checkpoint needed)")

    skip_default = " ".join(default_skip(DEFAULT_RECIPE))
    p = _command(sub, "ptq", "post-training quantization: fold BN, insert quantizers, calibrate, save ptq.pth",
                 "Post-training quantization: fold BatchNorm, insert quantizers, calibrate activation ranges on "
                 "point clouds, and save the quantized checkpoint.",
                 cmd_ptq,
                 ModelArgs(),
                 DataArgs(calib_data="a point-cloud file or folder of them (.bin / .npy, or DIR/points/)",
                          required=("calib_data",)),
                 FrameArgs(FrameCount("--frames", PTQ_FRAMES, "calibration frames",
                                      old=("--num-frames",))),
                 MethodArgs(),
                 OutputArgs("quantized checkpoint to write (ptq.pth)"),
                 progress)
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPES,
                   help="learn-ranges: full INT8 (float: only the sparse input conv), calibrate, then learn the "
                        "activation ranges on the calibration frames distilled from FP32 (no labels, weights "
                        "unchanged); calibrate: calibration only, float: " + " ".join(DEFAULT_SKIP)
                        + f" (the behaviour before) (default {DEFAULT_RECIPE})")
    p.add_argument("--skip", nargs="*", metavar="PATTERN",
                   help=f"module-path glob patterns to leave in float; replaces the recipe's list (learn-ranges: "
                        f"{skip_default}); `--skip` alone quantizes everything")
    p.add_argument("--skip-from", metavar="SENSITIVITY_JSON",
                   help="leave in float the skip list proposed by `sensitivity --budget` (its sensitivity.json), "
                        "together with any --skip patterns; replaces the default skip list (default: not used)")
    p.add_argument("--no-fuse-bn", action="store_true", help="keep BatchNorm unfolded (default: fold into convs)")
    p.add_argument("--device", default="cpu", help="where calibration runs (default cpu; e.g. cuda)")

    q = QATOptions()
    p = _command(sub, "qat", "quantization-aware fine-tuning of a ptq.pth (supervised or distillation; "
                             "torchrun-ready)",
                 "Quantization-aware fine-tuning of a `ptq` checkpoint, supervised on labels or distilled from the "
                 "FP32 teacher; runs on several GPUs under torchrun.",
                 cmd_qat,
                 ModelArgs(config=False, checkpoint_help="quantized checkpoint from `ptq` (or `qat`)"),
                 DataArgs(data="supervised: labeled folder (points/, labels/); distill: any point-cloud folder",
                          required=("data",)),
                 TrainingArgs(epochs=q.epochs, lr=q.lr, batch_size=q.batch_size, seed=q.seed, per_process=True),
                 FrameArgs(FrameCount("--frames", None, "training frames", old=("--num-frames",))),
                 OutputArgs("quantized checkpoint to write (qat.pth, same format as ptq.pth)"),
                 progress)
    p.add_argument("--objective", default=q.objective, choices=OBJECTIVES,
                   help="supervised: CenterPoint loss on labels; distill: match the FP32 teacher (no labels) "
                        f"(default {q.objective})")
    p.add_argument("--teacher", help="distill: FP32 checkpoint (default: the ptq file's source checkpoint)")
    p.add_argument("--ranges", default=q.ranges, choices=RANGE_KINDS,
                   help="which quantizer ranges (amax) train with the weights: none (calibrated, fixed), inputs "
                        f"(activations), all (+ per-channel weights) (default {q.ranges})")
    p.add_argument("--range-lr", type=float, default=q.range_lr,
                   help="Adam step of a learned amax, as a fraction of its calibrated value (default: "
                        f"max({MIN_RANGE_LR}, {RANGE_TRAVEL} / steps))")
    p.add_argument("--range-warmup", type=float, default=q.range_warmup, metavar="EPOCHS",
                   help="epochs at the start where only the ranges train, then the weights join "
                        f"(default {q.range_warmup})")
    p.add_argument("--device", default=q.device,
                   help=f"cpu or cuda (under torchrun: one GPU per local rank) (default {q.device})")

    p = _command(sub, "sensitivity", "per-layer INT8 sensitivity: rank layers, propose a skip list (--budget)",
                 "Per-layer INT8 sensitivity: calibrate once, quantize one layer at a time, rank the layers by the "
                 "metric drop, and with --budget propose the smallest skip list that meets it.",
                 cmd_sensitivity,
                 ModelArgs(),
                 DataArgs(calib_data="point-cloud file or folder to calibrate on (once, all layers)",
                          data="labeled folder (points/, labels/): metric mAP (default: output fidelity vs FP32 on "
                               "the calibration frames: heatmap cosine, SNR)",
                          required=("calib_data",)),
                 FrameArgs(FrameCount("--calib-frames", SENSITIVITY_FRAMES, "calibration frames",
                                      old=("--num-frames",)),
                           FrameCount("--eval-frames", None, "frames evaluated per configuration")),
                 MethodArgs(),
                 OutputArgs("output folder: sensitivity.json, sensitivity.md, sensitivity.png"),
                 progress)
    p.add_argument("--budget", type=float,
                   help="propose the smallest skip list with mAP drop <= B (with --data) or 1 - cosine <= B "
                        "(default: no proposal)")
    p.add_argument("--seed", type=int, default=0,
                   help="torch / numpy seed (frames are picked deterministically) (default 0)")
    p.add_argument("--show", type=int, default=10, help="most sensitive layers printed (default 10)")

    p = _command(sub, "engine", "build a TensorRT (GPU) or TensorRT-RTX (no GPU needed) engine from an exported ONNX",
                 "Build an engine from an exported ONNX file (explicit Q/DQ for INT8), with its build log and "
                 "per-layer precision summary: with TensorRT (needs a GPU; the engine runs on that GPU model) or "
                 "TensorRT-RTX (builds without a GPU; the engine runs only with the TensorRT-RTX runtime on RTX "
                 "GPUs, and proves that NVIDIA's parser and builder accept the file, not INT8 speed).",
                 cmd_engine,
                 OutputArgs("engine to write, e.g. rpn_head.int8.plan (TensorRT) or rpn_head.int8.rtx.plan "
                            "(TensorRT-RTX); also writes <stem>.build.log and <stem>.layers.json"),
                 BuilderArgs())
    p.add_argument("--onnx", required=True, help="exported ONNX, e.g. rpn_head.int8.onnx (explicit Q/DQ)")
    p.add_argument("--workspace", type=int, default=2048, metavar="MB",
                   help="builder workspace memory pool limit in MiB (default 2048)")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="tactic timing cache: loaded if it exists, saved after the build (default: none)")
    p.add_argument("--fp16-io", action="store_true",
                   help="the engine takes / returns FP16: the ONNX's float inputs and outputs must already be FLOAT16")

    p = _command(sub, "export", "export scn.fp16.onnx (libspconv) + rpn_head.fp32.onnx (+ the INT8 files for a "
                                "quantized checkpoint), validated, with manifest.json",
                 "Export the sparse backbone for libspconv and the RPN + head as standard ONNX (plus the INT8 files "
                 "for a quantized checkpoint), validate each against PyTorch, and record them in manifest.json.",
                 cmd_export,
                 ModelArgs(),
                 OutputArgs("output folder"),
                 DataArgs(calib_data="point-cloud file or folder: per-layer output_bound statistics and validation "
                                     "frames (default: safe-bound fallback, synthetic validation frames)"),
                 FrameArgs(FrameCount("--frames", EXPORT_FRAMES, "frames used from --calib-data",
                                      old=("--max-frames",))),
                 ProgressArgs("print only the files written (default: also the validation lines)"))
    p.add_argument("--fp16", action="store_true",
                   help="also rpn_head.int8.fp16.onnx: INT8 head with FP16 float parts (strongly typed TensorRT)")
    p.add_argument("--fp16-io", action="store_true", help="with --fp16: FP16 input and outputs too")
    p.add_argument("--bound-margin", type=float, default=DEFAULT_MARGIN,
                   help="per-layer output_bound = this x the layer's largest active/input voxel ratio on "
                        "--calib-data x voxel.max_voxels, at least the config's export.output_bound_floor "
                        f"(default {DEFAULT_MARGIN:g})")
    p.add_argument("--output-bound", type=int, metavar="N",
                   help="every sparse conv's output_bound = N instead (a fixed number as other tools use: libspconv's "
                        "parser 150000, CUDA-CenterPoint 200000) (default: per layer, see --bound-margin)")

    p = _command(sub, "compare", "FP32 vs INT8 files on frames: tensors, per layer, detections, mAP",
                 "Run the FP32 and INT8 files of a build folder on the same frames and compare output tensors, "
                 "per-layer errors, detections and (with labels) mAP.",
                 cmd_compare,
                 ModelArgs(checkpoint="optional", checkpoint_help="the quantized checkpoint: also check the INT8 "
                                                                  "files against it (default: not checked)"),
                 DataArgs(artifacts="build folder with scn.*.onnx and rpn_head.*.onnx",
                          data="point files or a labeled folder (labels -> mAP)", required=("artifacts", "data")),
                 OutputArgs("where to write compare.json etc. (default: --artifacts)", required=False),
                 FrameArgs(FrameCount("--frames", COMPARE_FRAMES, "frames to compare",
                                      old=("--max-frames",))),
                 OverflowArgs(), progress)
    p.add_argument("--save-frames", type=int, default=3, help="frames kept in the Polygraphy RunResults (default 3)")
    p.add_argument("--run-results-mb", type=float, default=DEFAULT_RUN_RESULTS_MB, metavar="MB",
                   help="size limit of compare.run_results.json: whole frames while they fit, else the central window "
                        f"of one frame's maps (default {DEFAULT_RUN_RESULTS_MB:g})")
    p.add_argument("--backend", default="onnx", choices=COMPARE_BACKENDS,
                   help="onnx: the ONNX head files on ONNX Runtime; trt: the head engines (TensorRT, a GPU); the "
                        "sparse part runs in the scn reference runner either way; libspconv: the sparse part by "
                        "NVIDIA's libspconv on a GPU, beside the reference runner (default onnx)")
    p.add_argument("--libspconv", metavar="DIR", help="--backend libspconv: NVIDIA libspconv folder")

    p = _command(sub, "bench", "latency per stage (voxelize, backbone, rpn_head, decode) and end to end",
                 "Measure latency per stage (voxelize, backbone, rpn_head, decode) and end to end, for each backend "
                 "x precision.",
                 cmd_bench,
                 ModelArgs(checkpoint="optional", checkpoint_help="checkpoint for the torch backend"),
                 DataArgs(artifacts="build folder (onnx / trt backends)", data="point files to run (cycled)",
                          required=("data",)),
                 RuntimeArgs(multiple=True, backends=("onnx",), precisions=("fp32", "int8")), OverflowArgs(),
                 OutputArgs("where to write bench.json / bench.png (default: --artifacts)", required=False),
                 ProgressArgs("no progress output"))
    p.add_argument("--iterations", type=int, default=20, help="timed frames per backend x precision (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    p.add_argument("--max-seconds", type=float, metavar="S",
                   help="stop each backend x precision's timed frames after S seconds (at least 3 run; default: no "
                        "limit, all --iterations)")

    b = BuildOptions()
    p = _command(sub, "build", "the whole chain: PTQ/QAT -> export -> check -> engine -> compare -> bench -> "
                               "report (no arguments: the bundled sample)",
                 "Run the whole chain into one build folder: PTQ (and QAT) -> export -> check -> engine -> compare "
                 "-> bench -> report; stages whose inputs did not change are skipped. No arguments: the bundled "
                 "sample.",
                 cmd_build,
                 ModelArgs(checkpoint="optional",
                           checkpoint_help="float det3d checkpoint (default: samples/synthetic_small.pth)"),
                 DataArgs(calib_data="calibration point files (default: generated into OUT/data/calib)",
                          eval_data="labeled evaluation frames (default: generated into OUT/data/eval)"),
                 MethodArgs(),
                 FrameArgs(FrameCount("--calib-frames", b.calib_frames,
                                      "calibration frames (this many generated without --calib-data)"),
                           FrameCount("--eval-frames", b.eval_frames,
                                      "evaluation frames (this many generated without --eval-data)")),
                 OutputArgs(f"build folder (default {b.out}/)", required=False, default=str(b.out)),
                 BuilderArgs(), OverflowArgs(), LibspconvArgs(capability=False), progress)
    p.add_argument("--qat", action="store_true",
                   help="the full QAT recipe instead of the default ptq: calibration (the input conv and the first "
                        "residual block float), then `qat`'s defaults on the calibration data (weights and learned "
                        "ranges, distillation, 2 epochs)")
    p.add_argument("--recipe", default=b.recipe, choices=RECIPES,
                   help=f"the ptq recipe (see `ptq --help`; with --qat: calibrate) (default {b.recipe})")
    p.add_argument("--iterations", type=int, default=b.bench_iterations,
                   help=f"bench iterations per backend x precision (default {b.bench_iterations})")

    p = _command(sub, "check", "lint exported ONNX files, parse the 2D ones with NVIDIA's parser; exit 1 on findings",
                 "Lint exported ONNX files (the scn files against what libspconv's parser accepts, the others as "
                 "standard ONNX with TensorRT's Q/DQ rules) and parse the 2D files with NVIDIA's ONNX parser "
                 "(TensorRT, or TensorRT-RTX where TensorRT cannot run). Every file is checked; exit status 1 when "
                 "anything is found, 2 when a file cannot be read.",
                 cmd_check,
                 ProgressArgs("print findings only (default: also an 'ok' line per clean file)"), LibspconvArgs())
    p.add_argument("files", nargs="+", metavar="FILE.onnx", help="exported ONNX files to lint")
    p.add_argument("--no-parser", action="store_true",
                   help="lint only; do not also parse the 2D files with NVIDIA's ONNX parser (default: parse with "
                        "TensorRT when it can create a builder here, else TensorRT-RTX)")
    return parser


def _quiet_library_warnings() -> None:
    """Hide known, harmless warnings of our dependencies (spconv's dense(), torch.fx) from users."""
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        set_threads(ThreadArgs.read(args))
        set_point_layout(getattr(args, "point_layout", "auto"))
        return args.func(args)
    except UserError as exc:
        print(f"trt-centerpoint {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"trt-centerpoint {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
