"""`trt-centerpoint check FILE.onnx`: lint an exported file against what its consumer accepts.

Why: libspconv's parser fails late and tersely on a GPU machine ("Invalid weight scales 1 != 16",
"Unsupport operator"); the same mistakes are cheap to catch here, one line per finding.

A file's kind decides its rule set: "scn" (the libspconv dialect, `lint_scn.SCN_RULES`) when it holds a
SparseConvolution or ScatterDense, else "onnx" (standard ONNX for TensorRT: `onnx.checker` full check;
then the Q/DQ rules of INT8 2D files, `lint_qdq.QDQ_RULES`, which say nothing on a file without Q/DQ).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from trt_centerpoint.export.head.lint import QDQ_RULES
from trt_centerpoint.export.lint_common import Finding
from trt_centerpoint.export.onnx_io import load_onnx
from trt_centerpoint.export.scn.lint import SCN_RULES

Rule = Callable[[onnx.ModelProto], list[Finding]]

__all__ = ["RULES", "Finding", "file_kind", "lint_file", "lint_model"]


def rule_onnx_checker(model: onnx.ModelProto) -> list[Finding]:
    """Standard ONNX files must pass onnx.checker's full check (with shape inference)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Finding("graph", f"onnx.checker: {first}")]
    return []


RULES: dict[str, list[Rule]] = {"scn": list(SCN_RULES), "onnx": [rule_onnx_checker, *QDQ_RULES]}


def file_kind(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    return "scn" if ops & {"SparseConvolution", "ScatterDense"} else "onnx"


def lint_model(model: onnx.ModelProto, kind: str | None = None) -> list[Finding]:
    """All findings of the rules for the model's kind (empty: the file is fine)."""
    findings: list[Finding] = []
    for rule in RULES[kind or file_kind(model)]:
        findings.extend(rule(model))
    return findings


def lint_file(path: str | Path) -> tuple[str, list[str]]:
    """(kind, one line per finding) for an ONNX file; an unreadable file is a UserError."""
    model, name = load_onnx(path)
    kind = file_kind(model)
    return kind, [f.line(name) for f in lint_model(model, kind)]
