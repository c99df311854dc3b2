"""Per-layer quantization sensitivity: which layers cost accuracy in INT8, and which to leave in float.

One calibration with every quantizable layer quantized (no skip list), then for each quantizable layer
(its input and weight quantizers together; ``QuantAdd`` / ``QuantConcat`` count as layers):

- *only this*: that layer quantized, every other quantizer disabled;
- *all but this*: everything quantized except that layer.

The calibrated amax values are reused throughout; layers are switched by enabling / disabling their
``TensorQuantizer``s, never recalibrated. The metric is

- ``mAP`` on labeled frames (``--data``; ``--eval-frames`` caps them, spread evenly), or
- output *fidelity* vs the float model on the calibration frames: the cosine similarity of
  ``sigmoid(hm)`` over all tasks (the metric; higher is better) and the SNR in dB of all head outputs.
  The float reference is the BN-folded model with every quantizer disabled (folding changes outputs by
  ~1e-6 relative, see ``fuse_bn``).

Layers are ranked by ``drop`` = reference - only-this metric (most sensitive first), ties broken by
``recovery`` = all-but-this metric - all-quantized metric, then by module order. With a ``budget`` the
greedy skip list adds layers by descending recovery until the metric with those layers in float is
within the budget of the reference (mAP: ``ref - mAP <= B``; fidelity: ``1 - cosine <= B``), each step
evaluated; a backward pass then drops every layer whose removal keeps the budget met, so no single
layer of the list is superfluous. The list (exact module paths) is ``"skip"`` in ``sensitivity.json``,
read by ``trt-centerpoint ptq --skip-from``.

Everything is deterministic for given inputs and seed (frames chosen by even spacing over the sorted
files), so two runs write the same ``sensitivity.json``; no timing or output path is recorded in it.

Speed: the backbone output (BEV) is cached for the two backbone states that recur (all backbone
quantizers off, all on): every neck / head layer then runs only the 2D part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers, quiet_library_logs
from trt_centerpoint.config import MODEL_NEUTRAL, ModelConfig, config_to_dict, load_config
from trt_centerpoint.data.dataset import LabeledFrames
from trt_centerpoint.data.sampling import evenly_spaced, evenly_spaced_indices
from trt_centerpoint.data.source import frame_stem
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.fileio import atomic_write_json, atomic_write_text
from trt_centerpoint.model.centerpoint import load_model
from trt_centerpoint.model.decode import Detections, decode
from trt_centerpoint.quant.calibrate import (
    CalibrationError,
    calibrate,
    iter_points,
    select_calibration_files,
)
from trt_centerpoint.quant.ptq import (
    is_quantized_checkpoint,
    library_versions,
    load_quantized_model,
    prepare_model,
    read_ptq_meta,
)
from trt_centerpoint.report.plots import bar_chart
from trt_centerpoint.report.table import format_table

FORMAT = "trt_centerpoint.sensitivity"
FORMAT_VERSION = 1
SNR_CAP_DB = 200.0  # SNR of an exact match (noise 0) is reported as this, so JSON stays numeric
BEV_CACHE_LIMIT_BYTES = 1 << 29  # 512 MiB per cached backbone state
DEFAULT_NUM_FRAMES = 16


class SensitivityError(UserError):
    """A sensitivity run or its JSON could not be used."""


# --- layers and their quantizers -------------------------------------------------------------------


def layer_quantizers(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """{layer path: [(quantizer path, TensorQuantizer), ...]} in module order: a quantizer belongs to the
    module that holds it (``layer._input_quantizer``, ``layer._weight_quantizer``)."""
    groups: dict[str, list] = {}
    for name, q in iter_quantizers(model):
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        groups.setdefault(layer, []).append((name, q))
    return groups


def set_quantized(groups: dict[str, list], enabled: Iterable[str]) -> None:
    """Enable the quantizers of the layers in `enabled`, disable all others (amax kept)."""
    enabled = set(enabled)
    unknown = enabled - set(groups)
    if unknown:
        raise SensitivityError(f"unknown layer(s): {', '.join(sorted(unknown))}")
    with quiet_library_logs():
        for layer, quantizers in groups.items():
            for _, q in quantizers:
                if layer in enabled:
                    q.enable()
                else:
                    q.disable()


# --- metrics -----------------------------------------------------------------------------------------


@dataclass
class _Frame:
    key: str
    features: torch.Tensor | None  # None: no voxel in range
    coords: torch.Tensor | None


def _voxelize(model: nn.Module, key: str, points) -> _Frame:
    voxels = model.voxelize([torch.as_tensor(points, dtype=torch.float32)])
    if voxels.num_voxels == 0:
        return _Frame(key, None, None)
    return _Frame(key, voxels.features, voxels.coords)


class _Runner:
    """Runs the model on pre-voxelized frames; caches the BEV for the all-off / all-on backbone states."""

    def __init__(self, model: nn.Module, groups: dict[str, list], frames: list[_Frame]):
        self.model = model
        self.frames = frames
        self.backbone_quantizers = [q for layer, qs in groups.items() if layer.startswith("backbone.")
                                    for _, q in qs]
        self.cache: dict[bool, list] = {}

    def _backbone_state(self) -> bool | None:
        flags = {not q._disabled for q in self.backbone_quantizers}
        return flags.pop() if len(flags) == 1 else (None if flags else False)

    @torch.no_grad()
    def outputs(self) -> Iterable[tuple[_Frame, list[dict[str, torch.Tensor]] | None]]:
        state = self._backbone_state()
        cached = self.cache.get(state) if state is not None else None
        fresh = [] if state is not None and cached is None else None
        nbytes = 0
        for i, frame in enumerate(self.frames):
            if frame.features is None:
                if fresh is not None:
                    fresh.append(None)
                yield frame, None
                continue
            if cached is not None:
                bev = cached[i]
            else:
                bev = self.model.backbone(frame.features, frame.coords, 1)
                if fresh is not None:
                    nbytes += bev.numel() * bev.element_size()
                    if nbytes > BEV_CACHE_LIMIT_BYTES:
                        fresh = None
                    else:
                        fresh.append(bev)
            yield frame, self.model.head_from_bev(bev)
        if fresh is not None:
            self.cache[state] = fresh


def _head_vectors(preds: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    hm = torch.cat([torch.sigmoid(task["hm"]).reshape(-1) for task in preds])
    everything = torch.cat([task[k].reshape(-1) for task in preds for k in sorted(task)])
    return hm.double(), everything.double()


class _Fidelity:
    """Accumulates heatmap cosine and all-output SNR of one configuration against stored references."""

    def __init__(self):
        self.dot = self.ref_sq = self.out_sq = self.signal = self.noise = 0.0

    def add(self, preds: list[dict[str, torch.Tensor]], ref: tuple[torch.Tensor, torch.Tensor]) -> None:
        hm, allv = _head_vectors(preds)
        ref_hm, ref_all = ref
        self.dot += float(hm @ ref_hm)
        self.ref_sq += float(ref_hm @ ref_hm)
        self.out_sq += float(hm @ hm)
        self.signal += float(ref_all @ ref_all)
        self.noise += float(((allv - ref_all) ** 2).sum())

    def result(self) -> dict:
        cosine = self.dot / math.sqrt(self.ref_sq * self.out_sq) if self.ref_sq > 0 and self.out_sq > 0 else 0.0
        cosine = min(cosine, 1.0)
        if self.noise <= 0:
            snr = SNR_CAP_DB
        elif self.signal <= 0:
            snr = -SNR_CAP_DB
        else:
            snr = min(SNR_CAP_DB, 10.0 * math.log10(self.signal / self.noise))
        return {"cosine": cosine, "snr_db": snr}


class FidelityMetric:
    """Cosine of sigmoid(hm) (the metric) and SNR (dB) of all head outputs, vs the float reference."""

    name = "cosine"
    description = "heatmap cosine vs FP32 (sigmoid(hm), all tasks) on the calibration frames; SNR of all head outputs"

    def __init__(self, runner: _Runner, groups: dict[str, list]):
        self.runner = runner
        set_quantized(groups, ())
        self.reference = [None if p is None else _head_vectors(p) for _, p in runner.outputs()]
        if all(r is None for r in self.reference):
            raise SensitivityError("no frame had a voxel in the model's range: nothing to compare")

    def reference_value(self) -> dict:
        return {"metric": 1.0, "cosine": 1.0, "snr_db": SNR_CAP_DB}

    def loss(self, value: float, reference: float) -> float:
        return 1.0 - value

    def __call__(self) -> dict:
        acc = _Fidelity()
        for (_, preds), ref in zip(self.runner.outputs(), self.reference):
            if ref is not None:
                acc.add(preds, ref)
        fid = acc.result()
        return {"metric": fid["cosine"], **fid}


class MapMetric:
    """nuScenes-style mAP of the decoded detections on labeled frames (the metric), with the heatmap
    cosine / SNR vs FP32 on the same frames as details (they break ties when mAP does not move)."""

    name = "mAP"
    description = "nuScenes-style mAP on labeled frames (details: heatmap cosine / SNR vs FP32 on them)"

    def __init__(self, runner: _Runner, groups: dict[str, list], cfg: ModelConfig, ground_truth: dict):
        self.runner, self.cfg, self.ground_truth = runner, cfg, ground_truth
        set_quantized(groups, ())
        self.reference = None
        self._reference = self()

    def reference_value(self) -> dict:
        return dict(self._reference)

    def loss(self, value: float, reference: float) -> float:
        return reference - value

    def __call__(self) -> dict:
        predictions = {}
        refs = [] if self.reference is None else None
        acc = _Fidelity()
        for i, (frame, preds) in enumerate(self.runner.outputs()):
            if refs is not None:
                refs.append(None if preds is None else _head_vectors(preds))
            if preds is not None:
                acc.add(preds, refs[i] if refs is not None else self.reference[i])
            dets = Detections.empty(self.cfg.class_names) if preds is None else decode(preds, self.cfg)[0]
            predictions[frame.key] = dets.to_json_list()
        if refs is not None:
            self.reference = refs
        mean_ap = float(evaluate(predictions, self.ground_truth, self.cfg.class_names,
                                    class_range=self.cfg.eval.class_range)["mAP"])
        return {"metric": mean_ap, "mAP": mean_ap, **acc.result()}


# --- the analysis ------------------------------------------------------------------------------------


def analyze(model: nn.Module, metric_factory: Callable[[_Runner, dict], object], frames: list[_Frame],
            budget: float | None = None, progress: bool = True) -> dict:
    """Evaluate every layer alone and every layer left out; rank; propose a skip list for `budget`.

    `model` is calibrated (every quantizable layer quantized). Returns the result dict (without
    run-level metadata); the model is left with every quantizer enabled.
    """
    groups = layer_quantizers(model)
    if not groups:
        raise SensitivityError("the model has no quantizers")
    missing = [n for qs in groups.values() for n, q in qs if q.amax is None]
    if missing:
        raise SensitivityError(f"{len(missing)} quantizer(s) have no amax (calibrate first), e.g. {missing[0]}")
    layers = list(groups)
    runner = _Runner(model, groups, frames)
    metric = metric_factory(runner, groups)
    reference = metric.reference_value()
    ref = reference["metric"]

    def run(enabled) -> dict:
        set_quantized(groups, enabled)
        return metric()

    try:
        all_quantized = run(layers)
        bar = tqdm(total=2 * len(layers), desc="sensitivity", unit="eval", disable=not progress)
        only, all_but = {}, {}
        for layer in layers:
            only[layer] = run([layer])
            bar.update()
        for layer in layers:
            all_but[layer] = run([other for other in layers if other != layer])
            bar.update()
        bar.close()
        rows = []
        for index, layer in enumerate(layers):
            drop = ref - only[layer]["metric"]
            recovery = all_but[layer]["metric"] - all_quantized["metric"]
            rows.append({
                "name": layer,
                "kind": type(model.get_submodule(layer)).__name__,
                "quantizers": [n.rsplit(".", 1)[1] for n, _ in groups[layer]],
                "only_this": only[layer]["metric"],
                "all_but_this": all_but[layer]["metric"],
                "drop": drop,
                "recovery": recovery,
                "only_this_detail": only[layer],
                "all_but_this_detail": all_but[layer],
                "_index": index,
            })
        # ties (e.g. mAP that does not move) fall back to the heatmap cosine, then to module order
        rows.sort(key=lambda r: (-r["drop"], -r["recovery"], r["only_this_detail"].get("cosine", 0.0),
                                 r["_index"]))
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
            del row["_index"]
        proposal = None
        if budget is not None:
            proposal = propose_skip(layers, rows, run, metric, ref, all_quantized["metric"], budget)
    finally:
        set_quantized(groups, layers)
    return {
        "metric": metric.name,
        "metric_description": metric.description,
        "reference": reference,
        "all_quantized": all_quantized,
        "layers": [{"rank": r.pop("rank"), **r} for r in rows],
        "budget": proposal,
        "skip": proposal["skip"] if proposal else None,
    }


def propose_skip(layers: list[str], rows: list[dict], run, metric, ref: float, all_quantized: float,
                 budget: float) -> dict:
    """Greedy skip list by descending recovery until loss <= budget, then drop unneeded layers."""
    if budget < 0:
        raise SensitivityError(f"--budget must be >= 0, got {budget}")
    order = [r["name"] for r in sorted(rows, key=lambda r: (-r["recovery"], r["rank"]))]
    steps = [{"action": "start", "layer": None, "skip": [], "metric": all_quantized,
              "loss": metric.loss(all_quantized, ref)}]
    skip: list[str] = []
    current = all_quantized

    def meets(value: float) -> bool:
        return metric.loss(value, ref) <= budget + 1e-12

    for layer in order:
        if meets(current):
            break
        skip.append(layer)
        current = run([x for x in layers if x not in skip])["metric"]
        steps.append({"action": "add", "layer": layer, "skip": list(skip), "metric": current,
                      "loss": metric.loss(current, ref)})
    if meets(current):
        for layer in list(reversed(skip[:-1])):  # the last one added was needed to reach the budget
            trial = [x for x in skip if x != layer]
            value = run([x for x in layers if x not in trial])["metric"]
            if meets(value):
                skip, current = trial, value
                steps.append({"action": "remove", "layer": layer, "skip": list(skip), "metric": value,
                              "loss": metric.loss(value, ref)})
    ordered = [x for x in layers if x in skip]
    criterion = "1 - cosine <= budget" if metric.name == "cosine" else "FP32 mAP - mAP <= budget"
    return {"value": budget, "criterion": criterion,
            "met": meets(current), "metric": current, "loss": metric.loss(current, ref), "skip": ordered,
            "steps": steps}


# --- end to end --------------------------------------------------------------------------------------


def calibrated_model(cfg: ModelConfig, checkpoint: str | Path, files: list[Path], method: str = "mse",
                     bn_fused: bool = True, progress: bool = True) -> tuple[nn.Module, object]:
    """Float checkpoint -> (fold BN) -> every quantizable layer quantized -> calibrated on `files`."""
    model = load_model(cfg, checkpoint)
    model, _ = prepare_model(cfg, skip=(), input_calib="max" if method == "max" else "histogram",
                             bn_fused=bn_fused, model=model)
    result = calibrate(model, iter_points(files, cfg.voxel.num_point_features), method=method,
                       total=len(files), progress=progress)
    return model, result


def fidelity_frames(model: nn.Module, files: list[Path], num_features: int) -> list[_Frame]:
    return [_voxelize(model, frame_stem(f), p) for f, p in zip(files, iter_points(files, num_features))]


def labeled_frames(model: nn.Module, data: str | Path, cfg: ModelConfig, eval_frames: int | None):
    dataset = LabeledFrames(data, cfg.voxel.num_point_features)
    n = len(dataset)
    if n == 0:
        raise SensitivityError(f"{data}: no labeled frames")
    if eval_frames is not None and eval_frames < 1:
        raise SensitivityError(f"--eval-frames must be >= 1, got {eval_frames}")
    picks = evenly_spaced_indices(n, eval_frames)
    frames = []
    for i in picks:
        stem, points, _, _ = dataset[i]
        frames.append(_voxelize(model, stem, points))
    truth = dataset.ground_truth()
    return frames, {f.key: truth[f.key] for f in frames}


def run_sensitivity(config: str | Path | ModelConfig, checkpoint: str | Path, calib_data: str | Path,
                    out: str | Path, data: str | Path | None = None, num_frames: int | None = DEFAULT_NUM_FRAMES,
                    eval_frames: int | None = None, budget: float | None = None, method: str = "mse",
                    seed: int = 0, progress: bool = True, plot: bool = True) -> dict:
    """`trt-centerpoint sensitivity`: write sensitivity.json / .md / .png into `out`; returns the JSON dict."""
    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    torch.manual_seed(seed)
    np.random.seed(seed)
    files = select_calibration_files(calib_data, num_frames)
    quantized = is_quantized_checkpoint(Path(checkpoint))
    if quantized:  # a `ptq` / `qat` file: rank its own (calibrated or trained) ranges, e.g. what stays float after QAT
        model, calib, ptq_meta = load_quantized_model(checkpoint, expect_config=cfg), None, read_ptq_meta(checkpoint)
    else:
        model, calib = calibrated_model(cfg, checkpoint, files, method=method, progress=progress)
    if data is not None:
        frames, truth = labeled_frames(model, data, cfg, eval_frames)

        def factory(runner, groups):
            return MapMetric(runner, groups, cfg, truth)

        used = [f.key for f in frames]
    else:
        eval_files = evenly_spaced(files, eval_frames)
        frames = fidelity_frames(model, eval_files, cfg.voxel.num_point_features)
        factory = FidelityMetric
        used = [f.key for f in frames]
    result = analyze(model, factory, frames, budget=budget, progress=progress)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(cfg),
        "checkpoint": str(checkpoint),
        "method": ({"ranges_from": str(checkpoint), "stage": ptq_meta.get("stage", "ptq"), "skip": ptq_meta.get("skip")}
                   if quantized else
                   {"amax_method": method, "activation_calibrator": "max" if method == "max" else "histogram",
                    "bn_fused": True, "calibrated_with": "every quantizable layer quantized (no skip list)"}),
        "seed": seed,
        "calib_data": str(calib_data),
        "calib_frames": calib.frames_used if calib else 0,
        "calib_frames_empty": calib.frames_empty if calib else 0,
        "eval_data": str(data) if data is not None else str(calib_data),
        "frames": len(frames),
        "frame_ids": used,
        "versions": {k: v for k, v in library_versions().items() if k != "python"},
        **result,
    }
    write_outputs(doc, out, plot=plot)
    return doc


# --- outputs ----------------------------------------------------------------------------------------


def markdown_report(doc: dict) -> str:
    name = doc["metric"]
    ref, allq = doc["reference"]["metric"], doc["all_quantized"]["metric"]
    fidelity = name == "cosine"
    if fidelity:  # cosines sit next to 1: show 1 - cosine in scientific notation
        headers = ["rank", "layer", "kind", "1 - cos (only this)", "1 - cos (all but this)", "drop", "recovery",
                   "SNR dB (only this)", "SNR dB (all but this)"]
        rows = [[r["rank"], f"`{r['name']}`", r["kind"], f"{1 - r['only_this']:.3e}", f"{1 - r['all_but_this']:.3e}",
                 f"{r['drop']:.3e}", f"{r['recovery']:.3e}", f"{r['only_this_detail']['snr_db']:.2f}",
                 f"{r['all_but_this_detail']['snr_db']:.2f}"] for r in doc["layers"]]
    else:
        headers = ["rank", "layer", "kind", f"{name} (only this)", f"{name} (all but this)", "drop", "recovery",
                   "1 - cos (only this)", "SNR dB (only this)"]
        rows = [[r["rank"], f"`{r['name']}`", r["kind"], f"{r['only_this']:.4f}", f"{r['all_but_this']:.4f}",
                 f"{r['drop']:+.4f}", f"{r['recovery']:+.4f}", f"{1 - r['only_this_detail']['cosine']:.3e}",
                 f"{r['only_this_detail']['snr_db']:.2f}"] for r in doc["layers"]]
    lines = [
        f"# Quantization sensitivity: {doc['config']['name']}",
        "",
        (f"Metric: {doc['metric_description']}; {doc['frames']} frames; "
         + (f"amax {doc['method']['amax_method']} from {doc['calib_frames']} calibration frames"
            if "amax_method" in doc["method"] else
            f"the ranges of {doc['method']['ranges_from']} ({doc['method']['stage']}; already float there: "
            f"{', '.join(doc['method']['skip'] or []) or 'nothing'})")
         + f"; seed {doc['seed']}."),
        "",
        f"- FP32 reference: {name} {ref:.6f}",
        f"- all layers quantized: {name} {allq:.6f}"
        + (f" (1 - cos {1 - allq:.3e}, SNR {doc['all_quantized']['snr_db']:.2f} dB)" if fidelity else
           f" (drop {ref - allq:+.4f}; 1 - cos {1 - doc['all_quantized']['cosine']:.3e}, "
           f"SNR {doc['all_quantized']['snr_db']:.2f} dB)"),
        "- *drop* = reference - only-this; *recovery* = all-but-this - all-quantized. Most sensitive first.",
    ]
    if doc.get("budget"):
        b = doc["budget"]
        lines.append(f"- budget {b['value']:g} ({b['criterion']}): {'met' if b['met'] else 'NOT met'} with "
                     f"{len(b['skip'])} layer(s) in float ({name} {b['metric']:.6f}, loss {b['loss']:.3e}): "
                     + (", ".join(f"`{s}`" for s in b["skip"]) or "nothing to skip"))
    lines += ["", format_table(headers, rows, markdown=True), ""]
    return "\n".join(lines)


def write_outputs(doc: dict, out: str | Path, plot: bool = True) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "sensitivity.json", "md": out / "sensitivity.md"}
    atomic_write_json(paths["json"], doc)
    atomic_write_text(paths["md"], markdown_report(doc))
    if plot:
        layers = doc["layers"]
        paths["png"] = bar_chart(
            out / "sensitivity.png", [r["name"] for r in layers],
            {"drop (only this quantized)": [r["drop"] for r in layers],
             "recovery (all but this)": [r["recovery"] for r in layers]},
            title=f"{doc['config']['name']}: per-layer INT8 sensitivity ({doc['metric']})",
            ylabel=f"{doc['metric']} change vs reference",
        )
    return paths


def read_skip_list(path: str | Path, expect_config: ModelConfig | None = None) -> list[str]:
    """The proposed skip list of a ``sensitivity.json`` (for ``ptq --skip-from``). With `expect_config`,
    a file made for another model (different config apart from name / description) is refused."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SensitivityError(f"{path}: cannot read sensitivity JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SensitivityError(f"{path}: not a sensitivity.json (make one with `trt-centerpoint sensitivity`)")
    if expect_config is not None:
        mine = config_to_dict(expect_config)
        theirs = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        diff = [k for k in mine if k not in MODEL_NEUTRAL and mine[k] != theirs.get(k)]
        if diff:
            raise SensitivityError(
                f"{path}: made for another model config than {expect_config.name} (differs in: {', '.join(diff)})"
            )
    skip = doc.get("skip")
    if skip is None:
        raise SensitivityError(f"{path}: has no proposed skip list: run `trt-centerpoint sensitivity --budget B`")
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise SensitivityError(f"{path}: 'skip' must be a list of layer paths")
    return list(skip)


__all__ = [
    "CalibrationError", "FidelityMetric", "MapMetric", "SensitivityError", "analyze", "calibrated_model",
    "fidelity_frames", "labeled_frames", "layer_quantizers", "markdown_report", "propose_skip", "read_skip_list",
    "run_sensitivity", "set_quantized", "write_outputs",
]
