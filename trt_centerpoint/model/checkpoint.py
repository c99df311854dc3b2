"""det3d / CUDA-CenterPoint, OpenPCDet and MMDetection3D checkpoint IO.

Checkpoints load as det3d writes them: `{"state_dict": ..., "meta": ..., "optimizer": ...}` or a bare
state_dict, keys `backbone.*`, `neck.*`, `bbox_head.*` (a DDP `module.` prefix is stripped); OpenPCDet's
`{"model_state": ...}` and MMDetection3D's `{"state_dict", "meta"}` load as they are when the config's `source`
names that project (`model.sources` maps their keys; a checkpoint of another project is one error naming it).
Sparse conv weights in spconv 1.x layout [kz, ky, kx, in, out] are detected by shape and permuted to spconv 2.x
[out, kz, ky, kx, in]. Loading always uses `weights_only=True`: a file that needs arbitrary pickled code
is refused rather than executed.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from trt_centerpoint.config import ModelConfig, bundled_names, load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_path
from trt_centerpoint.model.sources import SOURCE_NAMES, detect_source, from_det3d, sparse_conv_prefixes, to_det3d
from trt_centerpoint.model.trained_geometry import geometry_mismatch

SPCONV1_TO_2 = (4, 0, 1, 2, 3)  # [kz, ky, kx, in, out] -> [out, kz, ky, kx, in]
MAX_LISTED_KEYS = 5


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file safely and return its top-level mapping (`{"state_dict": ...}` form)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: refused: the checkpoint needs arbitrary pickled code to load ({found.group(1)}); "
                "only tensors and plain containers are loaded (torch.load weights_only=True)"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (unpickling failed)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {_torch_load_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict or a dict with 'state_dict', got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        ckpt = obj
    elif "model_state" in obj and isinstance(obj["model_state"], dict):  # OpenPCDet
        ckpt = {**obj, "state_dict": obj["model_state"]}
    elif "model" in obj and isinstance(obj["model"], dict):  # some trainers use "model"
        ckpt = {**obj, "state_dict": obj["model"]}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        ckpt = {"state_dict": obj}
    else:
        raise CheckpointError(
            f"{path}: no 'state_dict' in the checkpoint (top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    _require_finite(ckpt["state_dict"], path)
    return ckpt


def _torch_load_reason(exc: BaseException) -> str:
    """torch.load's error in words: its C++ "[enforce fail at inline_container.cc:...]" lines mean the file is
    a zip archive that is not a PyTorch checkpoint (torch.save writes one top-level folder of tensors)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "inline_container" in first or "PytorchStreamReader" in first:
        return "a zip archive without PyTorch's checkpoint layout (not written by torch.save)"
    return first


def _require_finite(state: dict, path: Path) -> None:
    """A weight with NaN / Inf makes every output NaN and detections silently vanish: refuse it at load, naming
    the tensors (the first few, and how many)."""
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        listed = ", ".join(bad[:MAX_LISTED_KEYS]) + (f" (+{len(bad) - MAX_LISTED_KEYS} more)" if len(bad) >
                                                      MAX_LISTED_KEYS else "")
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values: {listed}")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def convert_spconv1_weights(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str
) -> tuple[dict, int]:
    """Permute 5-D sparse conv weights stored in spconv 1.x layout; returns (state, number permuted).

    A weight counts as spconv 1.x when its shape is the 2.x shape permuted back. Mixed layouts in one
    checkpoint are refused: that file was edited by hand or assembled from two sources.
    """
    out, old, new = dict(state), [], []
    for key, value in state.items():
        want = expected.get(key)
        if want is None or value.dim() != 5 or tuple(value.shape) == tuple(want):
            if want is not None and value.dim() == 5:
                new.append(key)
            continue
        permuted = value.permute(*SPCONV1_TO_2)
        if tuple(permuted.shape) == tuple(want):
            out[key] = permuted.contiguous()
            old.append(key)
    if old and new:
        raise CheckpointError(
            f"{source}: mixed sparse weight layouts: {len(old)} in spconv 1.x [k, k, k, in, out] "
            f"(e.g. {old[0]}) and {len(new)} in spconv 2.x [out, k, k, k, in] (e.g. {new[0]})"
        )
    return out, len(old)


