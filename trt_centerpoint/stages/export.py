"""The `export` stage: checkpoint -> validated deployment files + `manifest.json`.

A float checkpoint gives `scn.fp16.onnx` + `rpn_head.fp32.onnx`. A quantized one (`trt-centerpoint ptq` /
`qat`) gives those (its float weights, BN folded, quantizers off) and the INT8 files `scn.int8.onnx`
(libspconv ranges), `scn.int8.qdq.onnx` (the same graph with Q/DQ) and `rpn_head.int8.onnx` (Q/DQ).

Order (nothing is written until every file passed its checks):
1. load config + checkpoint;
2. frames: from `--calib-data` (up to `max_frames`, evenly spread) for the output_bound statistics and
   for validation; without it, bounds fall back to the safe bound and validation uses synthetic frames;
3. fuse BN + ReLU, export scn, lint it, run it in the reference runner vs the PyTorch backbone;
4. export rpn_head (graphsurgeon passes), lint, checker + shape inference + ONNX Runtime vs PyTorch on
   the BEV maps of the same frames;
5. INT8 (quantized checkpoint): specs from the calibrated quantizers (`export.scn.quant`), scn.int8 lint +
   reference runner vs the PyTorch fake-quant backbone (layer by layer, then free running against the noise
   floor measured on the same frames: `export.validate.validate_scn_int8`); the Q/DQ form lint + executed
   bit-identically to scn.int8; rpn_head.int8 lint + ONNX Runtime vs the PyTorch fake-quant head; Polygraphy's
   verdict on both head files' validation outputs (no second run);
6. write every file atomically, then record the stage "export" in the build folder's `manifest.json`
   (`trt_centerpoint.manifest`: input hashes, parameters, output hashes, library versions; `extra` holds
   the pass log, the output_bound plan, validation figures and the frames used).

Steps 1-5 are `export_checkpoint` (an `ExportResult`, nothing written); step 6 is `record_export` for the
standalone command, and `build`'s own stage runner for a build.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trt_centerpoint.artifacts import (
    OPSETS,
    RPN_HEAD_FP32,
    RPN_HEAD_INT8,
    RPN_HEAD_INT8_FP16,
    SCN_FP16,
    SCN_INT8,
    SCN_INT8_QDQ,
)
from trt_centerpoint.config import ModelConfig, config_to_dict, load_config
from trt_centerpoint.data.sampling import evenly_spaced
from trt_centerpoint.data.source import list_frames, read_frame, source_sha256
from trt_centerpoint.data.synth.dataset import generate_frame, scene_for_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.compare import polygraphy_verdict
from trt_centerpoint.export.head.export import export_rpn_head, validate_rpn_head
from trt_centerpoint.export.head.int8 import export_rpn_head_int8, validate_rpn_head_int8
from trt_centerpoint.export.lint import lint_model
from trt_centerpoint.export.scn.fuse import fuse_backbone, fusion_summary
from trt_centerpoint.export.scn.output_bound import DEFAULT_MARGIN, observe_active_voxels, plan_output_bounds
from trt_centerpoint.export.scn.qdq import scn_to_qdq
from trt_centerpoint.export.scn.quant import precision_summary, scn_quant_specs
from trt_centerpoint.export.scn.walk import walk_backbone
from trt_centerpoint.export.scn.writer import SCN_INPUT, SCN_OUTPUT, export_scn
from trt_centerpoint.export.validate import ValidationError, validate_scn, validate_scn_int8
from trt_centerpoint.fileio import check_output_dir, ensure_dir, write_files_together
from trt_centerpoint.manifest import Manifest, file_sha256, json_sha256
from trt_centerpoint.quant.ptq import is_quantized_checkpoint, load_model_pair
from trt_centerpoint.runtime.scn_runner import OutputBoundWarning, ScnRunner

DEFAULT_MAX_FRAMES = 16
VALIDATION_FRAMES = 2  # the reference runner and PyTorch each run the backbone once per frame

STAGE = "export"

__all__ = ["DEFAULT_MAX_FRAMES", "STAGE", "ExportResult", "ExportedFile", "export_checkpoint", "export_key",
           "record_export", "run_export"]


@dataclass
class ExportedFile:
    """One deployment file, exported and checked, not yet written."""

    name: str  # its file name in the build folder (`trt_centerpoint.artifacts`)
    data: bytes
    format: str  # "onnx", "libspconv-scn" or "scn-qdq"
    precision: str
    validation: dict  # the figures of its checks
    passes: list | None = None  # its pass log; None: the manifest keeps none for this file
    info: dict = field(default_factory=dict)  # what a reader of the file needs: inputs, outputs, node paths...

    @property
    def opset(self) -> int:
        return OPSETS[self.name]

    def describe(self) -> dict:
        """The file's entry in the manifest's `artifacts`."""
        return {"format": self.format, "opset": self.opset, "precision": self.precision, **self.info}


@dataclass
class ExportResult:
    """Everything an export made and checked: the files and how they were made (for the manifest)."""

    checkpoint: Path
    quantized: bool
    files: list[ExportedFile]
    bound_plan: dict  # sparse conv path -> its planned output bound (`output_bound.plan_output_bounds`)
    bound_margin: float
    bounds_observed: bool  # False: the safe fallback (no --calib-data)
    calib_data: dict | None  # the folder and frames the bounds were observed on
    bound_override: int | None = None  # --output-bound: every layer

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    def file(self, name: str) -> ExportedFile:
        return next(f for f in self.files if f.name == name)

    def write(self, out: Path) -> None:
        """All files together or none (a full disk fails before any file appears); the manifest comes after."""
        write_files_together(out, {f.name: f.data for f in self.files})

    def extra(self) -> dict:
        """The stage's `extra` in the manifest (JSON)."""
        return {
            "checkpoint": str(self.checkpoint),
            "quantized": self.quantized,
            "calib_data": self.calib_data,
            "passes": {f.name: f.passes for f in self.files if f.passes is not None},
            "output_bounds": {"margin": self.bound_margin, "override": self.bound_override,
                              "source": ("override" if self.bound_override else "calib_data" if self.bounds_observed
                                         else "fallback"),
                              "layers": {p: b.as_dict() for p, b in self.bound_plan.items()}},
            "validation": {f.name: f.validation for f in self.files},
            "artifacts": {f.name: f.describe() for f in self.files},
        }

    def summary(self) -> str:
        """One line of validation figures (the build's stage table)."""
        if self.quantized:
            scn, head = self.file(SCN_INT8).validation, self.file(RPN_HEAD_INT8).validation
            return (f"scn.int8 cosine {scn['vs_fp32_weights']['min_cosine']:.6f} (noise floor "
                    f"{scn['noise_floor_min_cosine']:.6f}), worst layer {scn['worst_layer']['relative_error']:.2g} "
                    "layer by layer; rpn_head.int8 median "
                    f"abs error {head['max_median_abs_error']:.2g} layer by layer")
        scn, head = self.file(SCN_FP16).validation, self.file(RPN_HEAD_FP32).validation
        cosine = f"scn.fp16 cosine {scn['min_cosine']:.6f}; " if scn else ""
        return f"{cosine}rpn_head.fp32 max abs error {head['max_abs_error']:.2g}"


