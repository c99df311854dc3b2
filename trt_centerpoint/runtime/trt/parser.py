"""NVIDIA's ONNX parser on our 2D files: an independent check that TensorRT will read them.

Our own lint (`export.lint`) encodes the rules we know; NVIDIA's parser is the rule book itself. It rejects at
parse time what TensorRT rejects (a Q/DQ with a non-zero zero point, an op no importer or plugin handles), with
the node's index, name and op type. Placement rules that TensorRT checks only when it picks tactics are not
caught here; the engine build does that.

Which parser: TensorRT proper when it imports *and* a builder can be created (TensorRT needs a GPU and driver
even for that), else TensorRT-RTX, whose builder and parser run without a GPU (`pip install
'trt-centerpoint[rtx]'`). The network is strongly typed, as every TensorRT 10.12+ / 11 build of our files is.
The libspconv dialect (`scn.*.onnx`) is not TensorRT ONNX and is never given to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trt_centerpoint.runtime.trt.env import BUILDER_NAMES, require_builder, resolve_builder

__all__ = ["NvidiaParser", "ParseResult", "ParserError", "nvidia_parser", "parse_onnx"]

@dataclass(frozen=True)
class ParserError:
    """One error of NVIDIA's parser: the node (index in the graph, name, op type) and its message."""

    node_index: int
    node_name: str
    op: str
    message: str

    def line(self, source: str, parser: str) -> str:
        where = f"node {self.node_index} {self.node_name!r} ({self.op})" if self.node_index >= 0 else "graph"
        return f"{source}: {parser} parser: {where}: {self.message}"


@dataclass
class ParseResult:
    parser: str  # "TensorRT 10.13.0" / "TensorRT-RTX 1.7.1.116"
    errors: list[ParserError] = field(default_factory=list)
    layers: int = 0  # network layers after a successful parse

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class NvidiaParser:
    """The chosen TensorRT module (`tensorrt` or `tensorrt_rtx`) and its name + version for messages."""

    module: object
    name: str  # "TensorRT" / "TensorRT-RTX"

    @property
    def version(self) -> str:
        return str(getattr(self.module, "__version__", "?"))

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def _collecting_logger(trt, sink: list[str]):
    """A TensorRT logger that keeps messages (the parser repeats its errors through the logger on stderr)."""

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            sink.append(str(msg))

    return Collect()


def nvidia_parser() -> tuple[NvidiaParser | None, str]:
    """(the parser to use, "") or (None, why neither TensorRT nor TensorRT-RTX can parse here): the library
    `--builder auto` would build with."""
    builder, reason = resolve_builder("auto")
    if builder is None:
        return None, reason
    return NvidiaParser(require_builder(builder, "parse ONNX"), BUILDER_NAMES[builder]), ""


def _strongly_typed_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # TensorRT 11.0 / 11.4 still define the flag (deprecated, ignored: every network is strongly typed); a later
    # version may drop it
    return 0 if flag is None else 1 << int(flag)


def parse_onnx(path: str | Path, parser: NvidiaParser) -> ParseResult:
    """Parse one ONNX file into a strongly typed network; every parser error becomes a `ParserError`."""
    trt, path = parser.module, Path(path)
    messages: list[str] = []
    logger = _collecting_logger(trt, messages)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    onnx_parser = trt.OnnxParser(network, logger)
    result = ParseResult(parser.label)
    # parse_from_file resolves external data next to the file, as a deployment build would
    if onnx_parser.parse_from_file(str(path)):
        result.layers = network.num_layers
        return result
    for index in range(onnx_parser.num_errors):
        error = onnx_parser.get_error(index)
        message = " ".join(str(error.desc()).split())
        result.errors.append(ParserError(int(error.node()), str(error.node_name()), str(error.node_operator()),
                                         message))
    if not result.errors:  # failed without a recorded error: say what the logger heard
        result.errors.append(ParserError(-1, "", "", messages[-1] if messages else "parse failed"))
    return result
