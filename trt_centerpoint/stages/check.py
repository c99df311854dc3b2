"""`trt-centerpoint check`: every exported file against the project's lint rules and, for the 2D files, NVIDIA's
own ONNX parser (TensorRT, or TensorRT-RTX where TensorRT cannot run); with `--libspconv DIR`, the scn files
also through NVIDIA's libspconv engine build (host-side with a stand-in CUDA runtime where there is no GPU).

Two independent checks: the lint knows the libspconv dialect and TensorRT's Q/DQ placement rules and says why
a file is wrong in our terms; the parser is NVIDIA's importer and says whether TensorRT reads the file at all.
Every file is checked, also after a bad one; the exit status is the worst: 2 for a file that cannot be read, 1
for findings, 0 when all are clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint import lint_file
from trt_centerpoint.export.onnx_io import load_onnx
from trt_centerpoint.export.scn.lint import is_qdq
from trt_centerpoint.runtime.libspconv.describe import NotDescribable
from trt_centerpoint.runtime.libspconv.engine import build_engine
from trt_centerpoint.runtime.libspconv.process import LibspconvCrash
from trt_centerpoint.runtime.libspconv.session import SpconvSession
from trt_centerpoint.runtime.trt.parser import NvidiaParser, ParseResult, nvidia_parser, parse_onnx

EXIT_OK, EXIT_FINDINGS, EXIT_UNREADABLE = 0, 1, 2

__all__ = ["FileCheck", "check_files", "exit_status"]


@dataclass
class FileCheck:
    path: Path
    kind: str = ""  # "scn" (libspconv dialect) or "onnx" (standard ONNX for TensorRT)
    findings: list[str] = field(default_factory=list)  # lint lines, then parser lines
    parser: str = ""  # "TensorRT-RTX 1.7.1.116 parser: 84 layers", or why it did not run
    parsed_by: str = ""  # "TensorRT-RTX 1.7.1.116" when NVIDIA's parser ran
    error: str = ""  # the file could not be read
    libspconv: str = ""  # "libspconv 1.1.10: engine built, 18 nodes (host-side build only: no kernel ran)"

    @property
    def status(self) -> int:
        return EXIT_UNREADABLE if self.error else EXIT_FINDINGS if self.findings else EXIT_OK

    def lines(self, verbose: bool = True) -> list[str]:
        if self.error:
            return [self.error]
        if self.findings:
            return list(self.findings)
        if not verbose:
            return []
        return [f"{self.path}: ok ({self.kind}; {self.libspconv or self.parser})"]


def _parse(check: FileCheck, parser: NvidiaParser | None, unavailable: str) -> None:
    if check.kind != "onnx":
        check.parser = "NVIDIA parser not run: the libspconv dialect is read by libspconv, not TensorRT"
        return
    if parser is None:
        check.parser = f"NVIDIA parser unavailable: {unavailable}"
        return
    result: ParseResult = parse_onnx(check.path, parser)
    check.parsed_by = result.parser
    check.parser = f"{result.parser} parser: {result.layers} layers"
    check.findings += [e.line(str(check.path), result.parser) for e in result.errors]


def _spconv_build(check: FileCheck, spconv: SpconvSession) -> None:
    """NVIDIA's parse + engine build of an scn file; its error lines and a crash are findings."""
    where = spconv.where
    if is_qdq(load_onnx(check.path)[0]):
        check.libspconv = f"{spconv.label} not run: the Q/DQ form is for TensorRT plugins, not libspconv"
        return
    try:
        built = build_engine(spconv.library, spconv.native, check.path, spconv.host_side)
    except LibspconvCrash as exc:
        check.findings.append(f"{exc} ({where})")
        return
    except NotDescribable as exc:
        check.findings.append(f"{check.path}: {spconv.label} not run: {exc}")
        return
    check.findings += [f"{check.path}: {spconv.label}: {line} ({where})" for line in built.errors]
    nodes = f", {built.nodes} nodes" if built.nodes is not None else ""
    check.libspconv = f"{spconv.label}: engine built{nodes} ({where})"


def check_files(paths, use_parser: bool = True, spconv: SpconvSession | None = None) -> list[FileCheck]:
    """Lint every file and parse the 2D ones with NVIDIA's parser (chosen once for all files); with `spconv`,
    build every scn file with NVIDIA's libspconv too."""
    parser, unavailable = nvidia_parser() if use_parser else (None, "not asked for")
    checks = []
    for path in paths:
        check = FileCheck(Path(path))
        try:
            check.kind, check.findings = lint_file(path)
        except UserError as exc:
            check.error = str(exc)
        else:
            _parse(check, parser, unavailable)
            if spconv is not None and check.kind == "scn":
                _spconv_build(check, spconv)
        checks.append(check)
    return checks


def exit_status(checks: list[FileCheck]) -> int:
    """The worst status over the files."""
    return max((c.status for c in checks), default=EXIT_OK)