def export_key(cfg: ModelConfig, checkpoint: Path, calib_data, max_frames: int = DEFAULT_MAX_FRAMES,
               margin: float = DEFAULT_MARGIN, fp16: bool = False, fp16_io: bool = False,
               output_bound: int | None = None) -> tuple[dict, dict]:
    """(inputs, params) the manifest records for an export: what decides whether it must run again."""
    inputs = {"checkpoint": file_sha256(checkpoint), "config": json_sha256(config_to_dict(cfg))}
    if calib_data is not None:
        inputs["calib_data"] = source_sha256(calib_data)
    params = {"config": cfg.name, "max_frames": max_frames, "bound_margin": margin,
              "precision": "int8" if is_quantized_checkpoint(Path(checkpoint)) else "float"}
    if fp16:
        params.update(fp16=True, fp16_io=bool(fp16_io))
    if output_bound is not None:
        params["output_bound"] = int(output_bound)
    return inputs, params


def _calib_frames(model, cfg: ModelConfig, calib_data, max_frames: int) -> tuple[list, dict]:
    frames, used = [], []
    for f in evenly_spaced(list_frames(calib_data), max_frames):
        points = read_frame(f, cfg.voxel.num_point_features).points
        voxels = model.voxelize([torch.from_numpy(points)])
        if voxels.num_voxels:
            frames.append((voxels.features, voxels.coords))
            used.append({"name": f.name, "voxels": voxels.num_voxels})
    if not frames:
        raise UserError(f"{calib_data}: no frame has a point inside the config's point_cloud_range")
    return frames, {"path": str(calib_data), "frames": used}


