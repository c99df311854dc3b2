"""The nuScenes devkit (nuscenes-devkit), imported on demand with a one-line reason when it is missing.

It is an optional extra (`pip install 'trt-centerpoint[nuscenes]'`): only nuScenes data and `--metric nuscenes`
need it, and it pins numpy < 2. Every module of the devkit (and its pyquaternion) is imported through `devkit`.
"""

from __future__ import annotations

from types import ModuleType

from trt_centerpoint._compat.optional import import_optional
from trt_centerpoint.errors import UserError

NOT_INSTALLED = "nuscenes-devkit is not installed: pip install 'trt-centerpoint[nuscenes]'"
_ROOTS = ("nuscenes", "pyquaternion")


def devkit(module: str = "nuscenes") -> ModuleType:
    """Import `module` (a devkit module listed in `optional.OPTIONAL`); a missing devkit is a UserError."""
    try:
        return import_optional(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _ROOTS:
            raise UserError(NOT_INSTALLED) from None
        raise