def _list(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Check keys and shapes against the model (one error listing all the problems); convert layouts/dtypes."""
    expected_tensors = model.state_dict()
    expected = {k: v.shape for k, v in expected_tensors.items()}
    state = _strip_prefix(state)
    state, _ = convert_spconv1_weights(state, expected, source)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(state[k].shape)} (model {list(expected[k])})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_list(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with other shapes: {_list(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the model ({model.cfg.name}): " + "; ".join(problems))
    return {k: state[k].to(expected_tensors[k].dtype) for k in expected}


def _looks_like(state: dict[str, torch.Tensor], source: str, model_class: type) -> str | None:
    """The bundled config of `source` whose model (`model_class(cfg)`) the state dict (det3d keys) fits
    exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in bundled_names():
        cfg = load_config(name)
        if cfg.source != source:
            continue
        with torch.device("meta"):
            expected = model_class(cfg).state_dict()
        if set(expected) == set(shapes) and all(
            shapes[k] in (tuple(v.shape), tuple(v.permute(*SPCONV1_TO_2).shape) if v.dim() == 5 else None)
            for k, v in expected.items()
        ):
            return name
    return None


def source_state_dict(model: nn.Module, raw: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's raw state dict as `model`'s (det3d) keys: refuses one of another project than the
    config's `source` in one line naming it and, where one fits, the bundled config to use."""
    cfg: ModelConfig = model.cfg
    found = detect_source(raw) or cfg.source
    if found != cfg.source:
        mapped = to_det3d(raw, found, cfg)
        fits = _looks_like(mapped, found, type(model))
        hint = (f"it fits config {fits} (--config {fits})" if fits else
                f"no bundled config of that project fits it: give a config with source: {found}")
        raise CheckpointError(
            f"{source}: a checkpoint of {SOURCE_NAMES[found]} (keys such as {next(iter(raw))}) given with config "
            f"{cfg.name}, which takes {SOURCE_NAMES[cfg.source]} checkpoints; {hint}"
        )
    return to_det3d(raw, found, cfg)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint of the config's source project into `model`; returns the checkpoint's `meta` (or {})."""
    ckpt = read_checkpoint(path)
    raw = source_state_dict(model, ckpt["state_dict"], str(path))
    try:
        state = match_state_dict(model, raw, str(path))
    except CheckpointError as exc:
        fits = _looks_like(_strip_prefix(raw), model.cfg.source, type(model))
        raise CheckpointError(f"{exc}; it fits config {fits} (--config {fits})" if fits else str(exc)) from None
    meta = ckpt.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    mismatch = geometry_mismatch(meta, model.cfg)  # same keys and shapes, another voxel grid: refused by name
    if mismatch:
        raise CheckpointError(f"{path}: {mismatch}")
    model.load_state_dict(state)
    return meta


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: no half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict | None = None, half: bool = False) -> None:
    """Save in the file layout and key names of the config's source project, so that project's own code (and
    `load_checkpoint` with that config) loads it; `half` stores float tensors as FP16 (smaller file).

    det3d: `{"state_dict", "meta"}`. OpenPCDet: `{"epoch", "it", "model_state", "optimizer_state", "version"}`
    (plus our "meta"), a legacy torch pickle as OpenPCDet writes it. MMDetection3D: `{"state_dict", "meta"}` whose
    state dict carries mmengine's `_metadata` with version 2 for every sparse conv (MMDetection3D permutes
    kernels from the spconv 1.x layout when that tag is missing)."""
    cfg = getattr(model, "cfg", None)
    source = cfg.source if cfg is not None else "det3d"
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    meta = dict(meta or {})
    if source == "det3d":
        atomic_torch_save({"state_dict": state, "meta": meta}, path)
        return
    state = from_det3d(state, source, cfg)
    if source == "openpcdet":
        obj = {"epoch": 0, "it": 0, "model_state": state, "optimizer_state": None, "version": None, "meta": meta}
        with atomic_path(path) as tmp:
            torch.save(obj, tmp, _use_new_zipfile_serialization=False)
        return
    state._metadata = OrderedDict((prefix, {"version": 2}) for prefix in sparse_conv_prefixes(state))
    atomic_torch_save({"state_dict": state, "meta": meta}, path)
