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

    metrics = run_eval(load_config(args.config), args.checkpoint, args.data, out=args.out,
                       dump_detections=args.dump_detections, backend=args.backend, precision=args.precision,
                       progress=not args.quiet)
    print(format_table(metrics))
    for path in (args.out, args.dump_detections):
        if path:
            print(f"wrote {path}")
    return 0


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
    _add_model_args(p)
    p.add_argument("--data", required=True, help="labeled data folder (points/, labels/)")
    p.add_argument("--out", help="write metrics JSON here")
    p.add_argument("--dump-detections", help="write all detections (detection JSON) here")
    p.add_argument("--backend", default="torch", choices=["torch"], help="what runs the model (default torch)")
    p.add_argument("--precision", default="fp32", choices=["fp32"], help="numeric precision (default fp32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
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