def _synthetic_frames(model, cfg: ModelConfig, count: int) -> list:
    """Validation frames when no data was given: the synthetic generator's scenes (seed 0)."""
    try:
        scene = scene_for_config(cfg)
    except UserError:  # classes the generator cannot make: any scene will do for validation
        scene = None
    frames = []
    for index in range(count):
        points, _ = generate_frame(0, index, scene=scene)
        voxels = model.voxelize([torch.from_numpy(points[:, : cfg.voxel.num_point_features].copy())])
        if voxels.num_voxels:
            frames.append((voxels.features, voxels.coords))
    return frames


def _require_clean(name: str, model) -> list[str]:
    findings = [f.line(name) for f in lint_model(model)]
    if findings:
        raise ValidationError(f"{findings[0]} ({len(findings)} lint finding(s))")
    return findings


# Polygraphy's own comparison (its compare_accuracy, atol / rtol rule) of each 2D file's ONNX Runtime outputs with
# PyTorch's, a second, independent verdict on the outputs the validation already computed (the same inputs: running
# both again through Polygraphy's runners gave the same arrays at twice the cost): (statistic, atol, rtol); an
# output passes when the statistic of its abs OR its relative error is within tolerance (Polygraphy's rule). FP32:
# every element (max). INT8 runs free here (no layer-by-layer forcing), so one-step rounding flips cascade
# (rpn_head_int8.validate_rpn_head_int8): on the sample the median abs error reaches 1.2e-2 on an output the model
# never learned (vel); 5e-2 catches a broken file, and the layer-by-layer gate (1e-4) catches a wrong scale.
POLYGRAPHY_FP32 = ("max", 1e-4, 1e-4)
POLYGRAPHY_INT8 = ("median", 5e-2, 5e-2)


def _polygraphy_check(name: str, exported, runs: dict, rule, log) -> dict:
    stat, atol, rtol = rule
    figures = polygraphy_verdict(runs, exported.output_names, atol=atol, rtol=rtol, check_error_stat=stat)
    worst = max(v[f"{stat}_abs"] for v in figures["per_output"].values())
    log(f"{name}: Polygraphy compare_accuracy, ONNX Runtime vs PyTorch: {'passed' if figures['passed'] else 'FAILED'} "
        f"({stat} abs error <= {atol:g}; worst {worst:.3g})")
    if not figures["passed"]:
        failed = [n for n, v in figures["per_output"].items() if not v["passed"]]
        raise ValidationError(f"{name}: Polygraphy comparison with PyTorch failed on {', '.join(failed[:4])} "
                              f"({stat} abs error above {atol:g})")
    return figures


def _validation_runner(data: bytes) -> ScnRunner:
    """The reference runner for checking numbers against PyTorch, which never truncates: output_bound overflows
    are not this check's business (`_check_bounds` reports them once, from the calibration counts)."""
    return ScnRunner(data, precision="fp32", allow_overflow=True)


def _check_bounds(plan: dict, log) -> None:
    """A bound below what a layer already needed on the calibration frames (only `--output-bound` can do that):
    say so now, since every run on such frames will stop (`runtime.scn_runner`)."""
    short = {p: b for p, b in plan.items() if b.observed is not None and b.observed > b.bound}
    if short:
        worst = max(short.values(), key=lambda b: b.observed / b.bound)
        log(f"warning: output_bound below what {len(short)} sparse conv(s) needed on the calibration frames "
            f"(worst {worst.path}: {worst.observed} > {worst.bound}); runs on such frames will stop with an error")


