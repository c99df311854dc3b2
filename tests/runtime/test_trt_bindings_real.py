"""The real TensorRT Python bindings, 10.x and 11.x, against the attributes our code touches.

TensorRT itself cannot be installed on a CPU machine, but its binding wheels (`tensorrt-cu12-bindings` 10.x,
`tensorrt-cu13-bindings` 11.x, about 1.3 MB each; `make` downloads them into .venv/trt-bindings/, never
installs them) load against stand-in `libnvinfer.so.N` / `libnvinfer_plugin.so.N` / `libnvonnxparser.so.N`:
a C file generated here from the bindings' undefined symbols (`nm -D --undefined-only`), each a function that
returns NULL, compiled with gcc. The enums, classes and methods are then the bindings' own; creating a Builder
or Runtime fails exactly as it does on a machine without a usable GPU (the library hands back NULL).

Each binding wheel runs in a child process (`import tensorrt` must see it, and only there). Checked:
- every `trt.<attr>` chain in runtime/trt/*.py (read from the code) exists, or is guarded where it is read
  (`getattr(..., default)` / `hasattr`);
- every method / property our code calls on TensorRT objects (`OBJECT_MEMBERS`, kept here) exists;
- the precision flags our build plan asks Polygraphy for (`BuilderFlag.INT8` / `FP16`) exist where it asks;
- `NetworkDefinitionCreationFlag.STRONGLY_TYPED` (deprecated, ignored in 11) is still passed while defined;
- Builder() without a GPU raises the TypeError the fakes raise, and the engine build turns it into one line.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]
TRT_CODE = REPO / "trt_centerpoint" / "runtime" / "trt"
WHEELS = Path(sys.prefix) / "trt-bindings"
TRT_LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")

# methods and properties our code uses on objects TensorRT returns: class -> members (runtime/trt/*.py)
OBJECT_MEMBERS = {
    "Builder": ["create_network"],  # parser.py
    "OnnxParser": ["parse_from_file", "num_errors", "get_error"],
    "ParserError": ["desc", "node", "node_name", "node_operator"],
    "INetworkDefinition": ["num_layers", "get_layer", "num_inputs", "get_input", "num_outputs", "get_output"],
    "ILayer": ["type", "name", "num_inputs", "get_input", "num_outputs", "get_output"],  # inspect.py
    "ITensor": ["name", "dtype"],
    "Runtime": ["deserialize_cuda_engine"],  # pycuda_runner.py
    "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
                    "create_execution_context", "create_engine_inspector"],  # io.py, build.py
    "IExecutionContext": ["set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"],
    "EngineInspector": ["get_engine_information"],  # the bindings name it without the I
    "IBuilderConfig": ["get_timing_cache"],
    "ITimingCache": ["serialize"],
    "ILogger": ["__init__", "log"],
}
ROOTS = ("trt",)  # names the TensorRT module goes by in runtime/trt/*.py (also `self._trt`)


def _chain(node: ast.AST) -> list[str] | None:
    """['Logger', 'ERROR'] for `trt.Logger.ERROR` (or `self._trt.Logger.ERROR`); None if not rooted at trt."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
        if isinstance(node, ast.Attribute) and node.attr == "_trt" and isinstance(node.value, ast.Name):
            return names[::-1]
    if isinstance(node, ast.Name) and node.id in ROOTS and names:
        return names[::-1]
    return None


def code_attributes() -> tuple[set[str], set[str]]:
    """(attribute chains our code reads from the TensorRT module, chains it reads only behind a guard)."""
    used, guarded = set(), set()
    for path in sorted(TRT_CODE.glob("*.py")):
        tree = ast.parse(path.read_text())
        inner = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                inner.add(id(node.value))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                    and (node.func.id == "hasattr" or len(node.args) == 3)):
                target = node.args[0]
                base = [] if isinstance(target, ast.Name) and target.id in ROOTS else _chain(target)
                if base is not None:
                    guarded.add(".".join([*base, node.args[1].value]))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:  # the whole chain, not its prefixes
                names = _chain(node)
                if names and not names[-1].startswith("__"):
                    used.add(".".join(names))
    return used, guarded


def test_the_collector_reads_what_the_code_touches():
    """The parser finds uses known to be in the code (and so cannot pass by finding nothing)."""
    used, guarded = code_attributes()
    assert {"Logger.ERROR", "Builder", "OnnxParser", "LayerInformationFormat.JSON", "TensorIOMode.INPUT",
            "ProfilingVerbosity.DETAILED", "MemoryPoolType.WORKSPACE", "nptype", "Runtime"} <= used
    assert {"NetworkDefinitionCreationFlag.STRONGLY_TYPED", "ComputeCapability"} <= guarded
    code = "\n".join(p.read_text() for p in TRT_CODE.glob("*.py"))
    for members in OBJECT_MEMBERS.values():  # the list kept here still names what the code calls
        for member in members:
            assert member == "__init__" or re.search(rf"\.{member}\b", code), member


def _wheels() -> list[Path]:
    return sorted(WHEELS.glob("tensorrt_cu1*_bindings-*.whl"))


