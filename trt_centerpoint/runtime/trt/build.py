"""Build a TensorRT or TensorRT-RTX engine from the exported ONNX (``rpn_head*.onnx``) with Polygraphy's loaders.

Two builders (``builder=``, ``--builder``): ``tensorrt`` (TensorRT proper: the deployment target; it needs a
GPU even to build, and its engine runs on that GPU model), ``tensorrt-rtx`` (TensorRT-RTX: its builder runs
ahead of time without a GPU; the engine runs only with the TensorRT-RTX runtime on RTX GPUs, compute
capability 7.5 / 8.6 / 8.9 / 12.0, not Hopper or Jetson) and ``auto`` (TensorRT when it can create a builder
here, else TensorRT-RTX). An RTX engine proves that NVIDIA's parser and builder accept our files; it is no INT8
latency figure (TensorRT-RTX lists INT8 only as weight-only GEMM).

Why a TensorRT-RTX build runs in a process of its own: Polygraphy picks its TensorRT module once per process.
``polygraphy.config.USE_TENSORRT_RTX`` is read from ``POLYGRAPHY_USE_TENSORRT_RTX`` when ``polygraphy`` is
first imported, and ``polygraphy.backend.trt`` binds ``tensorrt_rtx`` or ``tensorrt`` when it is first imported;
loaders consult the flag again at call time. Flipping it later would leave a half-switched backend, and the
process that asks (``build``, a test session) has usually imported ``tensorrt`` already to probe for a GPU. So
``build_engine(builder="tensorrt-rtx")`` starts ``python -m trt_centerpoint.runtime.trt.rtx_process`` with
``POLYGRAPHY_USE_TENSORRT_RTX=1``, which runs the same ``build_engine`` there and writes the same files;
only a process that is already bound to TensorRT-RTX builds in place. The cost is one interpreter start
(about 2 s). A process bound to TensorRT-RTX refuses TensorRT builds rather than mixing the two.

The pieces, smallest first, each usable alone:

* ``build_plan(version, onnx_has_qdq, fp16_io, builder) -> BuildSettings``: every version-dependent choice,
  as a pure function (unit-tested without TensorRT):

  ==================  =========================  ===============================================
  builder             network                    builder precision flags
  ==================  =========================  ===============================================
  TensorRT-RTX        strongly typed (always)    none: refused (precision lives in the ONNX)
  TensorRT >= 11.0    strongly typed (always)    none: the flags no longer exist
  10.12 ... 10.x      strongly typed (flag)      none: precision comes from the ONNX
  10.0 ... 10.11      weakly typed               INT8 + FP16 for a Q/DQ ONNX, FP16 for --fp16-io
  < 10.0              refused (UserError)
  ==================  =========================  ===============================================

  On a strongly typed network the ONNX decides: Q/DQ pairs run INT8, FP16 tensors run FP16, the rest FP32.
  On a weakly typed one (10.0 - 10.11) the Q/DQ layers run INT8 and the FP16 flag lets TensorRT pick FP16
  for the unquantized layers, so the two can differ in the layers without Q/DQ.

* ``inspect_onnx(path) -> OnnxFacts``: does the model carry Q/DQ nodes, what are its I/O types.
* ``build_engine(onnx, out, ...)``: ``NetworkFromOnnxPath(strongly_typed=...)`` -> ``CreateConfig(...)``
  (``CreateConfigRTX`` with the compute-capability targets for TensorRT-RTX; DETAILED profiling verbosity,
  workspace pool limit, timing cache for TensorRT) -> ``EngineBytesFromNetwork`` -> per-layer precision
  summary: from the engine inspector for TensorRT (``EngineFromBytes``), from the parsed network for
  TensorRT-RTX (deserializing its engine needs an RTX GPU). It writes, each atomically, the layer summary
  ``<stem>.layers.json`` (builder, version, strong typing, targets, build seconds, engine bytes), the timing
  cache (when asked; TensorRT only, TensorRT-RTX's timing cache is a no-op), the build log
  ``<stem>.build.log`` and, last, the engine: an engine on disk means its siblings are there too. A failed
  build writes no engine (its log is still written, saying why).

``--fp16-io`` (``fp16_io=True``) requires that every floating-point input and output of the ONNX already be
FLOAT16 (export the model with FP16 I/O); nothing is cast here. The engine then takes and returns FP16. On
TensorRT < 10.12 it also turns on the FP16 flag. Without ``--fp16-io`` an ONNX with FP16 I/O still builds
(a strongly typed network keeps the ONNX's types), with a note in the log.

TensorRT 11 needs nothing outside Polygraphy 0.53.6 here: ``CreateConfig`` only fails on 11 when asked for
``fp16=`` / ``int8=``, which ``build_plan`` never does there, and the strongly typed creation flag is passed
only while the TensorRT in hand still defines it (on 11 every network is strongly typed regardless).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint_common import QDQ_OPS
from trt_centerpoint.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from trt_centerpoint.runtime.trt.env import (
    BUILDER_NAMES,
    BUILDERS,
    parse_version,
    polygraphy_rtx_config,
    polygraphy_trt,
    polygraphy_uses_rtx,
    require_builder,
    resolve_builder,
)
from trt_centerpoint.runtime.trt.inspect import format_counts, summarize_layers, summarize_network

DEFAULT_WORKSPACE_MB = 2048
RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX"
RTX_PROCESS = "trt_centerpoint.runtime.trt.rtx_process"
# TensorRT-RTX's targets when none are set: portable across compute capability 8.6, 8.9 and 12.0 (its support
# matrix, 1.0 - 1.7); Turing (7.5) only when asked for, alone.
RTX_DEFAULT_TARGETS = ("8.6", "8.9", "12.0")
TENSORRT_TARGET = "the GPU model it was built on"
INSPECTOR_UNAVAILABLE = ("TensorRT-RTX deserializes an engine only on an RTX GPU, so its engine inspector cannot "
                         "run here; precisions are read from the parsed network (before fusion)")


# ---------------------------------------------------------------------------------------------------------
# the version rules (pure)


@dataclass(frozen=True)
class BuildSettings:
    """What to ask the builder for. ``int8`` / ``fp16`` are builder flags (weak typing only)."""

    trt_version: str  # the builder library's version (TensorRT or TensorRT-RTX)
    strongly_typed: bool
    int8: bool
    fp16: bool
    fp16_io: bool
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    builder: str = "tensorrt"
    targets: tuple[str, ...] = ()  # TensorRT-RTX compute capabilities asked for; () = its default

    @property
    def precision_flags(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("INT8", self.int8), ("FP16", self.fp16)) if on)

    @property
    def builder_name(self) -> str:
        return BUILDER_NAMES.get(self.builder, self.builder)

    @property
    def target_list(self) -> list[str]:
        """Where the engine runs: compute capabilities (TensorRT-RTX) or the build GPU (TensorRT)."""
        if self.builder != "tensorrt-rtx":
            return [TENSORRT_TARGET]
        return list(self.targets or RTX_DEFAULT_TARGETS)

    def describe_targets(self) -> str:
        if self.builder != "tensorrt-rtx":
            return TENSORRT_TARGET
        given = "" if self.targets else " (TensorRT-RTX's default)"
        return "compute capability " + ", ".join(self.target_list) + given

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = "+".join(self.precision_flags) or "no precision flags"
        return f"{self.builder_name} {self.trt_version}, {typing}, {flags}"


def build_plan(trt_version: str, onnx_has_qdq: bool, fp16_io: bool, builder: str = "tensorrt") -> BuildSettings:
    """The version-dependent build choices (the table in the module doc). Raises UserError below TensorRT 10.0."""
    try:
        major, minor = parse_version(trt_version)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if builder == "tensorrt-rtx":
        return BuildSettings(
            trt_version, strongly_typed=True, int8=False, fp16=False, fp16_io=fp16_io, builder=builder,
            reason="TensorRT-RTX: strongly typed networks only, precision flags are refused; precision comes "
                   "from the ONNX (Q/DQ, FP16 tensors)")
    if major < 10:
        raise UserError(f"TensorRT {trt_version} is too old (trt-centerpoint needs TensorRT >= 10.0)")
    if major >= 11:
        return BuildSettings(
            trt_version, strongly_typed=True, int8=False, fp16=False, fp16_io=fp16_io,
            reason="TensorRT >= 11: every network is strongly typed and the precision flags are gone; "
                   "precision comes from the ONNX (Q/DQ -> INT8, FP16 tensors -> FP16)")
    if minor >= 12:
        return BuildSettings(
            trt_version, strongly_typed=True, int8=False, fp16=False, fp16_io=fp16_io,
            reason="TensorRT >= 10.12: weak typing is deprecated; strongly typed network, precision comes "
                   "from the ONNX (Q/DQ -> INT8, FP16 tensors -> FP16)")
    int8 = bool(onnx_has_qdq)
    fp16 = bool(onnx_has_qdq or fp16_io)
    if int8:
        reason = ("TensorRT < 10.12 with a Q/DQ ONNX: weakly typed network with the INT8 and FP16 flags "
                  "(Q/DQ layers run INT8, TensorRT may run the others in FP16)")
    elif fp16:
        reason = "TensorRT < 10.12 with FP16 I/O: weakly typed network with the FP16 flag"
    else:
        reason = "TensorRT < 10.12 without Q/DQ: weakly typed FP32 network, no precision flags"
    return BuildSettings(trt_version, strongly_typed=False, int8=int8, fp16=fp16, fp16_io=fp16_io,
                         reason=reason)


def strongly_typed_arg(trt, settings: BuildSettings) -> bool:
    """``strongly_typed=`` for ``NetworkFromOnnxPath``: the creation flag, while this TensorRT defines it."""
    if not settings.strongly_typed:
        return False
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return hasattr(flags, "STRONGLY_TYPED")


def parse_compute_capability(text: str) -> tuple[int, int]:
    """'8.6' -> (8, 6); UserError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    if not match:
        raise UserError(f"--compute-capability {text}: expected MAJOR.MINOR, e.g. 8.6 or 12.0")
    return int(match.group(1)), int(match.group(2))


