"""The `trt-centerpoint` command: one thin subcommand per stage.

Each subcommand parses its options and calls one function of the package. A `UserError` (bad file, bad
config, unfit checkpoint) is printed as one line on stderr with exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from trt_centerpoint import __version__
from trt_centerpoint.errors import UserError

EXIT_USER_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument("--config", "-c", default="synthetic_small",
                   help="bundled config name (nuscenes_voxel0075, synthetic_small, tiny) or a YAML path "
                        "(default: synthetic_small)")
    p.add_argument("--checkpoint", "-p", required=checkpoint_required, help="det3d-layout checkpoint (.pth)")


def cmd_infer(args: argparse.Namespace) -> int:
    from trt_centerpoint.inference import detections_table, run_inference

    results = run_inference(args.config, args.checkpoint, args.points, out=args.out, progress=not args.quiet)
    for stem, dets in results.items():
        print(f"{stem}: {len(dets)} detections")
        if dets:
            print(detections_table(dets, limit=args.show))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from trt_centerpoint.config import load_config
    from trt_centerpoint.data.synth import write_dataset

    cfg = load_config(args.config)
    write_dataset(args.out, frames=args.frames, seed=args.seed, config=cfg, progress=not args.quiet)
    print(f"wrote {args.frames} frames to {args.out} (points/, labels/)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trt_centerpoint.config import load_config
    from trt_centerpoint.training import TrainOptions, train

    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        augment=not args.no_augment, half=args.half)
    meta = train(load_config(args.config), args.data, args.out, opts, init=args.init,
                 resume=not args.no_resume, progress=not args.quiet)
    last = meta["history"][-1] if meta["history"] else {}
    print(f"wrote {args.out} (epochs {opts.epochs}, final loss {last.get('loss', float('nan')):.4f})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trt_centerpoint.config import load_config
    from trt_centerpoint.eval.ap import format_table
    from trt_centerpoint.evaluate import run_eval

    if args.backend == "torch" and not args.checkpoint:
        raise UserError("--backend torch needs --checkpoint (onnx / trt read --artifacts BUILD_DIR)")
    metrics = run_eval(load_config(args.config), args.checkpoint, args.data, out=args.out,
                       dump_detections=args.dump_detections, backend=args.backend, precision=args.precision,
                       progress=not args.quiet, artifacts=args.artifacts)
    print(format_table(metrics))
    for path in (args.out, args.dump_detections):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    from trt_centerpoint.calib.ptq import run_ptq
    from trt_centerpoint.calib.quantize import DEFAULT_SKIP

    skip = DEFAULT_SKIP if args.skip is None else args.skip
    if getattr(args, "skip_from", None):  # a sensitivity.json's proposed list, plus any explicit --skip
        from trt_centerpoint.calib.sensitivity import read_skip_list
        from trt_centerpoint.config import load_config

        from_file = read_skip_list(args.skip_from, expect_config=load_config(args.config))
        skip = list(dict.fromkeys([*(args.skip or []), *from_file]))
    meta = run_ptq(args.config, args.checkpoint, args.calib_data, args.out, num_frames=args.num_frames,
                   method=args.method, skip=skip, percentile=args.percentile, bn_fused=not args.no_fuse_bn,
                   device=args.device, progress=not args.quiet)
    print(f"quantized {len(meta['quantized_layers'])} layers ({meta['num_quantizers']} quantizers), "
          f"skipped {', '.join(meta['skip']) or 'nothing'}; amax {meta['amax_method']} over "
          f"{meta['num_frames']} frames ({meta['num_frames_empty']} empty)")
    print(f"wrote {args.out}")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    import os

    from trt_centerpoint.calib.qat import QATOptions, run_qat

    opts = QATOptions(objective=args.objective, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, augment=not args.no_augment, num_frames=args.num_frames,
                      teacher=args.teacher, device=args.device)
    _, meta = run_qat(args.checkpoint, args.data, args.out, opts, progress=not args.quiet)
    qat = meta["qat"]
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        last = qat["history"][-1] if qat["history"] else {}
        print(f"QAT ({qat['objective']}) {qat['epochs']} epoch(s) on {qat['frames']} frames x {qat['world_size']} "
              f"process(es), final loss {last.get('loss', float('nan')):.4f}")
        print(f"wrote {args.out}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    import time

    from trt_centerpoint.calib.sensitivity import run_sensitivity

    start = time.perf_counter()
    doc = run_sensitivity(args.config, args.checkpoint, args.calib_data, args.out, data=args.data,
                          num_frames=args.num_frames, eval_frames=args.eval_frames, budget=args.budget,
                          method=args.method, seed=args.seed, progress=not args.quiet)
    name = doc["metric"]
    print(f"{len(doc['layers'])} layers, {doc['frames']} frames, {name}: FP32 {doc['reference']['metric']:.6f}, "
          f"all quantized {doc['all_quantized']['metric']:.6f} ({time.perf_counter() - start:.1f} s)")
    for row in doc["layers"][: args.show]:
        print(f"  {row['rank']:>3}  {row['name']:<40} drop {row['drop']:+.3e}  recovery {row['recovery']:+.3e}")
    if doc["budget"] is not None:
        b = doc["budget"]
        print(f"budget {b['value']:g}: {'met' if b['met'] else 'NOT met'}; skip {', '.join(b['skip']) or 'nothing'}")
    for stem in ("json", "md", "png"):
        print(f"wrote {args.out}/sensitivity.{stem}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from trt_centerpoint.engine.trt_build import build_engine
    from trt_centerpoint.engine.trt_inspect import format_counts

    result = build_engine(args.onnx, args.out, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                          fp16_io=args.fp16_io)
    print(f"built {result.engine} in {result.seconds:.1f} s ({result.settings.describe()}); "
          f"{format_counts(result.summary)}")
    for path in (result.engine, result.layers, result.log, result.timing_cache):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trt_centerpoint.exporter.stage import run_export

    record = run_export(args.config, args.checkpoint, args.out, calib_data=args.calib_data,
                        max_frames=args.max_frames, margin=args.bound_margin, fp16=args.fp16, fp16_io=args.fp16_io)
    for name, digest in record["outputs"].items():
        print(f"wrote {args.out}/{name} (sha256 {digest[:12]})")
    print(f"wrote {args.out}/manifest.json (stage export)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from trt_centerpoint.config import load_config
    from trt_centerpoint.pipeline.compare_stage import COMPARE_JSON, RUN_RESULTS, run_compare

    figures = run_compare(load_config(args.config), args.artifacts, args.data, out=args.out,
                          checkpoint=args.checkpoint, max_frames=args.max_frames, save_frames=args.save_frames,
                          progress=not args.quiet)
    from trt_centerpoint.report.table import format_table

    rows = [[name, f"{m['cosine']:.6f}", f"{m['max_abs']:.3g}", f"{m['median_abs']:.3g}", f"{m['snr_db']:.1f}"]
            for name, m in figures["tensors"].items()]
    print(format_table(["output", "cosine", "max abs", "median abs", "SNR dB"], rows))
    if figures["per_layer"]["first_jump"]:
        print(f"per layer: the error first jumps at {figures['per_layer']['first_jump']}")
    for radius, m in figures["detections"]["int8_vs_fp32"].items():
        print(f"INT8 vs FP32 boxes within {radius}: {m['matched_fraction']:.3f}")
    check = figures["detections"].get("int8_files_vs_pytorch_fake_quant")
    if check:
        for radius, m in check["files"].items():
            base = check["baseline_fp16_features"][radius]["matched_fraction"]
            print(f"INT8 files vs PyTorch fake quant within {radius}: {m['matched_fraction']:.3f} (PyTorch vs itself "
                  f"with FP16-rounded voxel features: {base:.3f})")
    if figures["accuracy"]:
        a = figures["accuracy"]
        print(f"mAP FP32 {a['fp32']['mAP']:.4f}  INT8 {a['int8']['mAP']:.4f}  ({a['delta_mAP']:+.4f})")
    out = args.out or args.artifacts
    print(f"wrote {out}/{COMPARE_JSON} and {out}/{RUN_RESULTS} (Polygraphy RunResults)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trt_centerpoint.config import load_config
    from trt_centerpoint.pipeline.bench_stage import BENCH_JSON, BENCH_PNG, run_bench

    run_bench(load_config(args.config), args.artifacts, args.data, out=args.out, backends=args.backend,
              precisions=args.precision, checkpoint=args.checkpoint, iterations=args.iterations, warmup=args.warmup,
              progress=not args.quiet)
    out = args.out or args.artifacts
    print(f"wrote {out}/{BENCH_JSON} and {out}/{BENCH_PNG}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from trt_centerpoint.pipeline.build import BuildOptions, run_build
    from trt_centerpoint.report.build_report import summary_table

    opts = BuildOptions(config=args.config, checkpoint=args.checkpoint, calib_data=args.calib_data,
                        eval_data=args.eval_data, out=args.out, qat=args.qat, method=args.method,
                        calib_frames=args.calib_frames, eval_frames=args.eval_frames,
                        bench_iterations=args.iterations, progress=not args.quiet)
    data = run_build(opts)
    print(summary_table(data))
    ran = [name for name, s in data["stages"].items() if s["status"] == "ran"]
    print(f"build finished in {data['seconds']:.1f} s (ran: {', '.join(ran)}); report: {args.out}/report.md")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from trt_centerpoint.exporter.lint import lint_file

    failed = False
    for path in args.files:
        kind, lines = lint_file(path)
        for line in lines:
            print(line)
        if not lines:
            print(f"{path}: ok ({kind})")
        failed = failed or bool(lines)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trt-centerpoint",
        description="Quantize, export and deploy CenterPoint LiDAR detectors to TensorRT INT8, with numbers.",
    )
    parser.add_argument("--version", action="version", version=f"trt-centerpoint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("infer", help="run the PyTorch model on point clouds and print / save detections")
    _add_model_args(p)
    p.add_argument("--points", required=True, help="a .bin / .npy point cloud, or a folder of them")
    p.add_argument("--out", help="write detections JSON here ({frame stem: [{box, score, name}, ...]})")
    p.add_argument("--show", type=int, default=20, help="rows of the table printed per frame (default 20)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("synth", help="generate a labeled synthetic LiDAR data set (points/*.bin, labels/*.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    p.add_argument("--seed", type=int, default=0, help="data set seed; frames are deterministic per (seed, index)")
    p.add_argument("--config", "-c", default="synthetic_small", help="config whose range and classes to use")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a config on labeled frames (CenterPoint loss, resumable)")
    p.add_argument("--config", "-c", default="synthetic_small", help="bundled config name or YAML path")
    p.add_argument("--data", required=True, help="labeled data folder (points/, labels/), e.g. from `synth`")
    p.add_argument("--out", required=True, help="checkpoint to write (det3d layout)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3, help="one-cycle maximum learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="start from this checkpoint instead of random weights")
    p.add_argument("--no-augment", action="store_true", help="no flip / rotation / scale augmentation")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved <out>.state.pth and start over")
    p.add_argument("--half", action="store_true", help="store the checkpoint in FP16 (half the size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a model on labeled frames (nuScenes-style AP, mAP)")
    _add_model_args(p, checkpoint_required=False)
    p.add_argument("--data", required=True, help="labeled data folder (points/, labels/)")
    p.add_argument("--out", help="write metrics JSON here")
    p.add_argument("--dump-detections", help="write all detections (detection JSON) here")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "trt"],
                   help="torch: the PyTorch model (--checkpoint); onnx: the exported files (scn reference runner + "
                        "ONNX Runtime); trt: scn runner + TensorRT engine (default torch)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="default fp32; int8 with torch: fake quant, --checkpoint is a `ptq` / `qat` output")
    p.add_argument("--artifacts", help="build folder holding the exported files (onnx / trt backends)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ptq", help="post-training quantization: fold BN, insert quantizers, calibrate, save ptq.pth")
    _add_model_args(p)
    p.add_argument("--calib-data", required=True, help="a point-cloud file or folder of them (.bin / .npy, or DIR/points/)")
    p.add_argument("--num-frames", type=int, default=100,
                   help="calibration frames, spread evenly over the folder (default 100; all if fewer)")
    p.add_argument("--method", default="mse", choices=["mse", "percentile", "entropy", "max"],
                   help="activation amax method (default mse); weights always use their per-channel max")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    p.add_argument("--skip", nargs="*", metavar="PATTERN",
                   help="module-path glob patterns to leave in float; replaces the default "
                        "(backbone.conv_input* backbone.conv1.0.* bbox_head.tasks.*.reg.3); `--skip` alone "
                        "quantizes everything")
    p.add_argument("--skip-from", metavar="SENSITIVITY_JSON",
                   help="leave in float the skip list proposed by `sensitivity --budget` (its sensitivity.json), "
                        "together with any --skip patterns; replaces the default skip list")
    p.add_argument("--no-fuse-bn", action="store_true", help="keep BatchNorm unfolded (default: fold into convs)")
    p.add_argument("--device", default="cpu", help="where calibration runs (default cpu; e.g. cuda)")
    p.add_argument("--out", required=True, help="quantized checkpoint to write (ptq.pth)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ptq)

    p = sub.add_parser("qat", help="quantization-aware fine-tuning of a ptq.pth (supervised or distillation; torchrun-ready)")
    p.add_argument("--checkpoint", "-p", required=True, help="quantized checkpoint from `ptq` (or `qat`)")
    p.add_argument("--data", required=True,
                   help="supervised: labeled folder (points/, labels/); distill: any point-cloud folder")
    p.add_argument("--objective", default="supervised", choices=["supervised", "distill"],
                   help="supervised: CenterPoint loss on labels; distill: match the FP32 teacher (no labels)")
    p.add_argument("--teacher", help="distill: FP32 checkpoint (default: the ptq file's source checkpoint)")
    p.add_argument("--epochs", type=int, default=2, help="default 2")
    p.add_argument("--lr", type=float, default=1e-4, help="one-cycle maximum learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=2, help="frames per step and process (default 2)")
    p.add_argument("--num-frames", type=int, help="use this many frames, spread evenly (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="no flip / rotation / scale augmentation")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per local rank)")
    p.add_argument("--out", required=True, help="quantized checkpoint to write (qat.pth, same format as ptq.pth)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("sensitivity", help="per-layer INT8 sensitivity: rank layers, propose a skip list (--budget)")
    _add_model_args(p)
    p.add_argument("--calib-data", required=True, help="point-cloud file or folder to calibrate on (once, all layers)")
    p.add_argument("--data", help="labeled folder (points/, labels/): metric mAP; without it: output fidelity "
                                  "vs FP32 on the calibration frames (heatmap cosine, SNR)")
    p.add_argument("--num-frames", type=int, default=16,
                   help="calibration frames, spread evenly over the folder (default 16; all if fewer)")
    p.add_argument("--eval-frames", type=int, help="frames evaluated per configuration, spread evenly (default all)")
    p.add_argument("--budget", type=float,
                   help="propose the smallest skip list with mAP drop <= B (with --data) or 1 - cosine <= B")
    p.add_argument("--method", default="mse", choices=["mse", "percentile", "entropy", "max"],
                   help="activation amax method (default mse)")
    p.add_argument("--seed", type=int, default=0, help="torch / numpy seed (frames are picked deterministically)")
    p.add_argument("--show", type=int, default=10, help="most sensitive layers printed (default 10)")
    p.add_argument("--out", required=True, help="output folder: sensitivity.json, sensitivity.md, sensitivity.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sensitivity)
    p = sub.add_parser("engine", help="build a TensorRT engine from an exported ONNX (needs TensorRT and a GPU)")
    p.add_argument("--onnx", required=True, help="exported ONNX, e.g. rpn_head.int8.onnx (explicit Q/DQ)")
    p.add_argument("--out", required=True,
                   help="engine to write, e.g. rpn_head.int8.plan (also writes <stem>.build.log and <stem>.layers.json)")
    p.add_argument("--workspace", type=int, default=2048, metavar="MB",
                   help="builder workspace memory pool limit in MiB (default 2048)")
    p.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache: loaded if it exists, saved after the build")
    p.add_argument("--fp16-io", action="store_true",
                   help="the engine takes / returns FP16: the ONNX's float inputs and outputs must already be FLOAT16")
    p.set_defaults(func=cmd_engine)
    p = sub.add_parser("export", help="export scn.fp16.onnx (libspconv) + rpn_head.fp32.onnx (+ the INT8 files for a "
                                      "quantized checkpoint), validated, with manifest.json")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--calib-data", help="point-cloud file or folder: per-layer output_bound statistics and validation "
                                        "frames (without it: safe-bound fallback, synthetic validation frames)")
    p.add_argument("--max-frames", type=int, default=16, help="frames used from --calib-data, spread evenly (default 16)")
    p.add_argument("--fp16", action="store_true",
                   help="also rpn_head.int8.fp16.onnx: INT8 head with FP16 float parts (strongly typed TensorRT)")
    p.add_argument("--fp16-io", action="store_true", help="with --fp16: FP16 input and outputs too")
    p.add_argument("--bound-margin", type=float, default=1.5,
                   help="output_bound = observed max active voxels x this (default 1.5)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="FP32 vs INT8 files on frames: tensors, per layer, detections, mAP")
    p.add_argument("--config", "-c", default="synthetic_small", help="bundled config name or YAML path")
    p.add_argument("--artifacts", required=True, help="build folder with scn.*.onnx and rpn_head.*.onnx")
    p.add_argument("--data", required=True, help="point files or a labeled folder (labels -> mAP)")
    p.add_argument("--checkpoint", help="the quantized checkpoint: also check the INT8 files against it")
    p.add_argument("--out", help="where to write compare.json etc. (default: --artifacts)")
    p.add_argument("--max-frames", type=int, default=50, help="frames to compare (default 50, evenly spread)")
    p.add_argument("--save-frames", type=int, default=3, help="frames kept in the Polygraphy RunResults (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="latency per stage (voxelize, backbone, rpn_head, decode) and end to end")
    p.add_argument("--config", "-c", default="synthetic_small", help="bundled config name or YAML path")
    p.add_argument("--artifacts", help="build folder (onnx / trt backends)")
    p.add_argument("--checkpoint", help="checkpoint for the torch backend")
    p.add_argument("--data", required=True, help="point files to run (cycled)")
    p.add_argument("--backend", nargs="+", default=["onnx"], choices=["torch", "onnx", "trt"])
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    p.add_argument("--iterations", type=int, default=20, help="timed frames per backend x precision (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    p.add_argument("--out", help="where to write bench.json / bench.png (default: --artifacts)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("build", help="the whole chain: PTQ/QAT -> export -> check -> engine -> compare -> bench -> "
                                     "report (no arguments: the bundled sample)")
    p.add_argument("--config", "-c", default="synthetic_small", help="bundled config name or YAML path")
    p.add_argument("--checkpoint", "-p", help="float det3d checkpoint (default: samples/synthetic_small.pth)")
    p.add_argument("--calib-data", help="calibration point files (default: generated into OUT/data/calib)")
    p.add_argument("--eval-data", help="labeled evaluation frames (default: generated into OUT/data/eval)")
    p.add_argument("--qat", action="store_true", help="fine-tune after PTQ (1 epoch on the calibration data)")
    p.add_argument("--method", default="mse", choices=["mse", "percentile", "entropy", "max"])
    p.add_argument("--calib-frames", type=int, default=32, help="calibration frames (default 32)")
    p.add_argument("--eval-frames", type=int, default=50, help="evaluation frames (default 50)")
    p.add_argument("--iterations", type=int, default=20, help="bench iterations per backend x precision")
    p.add_argument("--out", default="build", help="build folder (default build/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("check", help="lint exported ONNX files (scn: what libspconv's parser accepts); exit 1 on findings")
    p.add_argument("files", nargs="+", metavar="FILE.onnx")
    p.set_defaults(func=cmd_check)
    return parser


def _quiet_library_warnings() -> None:
    """Hide known, harmless warnings of our dependencies (spconv's dense(), torch.fx) from users."""
    import logging
    import warnings

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
        return args.func(args)
    except UserError as exc:
        print(f"trt-centerpoint {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"trt-centerpoint {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
