"""Build a TensorRT engine from the exported ONNX (``rpn_head*.onnx``) with Polygraphy's loaders.

The pieces, smallest first, each usable alone:

* ``build_plan(trt_version, onnx_has_qdq, fp16_io) -> BuildSettings``: every version-dependent choice, as a
  pure function (unit-tested without TensorRT):

  ==================  =========================  ===============================================
  TensorRT            network                    builder precision flags
  ==================  =========================  ===============================================
  >= 11.0             strongly typed (always)    none: the flags no longer exist
  10.12 ... 10.x      strongly typed (flag)      none: precision comes from the ONNX
  10.0 ... 10.11      weakly typed               INT8 + FP16 for a Q/DQ ONNX, FP16 for --fp16-io
  < 10.0              refused (UserError)
  ==================  =========================  ===============================================

  On a strongly typed network the ONNX decides: Q/DQ pairs run INT8, FP16 tensors run FP16, the rest FP32.
  On a weakly typed one (10.0 - 10.11) the Q/DQ layers run INT8 and the FP16 flag lets TensorRT pick FP16
  for the unquantized layers, so the two can differ in the layers without Q/DQ.

* ``inspect_onnx(path) -> OnnxFacts``: does the model carry Q/DQ nodes, what are its I/O types.
* ``build_engine(onnx, out, ...)``: ``NetworkFromOnnxPath(strongly_typed=...)`` -> ``CreateConfig(...)``
  (DETAILED profiling verbosity, workspace pool limit, timing cache) -> ``EngineBytesFromNetwork`` ->
  ``EngineFromBytes`` -> engine inspector JSON -> per-layer precision summary. It writes, each atomically,
  the layer summary ``<stem>.layers.json``, the timing cache (when asked), the build log
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
import logging
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
from trt_centerpoint.runtime.trt.env import parse_version, polygraphy_trt, require_tensorrt
from trt_centerpoint.runtime.trt.inspect import format_counts, summarize_layers

DEFAULT_WORKSPACE_MB = 2048


# ---------------------------------------------------------------------------------------------------------
# the version rules (pure)


@dataclass(frozen=True)
class BuildSettings:
    """What to ask TensorRT for. ``int8`` / ``fp16`` are builder flags (weak typing only)."""

    trt_version: str
    strongly_typed: bool
    int8: bool
    fp16: bool
    fp16_io: bool
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def precision_flags(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("INT8", self.int8), ("FP16", self.fp16)) if on)

    def describe(self) -> str:
        typing = "strongly typed" if self.strongly_typed else "weakly typed"
        flags = "+".join(self.precision_flags) or "no precision flags"
        return f"TensorRT {self.trt_version}, {typing}, {flags}"


def build_plan(trt_version: str, onnx_has_qdq: bool, fp16_io: bool) -> BuildSettings:
    """The version-dependent build choices (the table in the module doc). Raises UserError below TensorRT 10.0."""
    try:
        major, minor = parse_version(trt_version)
    except ValueError as exc:
        raise UserError(str(exc)) from None
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


class CacheBytes(io.BytesIO):
    """An in-memory timing cache that Polygraphy's ``util.load_file`` accepts (it checks ``.mode``)."""

    mode = "rb"


def config_kwargs(trt, settings: BuildSettings, workspace_bytes: int, timing_cache: bytes | None) -> dict:
    """Keyword arguments for Polygraphy's ``CreateConfig``; precision flags appear only when set."""
    kwargs = {
        "profiling_verbosity": trt.ProfilingVerbosity.DETAILED,
        "memory_pool_limits": {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
    }
    if timing_cache:
        # a file-like object: Polygraphy then takes no lock file next to the user's cache
        kwargs["load_timing_cache"] = CacheBytes(timing_cache)
    if settings.int8:
        kwargs["int8"] = True
    if settings.fp16:
        kwargs["fp16"] = True
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
    timing_cache: bytes
    seconds: float


def build_in_memory(loaders, trt, onnx_path: Path, settings: BuildSettings, workspace_bytes: int,
                    timing_cache: bytes | None) -> BuiltEngine:
    """The Polygraphy loader chain, nothing written: engine bytes, layer summary, updated timing cache.

    ``loaders`` is ``polygraphy.backend.trt`` (or a stand-in with the same four names).
    """
    create_config = loaders.CreateConfig(**config_kwargs(trt, settings, workspace_bytes, timing_cache))
    made = {}

    def config(builder, network):  # keep the IBuilderConfig: its timing cache is saved after the build
        made["config"] = create_config(builder, network)
        return made["config"]

    network = loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed_arg(trt, settings))
    start = time.perf_counter()
    engine_bytes = _to_bytes(loaders.EngineBytesFromNetwork(network, config=config)())
    seconds = time.perf_counter() - start
    engine = loaders.EngineFromBytes(engine_bytes)()
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    cache = _to_bytes(made["config"].get_timing_cache().serialize())
    return BuiltEngine(engine_bytes, summarize_layers(info), cache, seconds)