def check_compute_capabilities(trt, capabilities) -> list[tuple[int, int]]:
    """The targets as (major, minor), each one this TensorRT-RTX knows (``ComputeCapability.SM86``)."""
    parsed = [parse_compute_capability(c) if isinstance(c, str) else tuple(c) for c in capabilities]
    known = getattr(trt, "ComputeCapability", None)
    offered = sorted(n[2:] for n in dir(known) if re.fullmatch(r"SM\d+", n)) if known is not None else []
    for major, minor in parsed:
        if known is not None and not hasattr(known, f"SM{major}{minor}"):
            names = ", ".join(f"{n[:-1]}.{n[-1]}" for n in sorted(offered, key=int))
            raise UserError(f"--compute-capability {major}.{minor}: TensorRT-RTX {trt.__version__} targets {names}")
    return parsed


class CacheBytes(io.BytesIO):
    """An in-memory timing cache that Polygraphy's ``util.load_file`` accepts (it checks ``.mode``)."""

    mode = "rb"


def config_kwargs(trt, settings: BuildSettings, workspace_bytes: int, timing_cache: bytes | None) -> dict:
    """Keyword arguments for Polygraphy's ``CreateConfig`` (or ``CreateConfigRTX``); precision flags appear
    only when set, compute-capability targets only for TensorRT-RTX when given."""
    kwargs = {
        "profiling_verbosity": trt.ProfilingVerbosity.DETAILED,
        "memory_pool_limits": {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
    }
    if timing_cache and settings.builder == "tensorrt":
        # a file-like object: Polygraphy then takes no lock file next to the user's cache
        kwargs["load_timing_cache"] = CacheBytes(timing_cache)
    if settings.int8:
        kwargs["int8"] = True
    if settings.fp16:
        kwargs["fp16"] = True
    if settings.builder == "tensorrt-rtx" and settings.targets:
        kwargs["compute_capabilities"] = [parse_compute_capability(t) for t in settings.targets]
    return kwargs


# ---------------------------------------------------------------------------------------------------------
# the ONNX side


@dataclass(frozen=True)
class OnnxFacts:
    path: str
    has_qdq: bool
    inputs: tuple[tuple[str, str], ...]  # (name, ONNX element type name)
    outputs: tuple[tuple[str, str], ...]
    num_nodes: int


_FLOAT_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


def inspect_onnx(path: str | Path) -> OnnxFacts:
    """Q/DQ presence and I/O element types of an ONNX file (external weights are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    if not graph.node:
        raise UserError(f"{path}: the ONNX graph has no nodes")

    def has_qdq(g) -> bool:
        for node in g.node:
            if node.op_type in QDQ_OPS:
                return True
            for attr in node.attribute:  # If / Loop bodies
                if attr.g is not None and attr.g.node and has_qdq(attr.g):
                    return True
        return False

    def io(values):
        out = []
        for v in values:
            elem = v.type.tensor_type.elem_type
            out.append((v.name, onnx.TensorProto.DataType.Name(elem) if elem else "UNDEFINED"))
        return tuple(out)

    initializers = {i.name for i in graph.initializer}
    inputs = tuple(x for x in io(graph.input) if x[0] not in initializers)
    return OnnxFacts(str(path), has_qdq(graph), inputs, io(graph.output), len(graph.node))


def check_io_types(facts: OnnxFacts, fp16_io: bool) -> list[str]:
    """With ``fp16_io`` every float input/output must be FLOAT16 (UserError otherwise). Returns notes."""
    tensors = [("input", n, t) for n, t in facts.inputs] + [("output", n, t) for n, t in facts.outputs]
    floats = [(kind, n, t) for kind, n, t in tensors if t in _FLOAT_TYPES]
    if fp16_io:
        wrong = [f"{kind} '{n}' is {t}" for kind, n, t in floats if t != "FLOAT16"]
        if wrong:
            raise UserError(f"{facts.path}: --fp16-io needs FLOAT16 inputs and outputs in the ONNX, but "
                            f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''} "
                            f"(export the model with FP16 I/O)")
        if not floats:
            raise UserError(f"{facts.path}: --fp16-io given but the ONNX has no floating-point inputs or outputs")
        return []
    half = [n for _, n, t in floats if t == "FLOAT16"]
    if half:
        return [f"the ONNX already has FP16 I/O ({', '.join(half)}); the engine will too"]
    return []


# ---------------------------------------------------------------------------------------------------------
# build orchestration


def artifact_paths(out: str | Path) -> dict[str, Path]:
    """The files ``build_engine`` writes for engine ``out``: engine, build log, layer summary."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {"engine": out, "log": out.with_name(f"{stem}.build.log"),
            "layers": out.with_name(f"{stem}.layers.json")}


