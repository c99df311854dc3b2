"""Make spconv 2.3.x correct on CPU tensors with three small, version-guarded runtime patches.

spconv 2.3.8 (the CPU build, ``pip install spconv``) has three CPU-only problems, measured with torch 2.13:

1. ``scatter_add``: the Python layer of the native sparse conv (``spconv.pytorch.ops.indice_conv`` and
   ``indice_conv_backward``) does gather -> mm -> ``SpconvOps.scatter_add_cpu`` per kernel offset. With
   more than one OpenMP (torch) thread that compiled scatter-add races: wrong values and run-to-run
   differences. We route it to ``torch.Tensor.index_add_`` (deterministic). Installed only in the CPU-only
   build: in CUDA builds CPU convs run through compiled ``ConvGemmOps`` code that this cannot reach.
2. ``stream``: ``ops.indice_conv_backward`` calls ``get_current_stream()`` (``torch.cuda.current_stream``)
   unconditionally, so backward crashes on a CPU-only torch. The getter seen by ``ops`` returns 0 when
   CUDA is unavailable (the CPU path ignores the stream).
3. ``bias_act``: in eval mode the conv module passes its bias and fused activation (``act_type``) to the
   kernel, which asserts ``cpu don't support act and bias`` on CPU. For CPU inputs we run the kernel
   without them and apply bias + activation afterwards with torch ops (same numerics as the fused CUDA
   epilogue, and differentiable).

Version guard: the patches are applied only for spconv ``2.3.0 <= version <= 2.3.8`` (verified against
2.3.8, the CPU wheel this project pins; ``spconv-cu120`` is 2.3.6). Each patch checks its target first.
Other versions are left untouched: re-check the bugs before widening the guard. Nothing changes for CUDA
tensors.

Usage::

    from trt_centerpoint._compat.spconv import import_spconv
    spconv = import_spconv()   # spconv.pytorch, with the fixes applied

Importing this module does not import spconv.
"""

from __future__ import annotations

import inspect
import re
import threading
from typing import Any

import torch

from trt_centerpoint.errors import UserError

# Inclusive range of spconv versions whose CPU bugs these patches work around.
KNOWN_BAD_MIN = (2, 3, 0)
KNOWN_BAD_MAX = (2, 3, 8)

PATCH_NAMES = ("scatter_add", "stream", "bias_act")

_INSTALL_HINT = (
    "spconv is not installed: install the 'cpu' extra (pip install 'trt-centerpoint[cpu]') "
    "or, on a CUDA 12 machine, the 'cu120' extra (pip install 'trt-centerpoint[cu120]')"
)

_lock = threading.Lock()
_status: dict[str, bool] = {name: False for name in PATCH_NAMES}
# (object, attribute name, original value) for every attribute we replaced, so tests can revert.
_originals: list[tuple[Any, str, Any]] = []