def _export_scn_fp16(model, cfg: ModelConfig, fused, fusion_line: str, plan, validation_frames, bevs,
                     log) -> ExportedFile:
    """`scn.fp16.onnx`: lint + reference runner vs the PyTorch backbone."""
    scn = export_scn(fused, output_bounds={p: b.bound for p, b in plan.items()}, max_voxels=cfg.voxel.max_voxels)
    data = scn.to_bytes()
    _require_clean(SCN_FP16, scn.model)
    runner = _validation_runner(data)
    figures = validate_scn(runner, model.backbone, validation_frames, references=bevs) if validation_frames else {}
    if figures:
        log(f"{SCN_FP16}: reference runner vs PyTorch backbone on {figures['frames']} frame(s): "
            f"cosine {figures['min_cosine']:.8f}, max abs error {figures['max_abs_error']:.3g}")
    return ExportedFile(SCN_FP16, data, "libspconv-scn", "fp16", figures, [fusion_line],
                        info={"inputs": {SCN_INPUT: ["num_voxels", cfg.voxel.num_point_features]},
                              "outputs": {SCN_OUTPUT: [1, cfg.bev_channels, *cfg.bev_shape]},
                              "node_paths": scn.node_paths})


def _log_passes_and_lint(name: str, rpn, log) -> None:
    """Each graphsurgeon pass in a line, then the lint (a finding stops the export)."""
    for report in rpn.passes:
        log(f"{name}: {report.line()}")
    _require_clean(name, rpn.model)


def _export_rpn_head_fp32(model, cfg: ModelConfig, bevs, log) -> ExportedFile:
    """`rpn_head.fp32.onnx`: lint + ONNX Runtime vs PyTorch + Polygraphy's comparison."""
    rpn = export_rpn_head(model, cfg)
    _log_passes_and_lint(RPN_HEAD_FP32, rpn, log)
    runs: dict = {}
    figures = validate_rpn_head(rpn, model, bevs, runs=runs)
    log(f"{RPN_HEAD_FP32}: ONNX Runtime vs PyTorch on {figures['frames']} BEV map(s): "
        f"max abs error {figures['max_abs_error']:.3g} ({figures['max_scaled_error']:.3g} relative to "
        f"max(1, |output|); PyTorch FP32 vs float64 on a central window: "
        f"{figures['pytorch_fp32_vs_fp64_max_abs']:.3g})")
    figures["polygraphy"] = _polygraphy_check(RPN_HEAD_FP32, rpn, runs, POLYGRAPHY_FP32, log)
    return ExportedFile(RPN_HEAD_FP32, rpn.to_bytes(), "onnx", "fp32", figures, [r.as_dict() for r in rpn.passes],
                        info={"inputs": {"input": [1, cfg.bev_channels, *cfg.bev_shape]},
                              "outputs": rpn.output_names})


def _int8_head(name: str, qmodel, cfg: ModelConfig, bevs, log, runs: dict | None = None, **options):
    """Export one INT8 head file (options: fp16, fp16_io), print its pass log, lint and validate it (`runs`:
    receives the free-running outputs of the file and of PyTorch)."""
    rpn = export_rpn_head_int8(qmodel, cfg, **options)
    _log_passes_and_lint(name, rpn, log)
    figures = validate_rpn_head_int8(rpn, qmodel, bevs, runs=runs)
    log(f"{name}: ONNX Runtime vs PyTorch fake-quant head on {len(bevs)} BEV map(s): worst median abs error "
        f"{figures['max_median_abs_error']:.3g} layer by layer (tolerance {figures['tolerance']:g}), max abs error "
        f"{figures['max_abs_error']:.3g}")
    return rpn, figures


def _export_int8_fp16(qmodel, cfg: ModelConfig, bevs, fp16_io: bool, log) -> ExportedFile:
    """`rpn_head.int8.fp16.onnx`: lint + ONNX Runtime vs PyTorch fake quant at the FP16 tolerance."""
    rpn, figures = _int8_head(RPN_HEAD_INT8_FP16, qmodel, cfg, bevs, log, fp16=True, fp16_io=fp16_io)
    return ExportedFile(RPN_HEAD_INT8_FP16, rpn.to_bytes(), "onnx", "int8", figures,
                        info={"float_precision": "fp16", "io": "fp16" if fp16_io else "fp32",
                              "outputs": rpn.output_names})