@dataclass
class EngineBuildResult:
    engine: Path
    log: Path
    layers: Path
    settings: BuildSettings
    summary: dict
    seconds: float
    timing_cache: Path | None = None

    @property
    def record(self) -> dict:
        """The layer summary file's content (builder, version, targets, seconds, bytes, per-layer precision)."""
        return json.loads(self.layers.read_text())


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(level=1)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextmanager
def capture_polygraphy_log(lines: list[str], severity: int | None = None):
    """Route Polygraphy's log (and with it TensorRT's, which Polygraphy forwards) into ``lines``.

    Quiet on the console meanwhile; Polygraphy's logger settings are restored afterwards.
    """
    severity = G_LOGGER.VERBOSE if severity is None else severity
    pylog = logging.getLogger("Polygraphy")
    saved = (G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors,
             pylog.level, pylog.propagate)
    handler = _ListHandler(lines)
    pylog.addHandler(handler)
    pylog.setLevel(1)
    pylog.propagate = False
    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = severity
    G_LOGGER.colors = False
    try:
        yield lines
    finally:
        pylog.removeHandler(handler)
        G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors = saved[:3]
        pylog.setLevel(saved[3])
        pylog.propagate = saved[4]


def _to_bytes(buffer) -> bytes:
    """bytes of an ``IHostMemory`` (buffer protocol) or of bytes."""
    if isinstance(buffer, (bytes, bytearray)):
        return bytes(buffer)
    return bytes(memoryview(buffer))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class BuiltEngine:
    engine: bytes
    summary: dict
    timing_cache: bytes | None
    seconds: float


