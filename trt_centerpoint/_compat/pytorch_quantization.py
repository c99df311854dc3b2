"""pytorch-quantization 2.1.3 on CPU: its log noise and its CUDA-only state-dict loading, worked around.

1. ``TensorQuantizer._load_from_state_dict`` creates a missing ``_amax`` buffer with
   ``state_dict[...]._amax.cuda()``: loading a calibrated state dict into a fresh (uncalibrated) model
   fails on a CPU-only torch. ``register_amax_buffers`` registers every ``_amax`` the state dict holds,
   with its shape, on the quantizer's device, *before* ``load_state_dict``; the library then takes its
   "overwrite amax" branch, which is a plain copy. Version guard: applied for pytorch-quantization
   ``<= 2.1.3`` (the version this project pins, where the bug was measured). Registering a buffer ahead
   of loading is harmless on any version, but re-check the bug before widening the guard.
2. The library logs through absl at WARNING for routine calls (every ``disable_calib``, every amax load);
   ``quiet_library_logs`` silences it below ERROR while our own code drives it.
3. ``QuantMixin.init_quantizer`` checks that it is called from an ``__init__`` with ``inspect.stack()[1]``,
   which builds a ``FrameInfo`` for every frame of the stack, reading each frame's source lines and
   searching ``sys.modules`` for its module: about 35 ms per quantized Conv2d here, 3 s for the 87 convs
   of a nuScenes-size head, paid by every stage that loads a quantized checkpoint. ``fast_module_init``
   gives the library's module, while our code creates quantized modules, an ``inspect`` whose ``stack()``
   returns only the function names (the one field the check reads): the same check, the same TypeError
   for a wrong caller. Version guard: pytorch-quantization ``<= 2.1.3`` (``INSPECT_STACK_MAX``).

The MSE amax search that calls ``.cuda()`` is replaced in ``mse.py``, not patched.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import types
from collections.abc import Iterator

import pytorch_quantization
import torch
from absl import logging as absl_logging
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.nn.modules import _utils
from torch import nn

KNOWN_BAD_MAX = (2, 1, 3)  # last pytorch-quantization version whose state-dict hook calls .cuda()
INSPECT_STACK_MAX = (2, 1, 3)  # last version whose init_quantizer calls inspect.stack() (checked in 2.1.3)


def library_version() -> str:
    return str(getattr(pytorch_quantization, "__version__", "unknown"))


def _parse(version: str) -> tuple[int, ...] | None:
    found = re.match(r"^\s*(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(g) for g in found.groups()) if found else None


def needs_amax_preregistration(version: str | None = None) -> bool:
    """True where ``TensorQuantizer`` loads a missing ``_amax`` with ``.cuda()`` (<= 2.1.3)."""
    parsed = _parse(version if version is not None else library_version())
    return parsed is not None and parsed <= KNOWN_BAD_MAX


def iter_quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(module path, TensorQuantizer) for every quantizer in `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            yield name, module


def register_amax_buffers(model: nn.Module, state_dict: dict[str, torch.Tensor], force: bool = False) -> int:
    """Give each quantizer the ``_amax`` buffer `state_dict` has for it (zeros, right shape, own device).

    Only where ``needs_amax_preregistration()`` (or `force`); returns how many buffers were registered.
    A quantizer that already has an ``_amax`` of another shape gets a new one (its shape is the
    checkpoint's: per-tensor vs per-channel is decided by calibration).
    """
    if not (force or needs_amax_preregistration()):
        return 0
    count = 0
    for name, quantizer in iter_quantizers(model):
        key = f"{name}._amax" if name else "_amax"
        if key not in state_dict:
            continue
        current = quantizer._buffers.get("_amax")
        wanted = tuple(state_dict[key].shape)
        if current is not None and tuple(current.shape) == wanted:
            continue
        device = current.device if current is not None else _module_device(model)
        quantizer._buffers.pop("_amax", None)
        quantizer.register_buffer("_amax", torch.zeros(wanted, dtype=torch.float32, device=device))
        count += 1
    return count


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Silence pytorch-quantization's absl INFO / WARNING lines (errors still show)."""
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


class _FunctionNamesOnly:
    """``inspect`` for pytorch-quantization's ``_utils``, whose only use of it is ``inspect.stack()[1].function``:
    ``stack()`` returns the calling frames' function names, nothing read from disk; anything else is ``inspect``'s."""

    @staticmethod
    def stack(context: int = 1) -> list[types.SimpleNamespace]:
        frame, names = sys._getframe(1), []  # [0]: the caller of stack(), as inspect.stack() orders them
        while frame is not None:
            names.append(types.SimpleNamespace(function=frame.f_code.co_name))
            frame = frame.f_back
        return names

    def __getattr__(self, name: str):
        return getattr(inspect, name)


def needs_fast_module_init(version: str | None = None) -> bool:
    parsed = _parse(version if version is not None else library_version())
    return parsed is not None and parsed <= INSPECT_STACK_MAX


@contextlib.contextmanager
def fast_module_init() -> Iterator[None]:
    """Create pytorch-quantization's quantized modules without its per-module ``inspect.stack()`` (item 3)."""
    if not needs_fast_module_init() or getattr(_utils, "inspect", None) is not inspect:
        yield
        return
    _utils.inspect = _FunctionNamesOnly()
    try:
        yield
    finally:
        _utils.inspect = inspect
