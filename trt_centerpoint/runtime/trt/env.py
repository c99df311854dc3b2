"""Which engine builder can run here (TensorRT, TensorRT-RTX), with one-line answers; lazy imports.

TensorRT cannot be installed on the project's CPU machines, and it needs an NVIDIA GPU and driver even to
create a builder. TensorRT-RTX can (`pip install 'trt-centerpoint[rtx]'`): its ahead-of-time builder and ONNX
parser run without a GPU, and its engines run only with the TensorRT-RTX runtime on RTX GPUs. Nothing in this
package imports ``tensorrt``, ``tensorrt_rtx`` or ``pycuda`` at module level: the functions below do it on
demand and turn every failure into one sentence, so that

* ``trt-centerpoint engine`` exits 2 with one line (``require_builder`` raises ``UserError``), and
* ``trt-centerpoint build`` asks ``resolve_builder("auto")`` and goes on without engines when neither can build.

``auto`` prefers TensorRT (the deployment target: its engines run and are timed here) when it imports and a
builder can be created; otherwise TensorRT-RTX; otherwise nothing, with both reasons.
"""

from __future__ import annotations

import re
from types import ModuleType

from polygraphy import config as polygraphy_config

from trt_centerpoint._compat.optional import import_failure, import_optional
from trt_centerpoint.errors import UserError

INSTALL_HINT = "pip install 'trt-centerpoint[trt]' on a machine with an NVIDIA GPU"
RTX_INSTALL_HINT = "pip install 'trt-centerpoint[rtx]'"
MIN_TRT_VERSION = (10, 0)
MIN_RTX_VERSION = (1, 0)

BUILDERS = ("auto", "tensorrt", "tensorrt-rtx")  # --builder
BUILDER_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
BUILDER_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def parse_version(version: str) -> tuple[int, int]:
    """'10.12.0.36' -> (10, 12). Only major and minor matter to the build rules."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def polygraphy_trt() -> tuple[ModuleType, ModuleType]:
    """(``polygraphy.backend.common``, ``polygraphy.backend.trt``): Polygraphy's TensorRT loaders and runner.

    Imported when an engine is built or run, like TensorRT itself, so that importing ``runtime.trt`` costs
    nothing where there is no TensorRT; through importlib, so that a test's stand-ins in ``sys.modules`` are
    honoured.
    """
    return import_optional("polygraphy.backend.common"), import_optional("polygraphy.backend.trt")


def polygraphy_uses_rtx() -> bool:
    """Is this process's Polygraphy bound to TensorRT-RTX? (``POLYGRAPHY_USE_TENSORRT_RTX`` at its import)."""
    return bool(getattr(polygraphy_config, "USE_TENSORRT_RTX", False))


def polygraphy_rtx_config():
    """Polygraphy's ``CreateConfigRTX`` (compute-capability targets); only in a TensorRT-RTX process."""
    return import_optional("polygraphy.backend.tensorrt_rtx").CreateConfigRTX


def _module_status(builder: str, hint: str, minimum: tuple[int, int]):
    """(module or None, reason) for `builder` ("tensorrt" / "tensorrt-rtx"): importable and new enough."""
    name, module = BUILDER_NAMES[builder], BUILDER_MODULES[builder]
    try:
        lib = import_optional(module)
    except Exception as exc:  # ImportError, OSError (libnvinfer / libtensorrt_rtx missing), RuntimeError, ...
        return None, import_failure(module, exc, hint)
    version = getattr(lib, "__version__", "?")
    try:
        too_old = parse_version(version) < minimum
    except ValueError:
        return None, f"{name} reports an unreadable version {version!r}"
    if too_old:
        return None, f"{name} {version} is too old (trt-centerpoint needs {name} >= {minimum[0]}.{minimum[1]})"
    return lib, f"{name} {version}"


def tensorrt_status(check_gpu: bool = False):
    """(module or None, reason). The reason says what was found or, in one line, why TensorRT is unusable."""
    trt, reason = _module_status("tensorrt", INSTALL_HINT, MIN_TRT_VERSION)
    if trt is not None and check_gpu:
        problem = _probe_builder(trt)
        if problem:
            return None, f"{reason} is installed but {problem}"
    return trt, reason


