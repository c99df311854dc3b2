"""The package's import layers, read from the source: imports point one way and no module cycle exists.

The layers are listed in docs/ARCHITECTURE.md; this test is their definition. A module may import from a
strictly lower layer, or from inside its own top-level subpackage (e.g. `export.scn.writer` from
`export.scn.walk`). Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trt_centerpoint"
ROOT = "trt_centerpoint"

# lower number = lower layer; the keys are top-level modules / subpackages of trt_centerpoint
LAYERS = {
    "__init__": 0, "errors": 0, "artifacts": 0,
    "fileio": 1, "lockfile": 1,
    "config": 2, "manifest": 2, "_compat": 2, "threads": 2, "distributed": 2,
    "data": 3, "report": 3,
    "model": 4,
    "eval": 5, "train": 5,
    "quant": 6,
    "export": 7,
    "runtime": 8,
    "stages": 9,
    "args": 10,
    "cli": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports (resolving `from pkg import module` to the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == ROOT:
            assert node.level == 0, f"{path}: relative import; the project uses absolute imports"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return {m for m in found if m in known}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported_modules(path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    missing = sorted({top(m) for m in graph} - set(LAYERS))
    assert not missing, f"top-level modules without a layer in LAYERS (and docs/ARCHITECTURE.md): {missing}"


def test_imports_point_down(graph):
    wrong = []
    for src, targets in graph.items():
        for dst in targets:
            if top(dst) == top(src) or dst == ROOT:
                continue
            if LAYERS[top(dst)] >= LAYERS[top(src)]:
                wrong.append(f"{src} (layer {LAYERS[top(src)]}) imports {dst} (layer {LAYERS[top(dst)]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle(graph):
    """Depth-first search over the module graph; a back edge is a cycle (reported as its path)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_a_wrong_way_import(tmp_path):
    """The graph reader finds a function-level import (the kind the layering forbids upward)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from trt_centerpoint.stages.build import run_build\n    return run_build\n")
    assert imported_modules(source, set(modules())) == {"trt_centerpoint.stages.build"}


def test_optional_gpu_libraries_only_through_the_helper():
    """tensorrt / tensorrt_rtx / pycuda are never imported by an import statement: they cannot be installed on
    CPU machines, so `_compat.optional.import_optional` loads them on demand."""
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("tensorrt", "tensorrt_rtx", "pycuda")]
    assert not offenders, offenders


def test_the_project_stands_alone():
    """Users have only this repository: every document the code or docs name (README.md, docs/*.md: upper-case
    names; lower-case ones like report.md are outputs) is in it, and nothing cites
    a section of a document by number (state the fact where it is used instead)."""
    repo = PACKAGE.parent
    files = [*repo.glob("*.md"), *repo.glob("docs/**/*.md"), *PACKAGE.rglob("*.py"), *(repo / "tests").rglob("*.py"),
             *(repo / "benchmarks").rglob("*.py"), *(repo / "scripts").rglob("*.py")]
    present = {p.name for p in repo.rglob("*.md") if ".venv" not in p.parts}
    hits = []
    for path in files:
        text = path.read_text()
        hits += [f"{path.relative_to(repo)}: names {m}" for m in re.findall(r"[\w./-]*\b[A-Z][A-Z_]+\.md\b", text)
                 if Path(m).name not in present or m.startswith("..")]
        hits += [f"{path.relative_to(repo)}: cites {m}" for m in re.findall(r"\b[A-Z]{3,}(?:\.md)? section \d+", text)]
    assert not hits, hits
