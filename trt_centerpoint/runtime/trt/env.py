"""Is TensorRT (and pycuda) usable here? Lazy imports with one-line answers.

TensorRT cannot be installed on the project's CPU machines, and it needs an NVIDIA GPU and driver even to
create a builder. Nothing in this package imports ``tensorrt`` or ``pycuda`` at module level: the functions
below do it on demand and turn every failure into one sentence, so that

* ``trt-centerpoint engine`` exits 2 with one line (``require_tensorrt`` raises ``UserError``), and
* ``trt-centerpoint build`` asks ``tensorrt_available()`` and goes on without engines.
"""

from __future__ import annotations

import re
from types import ModuleType

from trt_centerpoint._compat.optional import import_failure, import_optional
from trt_centerpoint.errors import UserError

INSTALL_HINT = "pip install 'trt-centerpoint[trt]' on a machine with an NVIDIA GPU"
MIN_TRT_VERSION = (10, 0)


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


def tensorrt_status(check_gpu: bool = False):
    """(module or None, reason). The reason says what was found or, in one line, why TensorRT is unusable."""
    try:
        trt = import_optional("tensorrt")
    except Exception as exc:  # ImportError, OSError (libnvinfer missing), RuntimeError (CUDA init), ...
        return None, import_failure("tensorrt", exc, INSTALL_HINT)
    version = getattr(trt, "__version__", "?")
    try:
        too_old = parse_version(version) < MIN_TRT_VERSION
    except ValueError:
        return None, f"TensorRT reports an unreadable version {version!r}"
    if too_old:
        return None, f"TensorRT {version} is too old (trt-centerpoint needs TensorRT >= 10.0)"
    if check_gpu:
        problem = _probe_builder(trt)
        if problem:
            return None, f"TensorRT {version} is installed but {problem}"
    return trt, f"TensorRT {version}"


def _probe_builder(trt) -> str | None:
    """Creating a builder is what fails without a GPU / driver; return why, or None."""
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


def require_tensorrt(purpose: str):
    """The ``tensorrt`` module, or ``UserError("<why>: cannot <purpose>")`` in one line."""
    trt, reason = tensorrt_status(check_gpu=False)
    if trt is None:
        raise UserError(f"{reason}: cannot {purpose}")
    return trt


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