def _export_int8(qmodel, cfg: ModelConfig, plan, validation_frames, bevs, log) -> list[ExportedFile]:
    """The three INT8 files, validated (raises on any failure); `bevs`: the PyTorch fake-quant backbone's
    output on `validation_frames`."""
    fused = fuse_backbone(qmodel.backbone)
    specs = scn_quant_specs(walk_backbone(fused))
    summary = precision_summary(specs)
    log(f"{SCN_INT8}: {summary}")
    scn = export_scn(fused, output_bounds={p: b.bound for p, b in plan.items()}, max_voxels=cfg.voxel.max_voxels,
                     quant=specs)
    scn_data = scn.to_bytes()
    _require_clean(SCN_INT8, scn.model)
    runner = _validation_runner(scn_data)
    scn_figures, got = validate_scn_int8(runner, fused, validation_frames, bevs, name=SCN_INT8)
    scn_figures["reference"] = ("PyTorch fake-quant backbone as loaded; layer by layer: the same with the file's "
                                "FP16 weights, FP16 input features and ONNX rounding")
    worst = scn_figures["worst_layer"]
    log(f"{SCN_INT8}: layer by layer on PyTorch's inputs: worst relative error {worst['relative_error']:.3g} "
        f"({worst['node']}, {worst['path']}; tolerance {scn_figures['layer_tolerance']:g})")
    log(f"{SCN_INT8}: reference runner vs PyTorch fake-quant backbone on {scn_figures['frames']} frame(s): "
        f"cosine {scn_figures['vs_fp32_weights']['min_cosine']:.6f} against the model as loaded (bar "
        f"{scn_figures['threshold']:.6f}: noise floor {scn_figures['noise_floor_min_cosine']:.6f}, the model against "
        f"itself with the file's FP16 inputs, weights and rounding); {scn_figures['min_cosine']:.8f} against that "
        "twin")
    layers = {p: {"precision": q.precision, "output_precision": q.output_precision} for p, q in specs.items()}
    scn_file = ExportedFile(SCN_INT8, scn_data, "libspconv-scn", "int8", scn_figures, [summary],
                            info={"node_paths": scn.node_paths, "layers": layers})

    qdq = scn_to_qdq(scn.model)
    _require_clean(SCN_INT8_QDQ, qdq)
    qdq_data = qdq.SerializeToString()
    qdq_runner = _validation_runner(qdq_data)
    for (features, coords), expected in zip(validation_frames, got):
        if not torch.equal(qdq_runner.run(features, coords), expected):
            raise ValidationError(f"{SCN_INT8_QDQ}: does not execute identically to {SCN_INT8}")
    log(f"{SCN_INT8_QDQ}: executes bit-identically to {SCN_INT8} on {len(validation_frames)} frame(s)")
    qdq_file = ExportedFile(SCN_INT8_QDQ, qdq_data, "scn-qdq", "int8",
                            {"frames": len(validation_frames), "identical_to": SCN_INT8})

    runs: dict = {}
    rpn, rpn_figures = _int8_head(RPN_HEAD_INT8, qmodel, cfg, bevs, log, runs=runs)
    rpn_figures["polygraphy"] = _polygraphy_check(RPN_HEAD_INT8, rpn, runs, POLYGRAPHY_INT8, log)
    rpn_file = ExportedFile(RPN_HEAD_INT8, rpn.to_bytes(), "onnx", "int8", rpn_figures,
                            [r.as_dict() for r in rpn.passes],
                            info={"inputs": {"input": [1, cfg.bev_channels, *cfg.bev_shape]},
                                  "outputs": rpn.output_names})
    return [scn_file, qdq_file, rpn_file]