def _stand_ins(wheel: Path, into: Path) -> tuple[Path, Path]:
    """Unpack `wheel` into `into`; compile stand-in TensorRT libraries for it; (package root, library dir)."""
    root = into / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(root)
    binding = next(root.glob("tensorrt_bindings/tensorrt*.so"))
    needed = subprocess.run(["readelf", "-d", str(binding)], capture_output=True, text=True, check=True).stdout
    major = re.search(r"libnvinfer\.so\.(\d+)", needed).group(1)
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(binding)], capture_output=True, text=True,
                               check=True).stdout.split("\n")
    # TensorRT's own entry points: unversioned strong symbols that are not C / C++ runtime or Python C-API
    symbols = sorted({parts[-1] for parts in (line.split() for line in undefined)
                      if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1]
                      and not re.match(r"_?Py|dl(open|sym|close|error)$|pthread_", parts[1])})
    assert any(s.startswith("createInferBuilder") for s in symbols), symbols
    lib = into / "lib"
    lib.mkdir()
    source = lib / "stand_in.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for name in TRT_LIBRARIES:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib / f"{name}.so.{major}"),
                        f"-Wl,-soname,{name}.so.{major}", str(source)], check=True)
    return root, lib


CHILD = r"""
import json, sys
import tensorrt_bindings
sys.modules["tensorrt"] = tensorrt_bindings
trt = tensorrt_bindings
used, guarded, members, onnx_path, out = json.loads(sys.argv[1])

def has(chain):
    obj = trt
    for name in chain.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.trt.build import build_engine, build_plan, strongly_typed_arg
from trt_centerpoint.runtime.trt.env import tensorrt_status
from trt_centerpoint.runtime.trt.parser import _strongly_typed_flags

report = {"version": trt.__version__,
          "missing": sorted(c for c in used if not has(c)),
          "guarded_missing": sorted(c for c in guarded if not has(c)),
          "members_missing": sorted(f"{k}.{m}" for k, ms in members.items() for m in ms if not has(f"{k}.{m}"))}
flags = []
for qdq, fp16_io in ((True, False), (False, True), (False, False)):
    plan = build_plan(trt.__version__, qdq, fp16_io)
    flags += [f for f, on in (("INT8", plan.int8), ("FP16", plan.fp16)) if on]
report["flags_asked"] = sorted(set(flags))
report["flags_missing"] = [f for f in report["flags_asked"] if not has(f"BuilderFlag.{f}")]
plan = build_plan(trt.__version__, True, False)
report["strongly_typed_arg"] = strongly_typed_arg(trt, plan)
report["creation_flags"] = _strongly_typed_flags(trt)
try:
    trt.Builder(trt.Logger(trt.Logger.ERROR))
except Exception as exc:
    report["builder_error"] = f"{type(exc).__name__}: {exc}"
report["status"] = tensorrt_status(check_gpu=True)[1]
try:
    build_engine(onnx_path, out, builder="tensorrt")
except UserError as exc:
    report["engine_error"] = str(exc)
print("REPORT " + json.dumps(report))
"""


def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["hm"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("hm", TensorProto.FLOAT, [1, 4, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{major: the child's report} for each binding wheel in .venv/trt-bindings/."""
    wheels = _wheels()
    if not wheels:
        pytest.skip(f"no TensorRT binding wheels in {WHEELS} (`make` downloads them: pip download --no-deps "
                    "tensorrt-cu12-bindings tensorrt-cu13-bindings)")
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the stand-in TensorRT libraries are compiled here")
    onnx_path = _tiny_onnx(tmp_path_factory.mktemp("onnx") / "rpn_head.fp32.onnx")
    used, guarded = code_attributes()
    out = {}
    for wheel in wheels:
        work = tmp_path_factory.mktemp(wheel.name.split("-")[0])
        site, lib = _stand_ins(wheel, work)
        env = {**os.environ, "LD_LIBRARY_PATH": str(lib),
               "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
        args = json.dumps([sorted(used), sorted(guarded), OBJECT_MEMBERS, str(onnx_path), str(work / "x.plan")])
        done = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, env=env,
                              timeout=120)
        line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT ")), None)
        assert done.returncode == 0 and line, f"{wheel.name}: {done.stderr[-2000:]}"
        report = json.loads(line[len("REPORT "):])
        out[int(report["version"].split(".")[0])] = report
    if not {10, 11} <= set(out):
        pytest.skip(f"needs a 10.x and an 11.x binding wheel in {WHEELS}, found {sorted(out)}")
    return out


@pytest.mark.parametrize("major", [10, 11])
def test_every_attribute_our_code_touches_exists(reports, major):
    report = reports[major]
    assert report["missing"] == [], f"TensorRT {report['version']} lacks {report['missing']}"
    assert report["members_missing"] == [], f"TensorRT {report['version']} lacks {report['members_missing']}"
    assert report["flags_missing"] == [], f"the build plan asks {report['version']} for {report['flags_missing']}"


def test_what_differs_between_10_and_11(reports):
    ten, eleven = reports[10], reports[11]
    # 11.x dropped the weak-typing precision flags; the build plan asks for them only before 10.12
    assert ten["flags_asked"] == [] and eleven["flags_asked"] == []
    # both still define the strongly typed creation flag (deprecated and ignored in 11): it is passed while there
    assert ten["strongly_typed_arg"] is True and eleven["strongly_typed_arg"] is True
    assert ten["creation_flags"] > 0 and eleven["creation_flags"] > 0
    # guarded reads: ComputeCapability is TensorRT-RTX's, absent from TensorRT proper
    assert "ComputeCapability" in ten["guarded_missing"] and "ComputeCapability" in eleven["guarded_missing"]


@pytest.mark.parametrize("major", [10, 11])
def test_no_usable_gpu_is_the_fakes_type_error_and_one_line(reports, major):
    report = reports[major]
    assert report["builder_error"] == "TypeError: pybind11::init(): factory function returned nullptr"
    assert "cannot create a builder" in report["status"] and "nullptr" in report["status"]
    assert report["engine_error"].startswith(f"TensorRT {report['version']} is installed but cannot create a "
                                             "builder")
    assert "\n" not in report["engine_error"]
