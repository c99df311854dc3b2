"""Option groups shared by the `trt-centerpoint` subcommands.

Each group adds a coherent set of options to a subcommand's parser and reads them back into typed values, so
an option has one spelling, one help text and one default in every command that takes it (Polygraphy's
`tools/args` idea, in small). Paths are read back as typed on the command line: the stages turn them into
`Path`s and name them, as given, in their error messages.

Frame counts follow one scheme: `--frames` for the one data set a command reads, `--calib-frames` /
`--eval-frames` where a command reads two. Earlier spellings (`--num-frames`, `--max-frames`) still parse
but are left out of `--help`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from trt_centerpoint.artifacts import PRECISIONS
from trt_centerpoint.config import bundled_names
from trt_centerpoint.data.nuscenes import (
    DEFAULT_POINT_SOURCE,
    DEFAULT_SWEEPS,
    POINT_SOURCES,
    SPLITS,
    NuScenesSelection,
    is_dataroot,
)
from trt_centerpoint.data.points import POINT_LAYOUTS
from trt_centerpoint.errors import UserError
from trt_centerpoint.quant.calibrate import METHODS
from trt_centerpoint.runtime.libspconv.locate import ENV_LIBSPCONV, configured_libspconv
from trt_centerpoint.runtime.pipeline import BACKENDS
from trt_centerpoint.runtime.trt.build import RTX_DEFAULT_TARGETS
from trt_centerpoint.runtime.trt.env import BUILDERS
from trt_centerpoint.threads import ENV

DEFAULT_CONFIG = "synthetic_small"
DEFAULT_METHOD = "mse"


def add_option(parser: argparse.ArgumentParser, flags: str | Sequence[str], *, old: Sequence[str] = (),
               **kwargs) -> argparse.Action:
    """`parser.add_argument(*flags, **kwargs)`, also accepting each spelling in `old` (same destination)
    without listing it in `--help`: scripts written for an earlier spelling keep working."""
    flags = (flags,) if isinstance(flags, str) else tuple(flags)
    action = parser.add_argument(*flags, **kwargs)
    for spelling in old:
        parser.add_argument(spelling, dest=action.dest, type=action.type, choices=action.choices,
                            nargs=action.nargs, metavar=action.metavar, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
    return action


# --- model: --config / --checkpoint


@dataclass(frozen=True)
class ModelChoice:
    config: str  # bundled config name or YAML path
    checkpoint: str | None


class ModelArgs:
    """`--config/-c` (bundled name or YAML path) and `--checkpoint/-p`.

    checkpoint: "required", "optional" or None (the command takes no checkpoint); config=False for commands
    that read the config from the checkpoint (`qat`).
    """

    def __init__(self, checkpoint: str | None = "required",
                 checkpoint_help: str = "checkpoint (.pth) of the config's source project",
                 config: bool = True, config_help: str | None = None):
        if checkpoint not in ("required", "optional", None):
            raise ValueError(f"checkpoint must be 'required', 'optional' or None, not {checkpoint!r}")
        self.checkpoint, self.checkpoint_help = checkpoint, checkpoint_help
        self.config, self.config_help = config, config_help

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        if self.config:
            what = self.config_help or f"bundled config name ({', '.join(bundled_names())}) or a YAML path"
            parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"{what} (default {DEFAULT_CONFIG})")
        if self.checkpoint is not None:
            parser.add_argument("--checkpoint", "-p", required=self.checkpoint == "required",
                                help=self.checkpoint_help)

    @staticmethod
    def read(args: argparse.Namespace) -> ModelChoice:
        return ModelChoice(config=getattr(args, "config", DEFAULT_CONFIG), checkpoint=getattr(args, "checkpoint", None))


# --- progress: --quiet


class ProgressArgs:
    """`--quiet`: no progress bars (or, for commands without one, only the essential lines)."""

    def __init__(self, help: str = "no progress bars (default: shown)"):
        self.help = help

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quiet", action="store_true", help=self.help)

    @staticmethod
    def read(args: argparse.Namespace) -> bool:
        """True where progress output is wanted."""
        return not getattr(args, "quiet", False)


# --- calibration method: --method


class MethodArgs:
    """`--method`: how activation ranges (amax) are calibrated; the same choices and help in every command."""

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                            help=f"activation amax method: {', '.join(METHODS)} (default {DEFAULT_METHOD}); "
                                 "weights always use their per-channel max")

    @staticmethod
    def read(args: argparse.Namespace) -> str:
        return args.method


# --- frame counts: --frames, or --calib-frames / --eval-frames


@dataclass(frozen=True)
class FrameCount:
    """One frame-count option: its flag, default (None: all frames), what the frames are for, old spellings."""

    flag: str
    default: int | None
    what: str
    old: tuple[str, ...] = ()

    def help(self) -> str:
        default = "all" if self.default is None else f"{self.default}; all if fewer"
        return f"{self.what}, spread evenly over the data (default {default})"


@dataclass(frozen=True)
class Frames:
    frames: int | None = None  # the one data set a command reads
    calib: int | None = None
    eval: int | None = None


class FrameArgs:
    """The frame counts a command takes: `--frames`, or `--calib-frames` and `--eval-frames`."""

    FLAGS = ("--frames", "--calib-frames", "--eval-frames")

    def __init__(self, *counts: FrameCount):
        for count in counts:
            if count.flag not in self.FLAGS:
                raise ValueError(f"frame count flag {count.flag} is not one of {', '.join(self.FLAGS)}")
        self.counts = counts

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        for count in self.counts:
            add_option(parser, count.flag, old=count.old, type=int, default=count.default, metavar="N",
                       help=count.help())

    @staticmethod
    def read(args: argparse.Namespace) -> Frames:
        return Frames(getattr(args, "frames", None), getattr(args, "calib_frames", None),
                      getattr(args, "eval_frames", None))


# --- nuScenes dataroot: --version, --split, --sweeps


@dataclass(frozen=True)
class NuScenesChoice:
    version: str | None = None  # None: the dataroot's only version
    split: str | None = None
    sweeps: int | None = None  # None: DEFAULT_SWEEPS
    point_source: str | None = None  # None: DEFAULT_POINT_SOURCE

    def selection(self, dataroot: str) -> NuScenesSelection:
        return NuScenesSelection(dataroot, self.version, self.split,
                                 DEFAULT_SWEEPS if self.sweeps is None else self.sweeps,
                                 self.point_source or DEFAULT_POINT_SOURCE)

    def sources(self, *paths: str | None) -> list[str | NuScenesSelection | None]:
        """Each path as given, or the selection it names when it is a nuScenes dataroot; --version / --split /
        --sweeps without any dataroot among `paths` is an error (they would be ignored)."""
        out = [self.selection(p) if p is not None and is_dataroot(p) else p for p in paths]
        options = [flag for flag, value in (("--version", self.version), ("--split", self.split),
                                            ("--sweeps", self.sweeps), ("--point-source", self.point_source))
                   if value is not None]
        if options and not any(isinstance(o, NuScenesSelection) for o in out):
            given = ", ".join(str(p) for p in paths if p is not None)
            raise UserError(f"{' / '.join(options)}: only for a nuScenes dataroot (a folder with v1.0-*/sample.json); "
                            f"{given + ' is not one' if given else 'no data option was given'}")
        return out


class NuScenesArgs:
    """`--version`, `--split`, `--sweeps`: what a data option that is a nuScenes dataroot (a folder with
    v1.0-*/sample.json) reads, on the fly, with the nuScenes devkit. Errors are one line, so no argparse choices."""

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        splits = ", ".join(f"{', '.join(names)} ({version})" for version, names in SPLITS.items())
        group = parser.add_argument_group("nuScenes dataroot", "for a data option that is a nuScenes dataroot (a "
                                          "folder with v1.0-*/sample.json), read with the nuScenes devkit")
        group.add_argument("--version", metavar="VERSION",
                           help=f"its table folder: {', '.join(SPLITS)} (default: the dataroot's only one)")
        group.add_argument("--split", metavar="SPLIT", help=f"the split to read (required): {splits}")
        group.add_argument("--sweeps", type=int, metavar="N",
                           help=f"LIDAR_TOP sweeps stacked per sample, the key frame first (default "
                                f"{DEFAULT_SWEEPS})")
        group.add_argument("--point-source", metavar="SOURCE",
                           help=f"how the sweeps are stacked: {', '.join(POINT_SOURCES)} (det3d, as CenterPoint's "
                                "models were trained: key frame uncut, short histories padded by repeating the oldest "
                                "sweep; devkit: from_file_multisweep, every sweep cut at 1 m, short histories stop) "
                                f"(default {DEFAULT_POINT_SOURCE})")

    @staticmethod
    def read(args: argparse.Namespace) -> NuScenesChoice:
        return NuScenesChoice(getattr(args, "version", None), getattr(args, "split", None),
                              getattr(args, "sweeps", None), getattr(args, "point_source", None))


def add_point_layout(parser: argparse.ArgumentParser) -> None:
    """`--point-layout`: what the point files hold (`data.points`); the CLI applies it to every read of a run."""
    parser.add_argument("--point-layout", choices=POINT_LAYOUTS, default="auto",
                        help="auto: the config's columns (x, y, z, intensity 0..255, time lag), or one raw nuScenes "
                             "sweep for *.pcd.bin; kitti: KITTI velodyne float32 x 4, intensity 0..1 (scaled by 255, "
                             "time lag 0) (default auto)")


# --- data: --data, --calib-data, --eval-data, --artifacts


@dataclass(frozen=True)
class DataPaths:
    """The data options as given; each of data / calib_data / eval_data is a `NuScenesSelection` when it names a
    nuScenes dataroot."""

    data: str | NuScenesSelection | None = None
    calib_data: str | NuScenesSelection | None = None
    eval_data: str | NuScenesSelection | None = None
    artifacts: str | None = None


class DataArgs:
    """The input folders a command reads. Each keyword is that option's help text (None: not taken); the
    names in `required` must be given. Commands that read frames also take `NuScenesArgs`: any of --data,
    --calib-data, --eval-data may be a nuScenes dataroot."""

    FLAGS = {"data": "--data", "calib_data": "--calib-data", "eval_data": "--eval-data", "artifacts": "--artifacts"}

    def __init__(self, *, data: str | None = None, calib_data: str | None = None, eval_data: str | None = None,
                 artifacts: str | None = None, required: Sequence[str] = ()):
        self.helps = {"data": data, "calib_data": calib_data, "eval_data": eval_data, "artifacts": artifacts}
        unknown = [name for name in required if self.helps.get(name) is None]
        if unknown:
            raise ValueError(f"required data option(s) not taken: {', '.join(unknown)}")
        self.required = set(required)

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        for name, help in self.helps.items():
            if help is not None:
                frames = name != "artifacts"
                parser.add_argument(self.FLAGS[name], required=name in self.required, metavar="DIR",
                                    help=f"{help}; or a nuScenes dataroot (with --split)" if frames else help)
        if any(self.helps[name] is not None for name in ("data", "calib_data", "eval_data")):
            NuScenesArgs().add_to_parser(parser)
            add_point_layout(parser)

    @staticmethod
    def read(args: argparse.Namespace) -> DataPaths:
        names = ("data", "calib_data", "eval_data")
        paths = [getattr(args, name, None) for name in names]
        if any(hasattr(args, name) for name in names):  # a command that reads frames (not only --artifacts)
            paths = NuScenesArgs.read(args).sources(*paths)
        return DataPaths(*paths, getattr(args, "artifacts", None))


# --- output: --out


class OutputArgs:
    """`--out`: where a command writes (a file or a folder, per command)."""

    def __init__(self, help: str, required: bool = True, default: str | None = None):
        self.help, self.required, self.default = help, required, default

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=self.required, default=self.default, help=self.help)

    @staticmethod
    def read(args: argparse.Namespace) -> str | None:
        return args.out


# --- runtime: --backend / --precision


@dataclass(frozen=True)
class RuntimeChoice:
    backends: tuple[str, ...]
    precisions: tuple[str, ...]

    @property
    def backend(self) -> str:
        return self.backends[0]

    @property
    def precision(self) -> str:
        return self.precisions[0]


class RuntimeArgs:
    """`--backend` (torch: the PyTorch model; onnx: the exported files on ONNX Runtime; trt: TensorRT engines) and
    `--precision`; `multiple=True` (bench) takes several of each."""

    def __init__(self, multiple: bool = False, backends: Sequence[str] = ("torch",),
                 precisions: Sequence[str] = ("fp32",), precision_default: str | None = None):
        self.multiple, self.backends, self.precisions = multiple, tuple(backends), tuple(precisions)
        self.precision_default = precision_default  # a default the command picks (read back as None), in words

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        nargs, pick = ("+", list) if self.multiple else (None, lambda values: values[0])
        parser.add_argument("--backend", nargs=nargs, default=pick(self.backends), choices=BACKENDS,
                            help="torch: the PyTorch model (--checkpoint); onnx: the exported files (scn reference "
                                 "runner + ONNX Runtime, --artifacts); trt: scn runner + TensorRT engine "
                                 "(--artifacts); libspconv: NVIDIA's libspconv on a GPU + the engine or ONNX "
                                 f"Runtime (--artifacts, --libspconv) (default {' '.join(self.backends)})")
        parser.add_argument("--libspconv", metavar="DIR",
                            help=f"--backend libspconv: NVIDIA libspconv folder (include/spconv/*.hpp, "
                                 f"lib/libspconv.so; default ${ENV_LIBSPCONV})")
        default = " ".join(self.precisions) if self.precision_default is None else self.precision_default
        parser.add_argument("--precision", nargs=nargs, choices=PRECISIONS,
                            default=pick(self.precisions) if self.precision_default is None else None,
                            help="fp32 or int8; int8 with torch: fake quant, --checkpoint is a `ptq` / `qat` output "
                                 f"(default {default})")

    @staticmethod
    def read(args: argparse.Namespace) -> RuntimeChoice:
        apply_libspconv_option(args)

        def as_tuple(value):
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)

        return RuntimeChoice(as_tuple(args.backend), as_tuple(args.precision))


# --- output_bound overflows: commands that run the exported scn file


class OverflowArgs:
    """`--allow-overflow`: run on even when a frame needs more voxels than a sparse conv's output_bound (libspconv
    would drop them); without it that is an error naming the layer."""

    @staticmethod
    def add_to_parser(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--allow-overflow", action="store_true",
                            help="with the exported files (onnx / trt): warn instead of stopping when a frame needs "
                                 "more voxels than a sparse conv's output_bound (default: stop with an error)")

    @staticmethod
    def read(args: argparse.Namespace) -> bool:
        return bool(getattr(args, "allow_overflow", False))


# --- threads: every command


class ThreadArgs:
    """`--threads N`: CPU threads for torch and ONNX Runtime (`trt_centerpoint.threads` says why the default)."""

    @staticmethod
    def add_to_parser(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--threads", type=int, metavar="N",
                            help=f"CPU threads for torch and ONNX Runtime (default: ${ENV} if set, else the cores "
                                 "not busy with other work, from the 1-minute load average; other jobs on the "
                                 "cores make extra threads several times slower)")

    @staticmethod
    def read(args: argparse.Namespace) -> int | None:
        return getattr(args, "threads", None)


# --- engine builder: --builder / --compute-capability


@dataclass(frozen=True)
class BuilderChoice:
    builder: str
    compute_capabilities: tuple[str, ...]


class BuilderArgs:
    """Which NVIDIA builder makes engines (`engine`, `build`): TensorRT needs a GPU; TensorRT-RTX builds without
    one, for RTX GPUs, and `--compute-capability` picks those GPUs."""

    @staticmethod
    def add_to_parser(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--builder", choices=BUILDERS, default="auto",
                            help="auto: TensorRT where it can create a builder (a GPU), else TensorRT-RTX "
                                 "(default auto)")
        parser.add_argument("--compute-capability", action="extend", nargs="+", metavar="X.Y",
                            help="TensorRT-RTX target GPUs, e.g. --compute-capability 8.6 8.9 12.0 (7.5 for "
                                 "Turing; repeatable) (default: TensorRT-RTX's own, "
                                 + ", ".join(RTX_DEFAULT_TARGETS) + ")")

    @staticmethod
    def read(args: argparse.Namespace) -> BuilderChoice:
        return BuilderChoice(args.builder, tuple(args.compute_capability or ()))


# --- NVIDIA libspconv: --libspconv DIR (or TRT_CENTERPOINT_LIBSPCONV), --compute-capability for its gate


def apply_libspconv_option(args: argparse.Namespace) -> None:
    """`--libspconv DIR` of a runtime command is TRT_CENTERPOINT_LIBSPCONV=DIR for this process: `make_pipeline`
    reads the variable, so the stages need no libspconv argument of their own."""
    if getattr(args, "libspconv", None):
        os.environ[ENV_LIBSPCONV] = args.libspconv


@dataclass(frozen=True)
class LibspconvChoice:
    folder: str | None  # None: libspconv not used
    compute_capabilities: tuple[str, ...]


class LibspconvArgs:
    """Where the user's libspconv is (include/spconv/*.hpp, lib/libspconv.so) and, for `check`, the GPUs its
    architecture gate compares with where there is none (`build` shares `--compute-capability` with BuilderArgs)."""

    def __init__(self, capability: bool = True):
        self.capability = capability

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--libspconv", metavar="DIR",
                            help=f"NVIDIA libspconv folder (include/spconv/*.hpp, lib/libspconv.so; default: "
                                 f"${ENV_LIBSPCONV} when set): build the scn files with it too")
        if self.capability:
            parser.add_argument("--compute-capability", action="append", metavar="X.Y",
                                help="a GPU the libspconv gate checks the library's SASS against, e.g. 9.0 "
                                     "(repeatable; default: the GPU present, else none)")

    @staticmethod
    def read(args: argparse.Namespace) -> LibspconvChoice:
        return LibspconvChoice(configured_libspconv(getattr(args, "libspconv", None)),
                               tuple(getattr(args, "compute_capability", None) or ()))


# --- training: --epochs --batch-size --lr --seed --no-augment


@dataclass(frozen=True)
class TrainingChoice:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    augment: bool


class TrainingArgs:
    """The optimizer loop options `train` and `qat` share."""

    def __init__(self, epochs: int, lr: float, batch_size: int = 2, seed: int = 0, per_process: bool = False):
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.per_process = per_process  # under torchrun each process takes its own batch

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--epochs", type=int, default=self.epochs, help=f"training epochs (default {self.epochs})")
        parser.add_argument("--batch-size", type=int, default=self.batch_size,
                            help=f"frames per step{' and process' if self.per_process else ''} "
                                 f"(default {self.batch_size})")
        parser.add_argument("--lr", type=float, default=self.lr,
                            help=f"one-cycle maximum learning rate (default {self.lr:g})")
        parser.add_argument("--seed", type=int, default=self.seed,
                            help=f"torch / numpy seed: weights, frame order, augmentation (default {self.seed})")
        parser.add_argument("--no-augment", action="store_true", help="no flip / rotation / scale augmentation")

    @staticmethod
    def read(args: argparse.Namespace) -> TrainingChoice:
        return TrainingChoice(args.epochs, args.batch_size, args.lr, args.seed, not args.no_augment)


__all__ = [
    "DataArgs", "DataPaths", "FrameArgs", "FrameCount", "Frames", "MethodArgs", "ModelArgs", "ModelChoice",
    "NuScenesArgs", "NuScenesChoice", "OutputArgs", "ProgressArgs", "RuntimeArgs", "RuntimeChoice", "TrainingArgs",
    "TrainingChoice", "add_option",
]