def build_in_memory(loaders, trt, onnx_path: Path, settings: BuildSettings, workspace_bytes: int,
                    timing_cache: bytes | None, create_config=None) -> BuiltEngine:
    """The Polygraphy loader chain, nothing written: engine bytes, layer summary, updated timing cache.

    ``loaders`` is ``polygraphy.backend.trt`` (or a stand-in with the same names); ``create_config`` the
    config loader class (default ``loaders.CreateConfig``; ``CreateConfigRTX`` for TensorRT-RTX).
    """
    create_config = (create_config or loaders.CreateConfig)(
        **config_kwargs(trt, settings, workspace_bytes, timing_cache))
    made = {}

    def config(builder, network):  # keep the IBuilderConfig: its timing cache is saved after the build
        made["config"] = create_config(builder, network)
        return made["config"]

    # called here, not by EngineBytesFromNetwork: the parsed network is summarized when no engine can be inspected
    network = loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed_arg(trt, settings))()
    start = time.perf_counter()
    engine_bytes = _to_bytes(loaders.EngineBytesFromNetwork(network, config=config)())
    seconds = time.perf_counter() - start
    if settings.builder == "tensorrt-rtx":
        return BuiltEngine(engine_bytes, summarize_network(network[1], INSPECTOR_UNAVAILABLE), None, seconds)
    engine = loaders.EngineFromBytes(engine_bytes)()
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    cache = _to_bytes(made["config"].get_timing_cache().serialize())
    return BuiltEngine(engine_bytes, summarize_layers(info), cache, seconds)