def build_engine(onnx_path: str | Path, out: str | Path, *, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: str | Path | None = None, fp16_io: bool = False) -> EngineBuildResult:
    """Build ``out`` (a serialized engine) from ``onnx_path``; see the module docstring.

    Raises ``UserError`` (one line) when TensorRT is absent, the ONNX is missing / unreadable / has the
    wrong I/O types for ``fp16_io``, or TensorRT cannot parse or build it; nothing but the build log is
    written then.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    paths = artifact_paths(out)
    if workspace_mb is None or int(workspace_mb) <= 0:
        raise UserError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
    facts = inspect_onnx(onnx_path)
    notes = check_io_types(facts, fp16_io)
    trt = require_tensorrt(f"build {out.name}")
    settings = build_plan(trt.__version__, facts.has_qdq, fp16_io)
    settings = BuildSettings(**{**asdict(settings), "notes": tuple(notes)})
    _, loaders = polygraphy_trt()

    cache_path = Path(timing_cache) if timing_cache else None
    cache_in = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None

    header = [
        "trt-centerpoint engine build",
        f"onnx: {onnx_path} ({facts.num_nodes} nodes, Q/DQ: {'yes' if facts.has_qdq else 'no'})",
        f"engine: {out}",
        f"settings: {settings.describe()}",
        f"why: {settings.reason}",
        "io: " + ", ".join(f"{n}:{t}" for n, t in facts.inputs + facts.outputs),
        f"workspace: {int(workspace_mb)} MiB",
        (f"timing cache: {cache_path} ({f'loaded, {len(cache_in)} bytes' if cache_in else 'new'})"
         if cache_path else "timing cache: none"),
        *[f"note: {n}" for n in notes],
        "",
    ]
    lines: list[str] = []
    start = time.perf_counter()
    try:
        with capture_polygraphy_log(lines):
            built = build_in_memory(loaders, trt, onnx_path, settings, int(workspace_mb) << 20, cache_in)
    except Exception as exc:
        failed = f"FAILED after {time.perf_counter() - start:.1f} s: {type(exc).__name__}: {exc}"
        atomic_write_text(paths["log"], "\n".join(header + lines + ["", failed, traceback.format_exc()]))
        if _is_polygraphy_error(exc):
            errors = [line[3:].strip() for line in lines if line.startswith("[E]") and line[3:].strip()]
            detail = errors[0].splitlines()[0] if errors else _first_line(exc)
            raise UserError(f"TensorRT could not build {out.name} from {onnx_path.name}: {detail} "
                            f"(build log: {paths['log']})") from None
        raise

    engine_bytes, summary, seconds = built.engine, built.summary, built.seconds
    record = {
        "engine": out.name, "onnx": onnx_path.name, "tensorrt": settings.trt_version,
        "settings": asdict(settings), "workspace_mb": int(workspace_mb), "build_seconds": round(seconds, 3),
        "engine_bytes": len(engine_bytes), **summary,
    }
    atomic_write_json(paths["layers"], record)
    if cache_path is not None:
        atomic_write_bytes(cache_path, built.timing_cache)
    footer = ["", f"built in {seconds:.1f} s, {len(engine_bytes)} bytes; {format_counts(summary)}",
              f"layer summary: {paths['layers']}"]
    atomic_write_text(paths["log"], "\n".join(header + lines + footer) + "\n")
    atomic_write_bytes(out, engine_bytes)  # last: an engine on disk implies its log and summary
    return EngineBuildResult(out, paths["log"], paths["layers"], settings, summary, seconds, cache_path)


def _is_polygraphy_error(exc: BaseException) -> bool:
    return isinstance(exc, PolygraphyException)