@torch.no_grad()
def export_checkpoint(cfg: ModelConfig, checkpoint: str | Path, calib_data: str | Path | None = None,
                      max_frames: int = DEFAULT_MAX_FRAMES, margin: float = DEFAULT_MARGIN, fp16: bool = False,
                      fp16_io: bool = False, log: Callable[[str], None] = print,
                      output_bound: int | None = None) -> ExportResult:
    """Export and validate the deployment files in memory (steps 1-5); raises before anything is written.

    fp16 (quantized checkpoints): also `rpn_head.int8.fp16.onnx`, the INT8 head with its float parts in
    FP16 (opset 19, FP16 scales) for strongly typed TensorRT builds; fp16_io gives it FP16 input / outputs.
    """
    if fp16_io and not fp16:
        raise UserError(f"--fp16-io needs --fp16 (it applies to {RPN_HEAD_INT8_FP16})")
    if max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    checkpoint = Path(checkpoint)
    model, qmodel = load_model_pair(cfg, checkpoint)
    log(f"{checkpoint}: {'quantized' if qmodel is not None else 'float'} checkpoint")
    if fp16 and qmodel is None:
        raise UserError(f"{checkpoint}: --fp16 applies to the INT8 head; give a quantized checkpoint (`ptq` / `qat`)")

    if calib_data is not None:
        frames, calib_record = _calib_frames(model, cfg, calib_data, max_frames)
    else:
        frames, calib_record = _synthetic_frames(model, cfg, VALIDATION_FRAMES), None
    validation_frames = frames[:VALIDATION_FRAMES]

    fused = fuse_backbone(model.backbone)
    fusion_line = fusion_summary(model.backbone, fused)
    log(fusion_line)
    ops = walk_backbone(fused)
    observed = observe_active_voxels(fused, ops, frames) if calib_record else None
    plan = plan_output_bounds(ops, cfg.voxel.max_voxels, observed, margin, cfg.export.output_bound_floor, output_bound)
    how = (f"--output-bound {output_bound} on every layer" if output_bound is not None
           else f"{margin:g} x calibration ratio x max_voxels {cfg.voxel.max_voxels}" if observed
           else "safe bound (no --calib-data)")
    log(f"output_bound: {how}; " + ", ".join(f"{p}={b.bound}" for p, b in plan.items()))
    _check_bounds(plan, log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutputBoundWarning)  # said once by _check_bounds
        bevs = [model.backbone(f, c, 1) for f, c in validation_frames]  # once: the scn and the head checks
        files = [_export_scn_fp16(model, cfg, fused, fusion_line, plan, validation_frames, bevs, log)]
        files.append(_export_rpn_head_fp32(model, cfg, bevs or [torch.zeros(1, cfg.bev_channels, *cfg.bev_shape)],
                                           log))

        if qmodel is not None:
            if not validation_frames:
                raise UserError(f"{checkpoint}: no frame with voxels to validate the INT8 export on")
            qbevs = [qmodel.backbone(f, c, 1) for f, c in validation_frames]
            files += _export_int8(qmodel, cfg, plan, validation_frames, qbevs, log)
            if fp16:
                files.append(_export_int8_fp16(qmodel, cfg, qbevs, fp16_io, log))
    return ExportResult(checkpoint=checkpoint, quantized=qmodel is not None, files=files, bound_plan=plan,
                        bound_margin=margin, bounds_observed=bool(observed), calib_data=calib_record,
                        bound_override=output_bound)


def record_export(out: str | Path, result: ExportResult, inputs: dict, params: dict, seconds: float) -> dict:
    """Write the files, then record the stage in `out`'s manifest; returns the record (JSON, with the library
    versions). `build` records its export through its own stage runner instead."""
    out = ensure_dir(out)
    manifest = Manifest(out)  # read first: a broken manifest fails before anything is written
    result.write(out)
    record = manifest.record(STAGE, inputs, params, result.names, seconds, result.extra())
    return {**vars(record), "versions": manifest.versions}


def run_export(config: str | Path | ModelConfig, checkpoint: str | Path, out: str | Path,
               calib_data: str | Path | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
               margin: float = DEFAULT_MARGIN, fp16: bool = False, fp16_io: bool = False,
               log: Callable[[str], None] = print, output_bound: int | None = None) -> dict:
    """`trt-centerpoint export`: export, validate and write the deployment files and the stage's manifest
    record; returns that record as a dict (`outputs`: file name -> sha256, `extra`, `versions`...)."""
    start = time.perf_counter()
    check_output_dir(out)  # before the work: a bad --out fails now, not after the export
    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    if output_bound is not None and output_bound < 1:
        raise UserError(f"--output-bound must be >= 1, got {output_bound}")
    result = export_checkpoint(cfg, checkpoint, calib_data, max_frames, margin, fp16, fp16_io, log, output_bound)
    inputs, params = export_key(cfg, Path(checkpoint), calib_data, max_frames, margin, fp16, fp16_io, output_bound)
    return record_export(out, result, inputs, params, time.perf_counter() - start)