def build_engine(onnx_path: str | Path, out: str | Path, *, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: str | Path | None = None, fp16_io: bool = False, builder: str = "auto",
                 compute_capabilities=None) -> EngineBuildResult:
    """Build ``out`` (a serialized engine) from ``onnx_path`` with `builder`; see the module docstring.

    Raises ``UserError`` (one line) when no builder is usable, the ONNX is missing / unreadable / has the
    wrong I/O types for ``fp16_io``, a target is unknown, or the builder cannot parse or build it; nothing
    but the build log is written then.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if workspace_mb is None or int(workspace_mb) <= 0:
        raise UserError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
    targets = [parse_compute_capability(c) if isinstance(c, str) else tuple(c) for c in compute_capabilities or ()]
    facts = inspect_onnx(onnx_path)
    notes = check_io_types(facts, fp16_io)
    if builder not in BUILDERS:
        raise UserError(f"--builder {builder}: choose from {', '.join(BUILDERS)}")
    if builder == "auto":
        chosen, reason = resolve_builder("auto")
        if chosen is None:
            raise UserError(f"{reason}: cannot build {out.name}")
        builder = chosen
    if targets and builder != "tensorrt-rtx":
        raise UserError("--compute-capability is for TensorRT-RTX builds (a TensorRT engine is built for the GPU "
                        "it is built on): add --builder tensorrt-rtx")
    if builder == "tensorrt-rtx" and not polygraphy_uses_rtx():
        return _build_in_rtx_process(onnx_path, out, workspace_mb=int(workspace_mb), fp16_io=fp16_io,
                                     compute_capabilities=[f"{a}.{b}" for a, b in targets])
    if builder == "tensorrt" and polygraphy_uses_rtx():
        raise UserError(f"{RTX_ENV} is set: Polygraphy drives TensorRT-RTX in this process; unset it to build "
                        f"{out.name} with TensorRT")
    trt = require_builder(builder, f"build {out.name}", check_gpu=True)  # no usable GPU: one line, not a TypeError
    settings = build_plan(trt.__version__, facts.has_qdq, fp16_io, builder)
    if builder == "tensorrt-rtx":
        targets = check_compute_capabilities(trt, targets)
        timing_cache = None  # TensorRT-RTX: timing cache operations are no-ops (deprecated in 1.2)
    settings = BuildSettings(**{**asdict(settings), "notes": tuple(notes),
                                "targets": tuple(f"{a}.{b}" for a, b in targets)})
    _, loaders = polygraphy_trt()
    create_config = polygraphy_rtx_config() if builder == "tensorrt-rtx" else None
    return _build(loaders, trt, create_config, facts, settings, onnx_path, out, int(workspace_mb), timing_cache)


def _build(loaders, trt, create_config, facts: OnnxFacts, settings: BuildSettings, onnx_path: Path, out: Path,
           workspace_mb: int, timing_cache) -> EngineBuildResult:
    """Build in this process and write the files (layer summary, timing cache, log, engine last)."""
    paths = artifact_paths(out)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_in = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None
    if cache_path is not None:
        cache_line = f"timing cache: {cache_path} ({f'loaded, {len(cache_in)} bytes' if cache_in else 'new'})"
    elif settings.builder == "tensorrt-rtx":
        cache_line = "timing cache: not used (TensorRT-RTX's timing cache operations are no-ops)"
    else:
        cache_line = "timing cache: none"
    header = [
        "trt-centerpoint engine build",
        f"builder: {settings.builder_name} {settings.trt_version}",
        f"onnx: {onnx_path} ({facts.num_nodes} nodes, Q/DQ: {'yes' if facts.has_qdq else 'no'})",
        f"engine: {out}",
        f"settings: {settings.describe()}",
        f"why: {settings.reason}",
        f"targets: {settings.describe_targets()}",
        "io: " + ", ".join(f"{n}:{t}" for n, t in facts.inputs + facts.outputs),
        f"workspace: {workspace_mb} MiB",
        cache_line,
        *[f"note: {n}" for n in settings.notes],
        "",
    ]
    lines: list[str] = []
    start = time.perf_counter()
    try:
        with capture_polygraphy_log(lines):
            built = build_in_memory(loaders, trt, onnx_path, settings, workspace_mb << 20, cache_in, create_config)
    except Exception as exc:
        failed = f"FAILED after {time.perf_counter() - start:.1f} s: {type(exc).__name__}: {exc}"
        atomic_write_text(paths["log"], "\n".join(header + lines + ["", failed, traceback.format_exc()]))
        if _is_polygraphy_error(exc):
            errors = [line[3:].strip() for line in lines if line.startswith("[E]") and line[3:].strip()]
            detail = errors[0].splitlines()[0] if errors else _first_line(exc)
            raise UserError(f"{settings.builder_name} could not build {out.name} from {onnx_path.name}: {detail} "
                            f"(build log: {paths['log']})") from None
        raise

    engine_bytes, summary, seconds = built.engine, built.summary, built.seconds
    record = {
        "engine": out.name, "onnx": onnx_path.name, "builder": settings.builder,
        "builder_version": settings.trt_version, "strongly_typed": settings.strongly_typed,
        "targets": settings.target_list, "targets_default": settings.builder == "tensorrt-rtx" and not settings.targets,
        "settings": asdict(settings), "workspace_mb": workspace_mb, "build_seconds": round(seconds, 3),
        "engine_bytes": len(engine_bytes), **summary,
    }
    if settings.builder == "tensorrt":
        record["tensorrt"] = settings.trt_version
    atomic_write_json(paths["layers"], record)
    if cache_path is not None and built.timing_cache is not None:
        atomic_write_bytes(cache_path, built.timing_cache)
    footer = ["", f"built in {seconds:.1f} s, {len(engine_bytes)} bytes; {format_counts(summary)}",
              *([f"layer summary: {summary['note']}"] if summary.get("note") else []),
              f"layer summary: {paths['layers']}"]
    atomic_write_text(paths["log"], "\n".join(header + lines + footer) + "\n")
    atomic_write_bytes(out, engine_bytes)  # last: an engine on disk implies its log and summary
    return EngineBuildResult(out, paths["log"], paths["layers"], settings, summary, seconds, cache_path)


def _is_polygraphy_error(exc: BaseException) -> bool:
    return isinstance(exc, PolygraphyException)


# ---------------------------------------------------------------------------------------------------------
# TensorRT-RTX in a process of its own (the module docstring says why)

ERROR_MARK = "trt-centerpoint-user-error: "  # how rtx_process hands a UserError back


def result_from_record(out: Path) -> EngineBuildResult:
    """The ``EngineBuildResult`` of a build another process made, from its layer summary file."""
    paths = artifact_paths(out)
    record = json.loads(paths["layers"].read_text())
    raw = dict(record["settings"])
    settings = BuildSettings(**{**raw, "notes": tuple(raw.get("notes", ())), "targets": tuple(raw.get("targets", ()))})
    keys = ("source", "note", "num_layers", "network_layers", "counts", "types", "reformat_layers", "detailed", "io",
            "layers")
    summary = {k: record[k] for k in keys if k in record}
    return EngineBuildResult(out, paths["log"], paths["layers"], settings, summary, record["build_seconds"], None)


def _build_in_rtx_process(onnx_path: Path, out: Path, **options) -> EngineBuildResult:
    """``build_engine(builder="tensorrt-rtx")`` in ``python -m rtx_process`` with Polygraphy bound to RTX."""
    require_builder("tensorrt-rtx", f"build {out.name}")  # the one-line reason, before starting anything
    request = {"onnx_path": str(onnx_path), "out": str(out), **options}
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, RTX_ENV: "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", RTX_PROCESS, json.dumps(request)], env=env, capture_output=True,
                          text=True)
    marked = [line[len(ERROR_MARK):] for line in done.stderr.splitlines() if line.startswith(ERROR_MARK)]
    if marked:
        raise UserError(marked[-1])
    if done.returncode != 0:
        raise RuntimeError(f"the TensorRT-RTX build of {out.name} failed (exit status {done.returncode}):\n"
                           + done.stderr[-4000:])
    return result_from_record(out)