def _parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^\s*(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def spconv_version_is_known_bad(version: str) -> bool:
    """True if ``version`` (e.g. ``"2.3.8"``) is in the guarded range ``[2.3.0, 2.3.8]``."""
    parsed = _parse_version(version)
    return parsed is not None and KNOWN_BAD_MIN <= parsed <= KNOWN_BAD_MAX


def _import_spconv_pytorch():
    try:
        import spconv
        import spconv.pytorch as spconv_pytorch
    except ImportError as exc:
        raise UserError(_INSTALL_HINT) from exc
    return spconv, spconv_pytorch


# --- patch 1: race-free CPU scatter-add ----------------------------------------------------------------


class _SpconvOpsCpuScatterFix:
    """Stands in for ``SpconvOps`` inside ``spconv.pytorch.ops``; only ``scatter_add_cpu`` differs.

    Works around spconv 2.3.8's ``SpconvOps.scatter_add_cpu``, which races when torch uses more than
    one thread (off by up to ~7 on one SparseConv3d, non-repeatable backbone outputs). It computes
    ``out[inds[i]] += inp[i]`` for ``i < len(inds)``; ``index_add_`` does the same deterministically.
    """

    def __init__(self, original: Any) -> None:
        self._original = original

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def scatter_add_cpu(self, out, inp, inds) -> None:
        if out.device != -1 or inp.device != -1 or inds.device != -1:  # not host memory
            self._original.scatter_add_cpu(out, inp, inds)
            return
        count = inds.dim(0)
        if count == 0:
            return
        # numpy_view() shares memory with the tv.Tensor (which itself wraps a torch tensor).
        out_t = torch.from_numpy(out.numpy_view())
        inp_t = torch.from_numpy(inp.numpy_view())[:count]
        # int64: torch's CPU index_add_ is several times slower with int32 indices.
        inds_t = torch.from_numpy(inds.numpy_view()).long()
        out_t.index_add_(0, inds_t, inp_t)


def _apply_scatter_patch(ops) -> bool:
    if isinstance(ops.SpconvOps, _SpconvOpsCpuScatterFix):
        return True
    if not hasattr(ops.SpconvOps, "scatter_add_cpu"):
        return False
    # In CUDA builds CPU convs go through the compiled ConvGemmOps, not the Python loop we patch.
    if getattr(ops, "SPCONV_CPP_GEMM", False) and getattr(ops, "GEMM_CPP", None) is not None:
        return False
    _originals.append((ops, "SpconvOps", ops.SpconvOps))
    ops.SpconvOps = _SpconvOpsCpuScatterFix(ops.SpconvOps)
    return True


# --- patch 2: no CUDA stream lookup on a CPU-only torch -------------------------------------------------


def _apply_stream_patch(ops) -> bool:
    original = getattr(ops, "get_current_stream", None)
    if original is None:
        return False
    if getattr(original, "_trt_centerpoint_fix", False):
        return True

    def get_current_stream():
        """Works around spconv 2.3.8 ``indice_conv_backward`` fetching the CUDA stream even for CPU
        tensors (``Torch not compiled with CUDA enabled``). Without CUDA there is no stream to use,
        and the CPU code path ignores it: return 0. With CUDA, unchanged."""
        if not torch.cuda.is_available():
            return 0
        return original()

    get_current_stream._trt_centerpoint_fix = True
    _originals.append((ops, "get_current_stream", original))
    ops.get_current_stream = get_current_stream
    return True


# --- patch 3: bias / fused activation outside the kernel on CPU ----------------------------------------


def _apply_bias_act_patch(conv_module) -> bool:
    base = getattr(conv_module, "SparseConvolutionBase", None)
    apply_act = getattr(conv_module, "_apply_act", None)
    original = getattr(base, "_conv_forward", None) if base is not None else None
    if original is None or apply_act is None:
        return False
    if getattr(original, "_trt_centerpoint_fix", False):
        return True
    signature = inspect.signature(original)
    if not {"training", "input", "bias", "add_input", "act_type"} <= set(signature.parameters):
        return False
    no_act = signature.parameters["act_type"].default

    def _conv_forward(self, *args, **kwargs):
        """Works around spconv 2.3.8 asserting ``cpu don't support act and bias`` when an eval-mode
        conv hands its bias / ``act_type`` to the CPU kernel. On CPU we call the kernel without them
        and then do ``act(x + bias)`` (what the CUDA epilogue computes), followed by spconv's own
        ``add_input`` step ``self.act(x + add_input)``. Train mode, conv1x1, int8 and CUDA: unchanged."""
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arg = bound.arguments
        inp = arg["input"]
        bias, act_type, add_input = arg["bias"], arg["act_type"], arg["add_input"]
        if (
            arg["training"]
            or inp.features.device.type != "cpu"
            or getattr(self, "conv1x1", False)
            or getattr(inp, "is_quantized", False)
            or (bias is None and act_type == no_act)
        ):
            return original(*bound.args, **bound.kwargs)
        arg["bias"], arg["act_type"], arg["add_input"] = None, no_act, None
        out = original(*bound.args, **bound.kwargs)
        features = out.features
        if bias is not None:
            features = features + bias
        features = apply_act(features, act_type, arg.get("act_alpha", 0.0), arg.get("act_beta", 0.0))
        if add_input is not None:
            features = apply_act(features + add_input.features, self.act_type, self.act_alpha, self.act_beta)
        return out.replace_feature(features)

    _conv_forward._trt_centerpoint_fix = True
    _originals.append((base, "_conv_forward", original))
    base._conv_forward = _conv_forward
    return True


# --- public API -----------------------------------------------------------------------------------------


def apply_spconv_cpu_fixes() -> dict[str, bool]:
    """Apply the CPU workarounds (idempotent, thread-safe) and return which are active.

    Keys: ``scatter_add``, ``stream``, ``bias_act``. All False when spconv's version is outside
    ``[2.3.0, 2.3.8]``. Raises ``UserError`` if spconv is not installed.
    """
    spconv, _ = _import_spconv_pytorch()
    from spconv.pytorch import conv as conv_module
    from spconv.pytorch import ops

    with _lock:
        if spconv_version_is_known_bad(getattr(spconv, "__version__", "")):
            _status["scatter_add"] = _apply_scatter_patch(ops)
            _status["stream"] = _apply_stream_patch(ops)
            _status["bias_act"] = _apply_bias_act_patch(conv_module)
        return dict(_status)


def spconv_fix_status() -> dict[str, bool]:
    """Which workarounds are active now (does not import spconv or apply anything)."""
    with _lock:
        return dict(_status)


def revert_spconv_cpu_fixes() -> None:
    """Undo every patch (for tests that demonstrate the bugs); ``apply_spconv_cpu_fixes`` re-applies."""
    with _lock:
        while _originals:
            owner, name, original = _originals.pop()
            setattr(owner, name, original)
        for name in PATCH_NAMES:
            _status[name] = False


def spconv_version() -> str:
    """The installed spconv version, for manifests ("unknown" when it does not say)."""
    spconv, _ = _import_spconv_pytorch()
    return str(getattr(spconv, "__version__", "unknown"))


def import_spconv():
    """Return ``spconv.pytorch`` with the CPU fixes applied; ``UserError`` if spconv is missing."""
    _, spconv_pytorch = _import_spconv_pytorch()
    apply_spconv_cpu_fixes()
    return spconv_pytorch
