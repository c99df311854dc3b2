"""Importing the optional libraries (tensorrt, tensorrt_rtx, pycuda; the nuScenes devkit) on demand, with a
one-line reason.

They cannot be installed on CPU machines (TensorRT needs NVIDIA's index and a GPU driver; pycuda needs
cuda.h), so no module imports them at load time: code asks here when it needs one. Every other dependency
is imported at the top of the module that uses it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Polygraphy's TensorRT (and TensorRT-RTX) backend binds the TensorRT module when it is imported: only the
# engine paths need it.
OPTIONAL = ("tensorrt", "tensorrt_rtx", "pycuda", "pycuda.driver", "pycuda.autoinit", "polygraphy.backend.trt",
            "polygraphy.backend.common", "polygraphy.backend.tensorrt_rtx",
            # nuscenes-devkit (the `nuscenes` extra), through `_compat.nuscenes.devkit`
            "nuscenes", "nuscenes.eval.common.config", "nuscenes.eval.detection.constants",
            "nuscenes.eval.detection.evaluate", "nuscenes.eval.detection.utils", "nuscenes.utils.data_classes",
            "nuscenes.utils.geometry_utils", "nuscenes.utils.splits", "pyquaternion")
DISPLAY = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX", "pycuda": "pycuda", "pycuda.driver": "pycuda",
           "pycuda.autoinit": "pycuda", "polygraphy.backend.trt": "Polygraphy's TensorRT backend",
           "polygraphy.backend.common": "Polygraphy",
           "polygraphy.backend.tensorrt_rtx": "Polygraphy's TensorRT-RTX backend"}


def import_optional(name: str) -> ModuleType:
    """Import one of the optional GPU libraries. Through importlib, so a module a test placed in `sys.modules`
    (a fake, or None for "absent") is honoured. Raises what the import raises."""
    if name not in OPTIONAL:
        raise ValueError(f"{name} is not an optional library; import it at the top of the module")
    return importlib.import_module(name)


def import_failure(name: str, exc: BaseException, install_hint: str) -> str:
    """One line saying why `name` cannot be used: not installed (with the hint) or broken (its first line)."""
    display = DISPLAY.get(name, name)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == name.split(".")[0]:
        return f"{display} is not installed ({install_hint})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{display} cannot be imported ({first})"
