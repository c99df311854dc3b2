"""`trt-centerpoint check`: every exported file against the project's lint rules and, for the 2D files, NVIDIA's
own ONNX parser (TensorRT, or TensorRT-RTX where TensorRT cannot run).

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

    @property
    def status(self) -> int:
        return EXIT_UNREADABLE if self.error else EXIT_FINDINGS if self.findings else EXIT_OK

    def lines(self, verbose: bool = True) -> list[str]:
        if self.error:
            return [self.error]
        if self.findings:
            return list(self.findings)
        return [f"{self.path}: ok ({self.kind}; {self.parser})"] if verbose else []


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


def check_files(paths, use_parser: bool = True) -> list[FileCheck]:
    """Lint every file and parse the 2D ones with NVIDIA's parser (chosen once for all files)."""
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
        checks.append(check)
    return checks


def exit_status(checks: list[FileCheck]) -> int:
    """The worst status over the files."""
    return max((c.status for c in checks), default=EXIT_OK)