def _probe_builder(trt) -> str | None:
    """Creating a builder is what fails without a GPU / driver (the bindings raise ``TypeError: pybind11::init():
    factory function returned nullptr``); return why, or None."""
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot create a builder, no usable NVIDIA GPU / driver? ({first})"
    if builder is None:
        return "cannot create a builder (no usable NVIDIA GPU / driver?)"
    del builder
    return None


def tensorrt_available(check_gpu: bool = True) -> tuple[bool, str]:
    """Can engines be built here? ``(True, "TensorRT 10.13.0.35")`` or ``(False, one-line reason)``.

    With ``check_gpu`` a TensorRT builder is created once (TensorRT needs a GPU and driver for that), so a
    machine with the wheel but no GPU answers False too. The pipeline calls this and skips the engine stage.
    """
    trt, reason = tensorrt_status(check_gpu=check_gpu)
    return trt is not None, reason


def require_tensorrt(purpose: str, check_gpu: bool = False):
    """The ``tensorrt`` module, or ``UserError("<why>: cannot <purpose>")`` in one line; with ``check_gpu`` a
    builder is created first, so that a machine without a usable GPU is that one line too."""
    trt, reason = tensorrt_status(check_gpu=check_gpu)
    if trt is None:
        raise UserError(f"{reason}: cannot {purpose}")
    return trt


def tensorrt_rtx_status():
    """(``tensorrt_rtx`` or None, reason). No GPU check: TensorRT-RTX builds ahead of time without one."""
    return _module_status("tensorrt-rtx", RTX_INSTALL_HINT, MIN_RTX_VERSION)


def resolve_builder(requested: str = "auto") -> tuple[str | None, str]:
    """``("tensorrt" | "tensorrt-rtx", what was found)`` or ``(None, why no engine can be built here)``.

    ``auto``: TensorRT where it imports and can create a builder (a GPU is there), else TensorRT-RTX. An
    explicit builder is checked alone (TensorRT without the GPU probe: the build itself says what fails).
    """
    if requested not in BUILDERS:
        raise UserError(f"--builder {requested}: choose from {', '.join(BUILDERS)}")
    if requested == "tensorrt":
        trt, reason = tensorrt_status(check_gpu=False)
        return ("tensorrt" if trt is not None else None), reason
    if requested == "tensorrt-rtx":
        rtx, reason = tensorrt_rtx_status()
        return ("tensorrt-rtx" if rtx is not None else None), reason
    trt, trt_reason = tensorrt_status(check_gpu=True)
    if trt is not None:
        return "tensorrt", trt_reason
    rtx, rtx_reason = tensorrt_rtx_status()
    if rtx is not None:
        return "tensorrt-rtx", f"{rtx_reason}; TensorRT: {trt_reason}"
    return None, f"{trt_reason}; {rtx_reason}"


def require_builder(builder: str, purpose: str, check_gpu: bool = False):
    """The module of `builder` (``tensorrt`` / ``tensorrt_rtx``), or ``UserError("<why>: cannot <purpose>")``;
    ``check_gpu``: TensorRT must also create a builder (TensorRT-RTX builds without a GPU)."""
    if builder == "tensorrt":
        return require_tensorrt(purpose, check_gpu=check_gpu)
    rtx, reason = tensorrt_rtx_status()
    if rtx is None:
        raise UserError(f"{reason}: cannot {purpose}")
    return rtx


def pycuda_available() -> tuple[bool, str]:
    try:
        import_optional("pycuda.driver")
    except Exception as exc:
        return False, import_failure("pycuda.driver", exc, INSTALL_HINT)
    return True, "pycuda"


def require_pycuda(purpose: str):
    """``pycuda.driver``, or ``UserError`` in one line."""
    try:
        return import_optional("pycuda.driver")
    except Exception as exc:
        raise UserError(f"{import_failure('pycuda.driver', exc, INSTALL_HINT)}: cannot {purpose}") from None
