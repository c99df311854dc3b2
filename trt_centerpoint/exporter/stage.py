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
5. INT8 (quantized checkpoint): specs from the calibrated quantizers (`scn_quant.py`), scn.int8 lint +
   reference runner vs the PyTorch fake-quant backbone; the Q/DQ form lint + executed bit-identically
   to scn.int8; rpn_head.int8 lint + ONNX Runtime vs the PyTorch fake-quant head;
6. write every file atomically, then record the stage "export" in the build folder's `manifest.json`
   (`trt_centerpoint.manifest`: input hashes, parameters, output hashes, library versions; `extra` holds
   the pass log, the output_bound plan, validation figures and the frames used).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trt_centerpoint.config import ModelConfig, config_to_dict, load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.exporter.fuse_relu import fuse_backbone, fusion_summary
from trt_centerpoint.exporter.lint import lint_model
from trt_centerpoint.exporter.output_bound import DEFAULT_MARGIN, observe_active_voxels, plan_output_bounds
from trt_centerpoint.exporter.rpn_head import export_rpn_head, validate_rpn_head
from trt_centerpoint.exporter.scn import SCN_INPUT, SCN_OUTPUT, export_scn
from trt_centerpoint.exporter.scn_runner import ScnRunner
from trt_centerpoint.exporter.validate import ValidationError, fp16_deployed_reference, validate_scn
from trt_centerpoint.exporter.walk import walk_backbone
from trt_centerpoint.fileio import atomic_write_bytes
from trt_centerpoint.manifest import Manifest, file_sha256, tree_sha256

SCN_FILE = "scn.fp16.onnx"
RPN_HEAD_FILE = "rpn_head.fp32.onnx"
SCN_INT8_FILE = "scn.int8.onnx"
SCN_QDQ_FILE = "scn.int8.qdq.onnx"
RPN_HEAD_INT8_FILE = "rpn_head.int8.onnx"
RPN_HEAD_INT8_FP16_FILE = "rpn_head.int8.fp16.onnx"  # with --fp16
DEFAULT_MAX_FRAMES = 16
VALIDATION_FRAMES = 2  # the reference runner and PyTorch each run the backbone once per frame

STAGE = "export"

__all__ = ["DEFAULT_MAX_FRAMES", "RPN_HEAD_FILE", "RPN_HEAD_INT8_FILE", "SCN_FILE", "SCN_INT8_FILE", "SCN_QDQ_FILE",
           "STAGE", "export_key", "is_quantized_checkpoint", "load_export_models", "run_export"]


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_quantized_checkpoint(checkpoint: Path) -> bool:
    """True for a `trt-centerpoint ptq` / `qat` file (meta format "trt_centerpoint.ptq")."""
    from trt_centerpoint.model.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return str(meta.get("format", "")).endswith(".ptq")


def load_export_models(cfg: ModelConfig, checkpoint: Path):
    """(float model, quantized model or None). For a quantized checkpoint the float model is a copy of it
    with every quantizer disabled: the same (BN-folded) weights, so FP32 and INT8 files differ only by
    quantization."""
    from trt_centerpoint.model.centerpoint import load_model

    if not is_quantized_checkpoint(checkpoint):
        return load_model(cfg, checkpoint), None
    from trt_centerpoint.calib.compat import iter_quantizers
    from trt_centerpoint.calib.ptq import load_quantized_model

    qmodel = load_quantized_model(checkpoint, expect_config=cfg)
    float_model = copy.deepcopy(qmodel)
    for _, quantizer in iter_quantizers(float_model):
        quantizer.disable()
    return float_model.eval(), qmodel


def export_key(cfg: ModelConfig, checkpoint: Path, calib_data, max_frames: int = DEFAULT_MAX_FRAMES,
               margin: float = DEFAULT_MARGIN, fp16: bool = False, fp16_io: bool = False) -> tuple[dict, dict]:
    """(inputs, params) the manifest records for an export: what decides whether it must run again."""
    inputs = {"checkpoint": file_sha256(checkpoint), "config": _sha256_json(config_to_dict(cfg))}
    if calib_data is not None:
        inputs["calib_data"] = tree_sha256(calib_data)
    params = {"config": cfg.name, "max_frames": max_frames, "bound_margin": margin,
              "precision": "int8" if is_quantized_checkpoint(Path(checkpoint)) else "float"}
    if fp16:
        params.update(fp16=True, fp16_io=bool(fp16_io))
    return inputs, params


def _pick(files: list[Path], count: int) -> list[Path]:
    if len(files) <= count:
        return files
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, count).round()]


def _calib_frames(model, cfg: ModelConfig, calib_data, max_frames: int) -> tuple[list, dict]:
    from trt_centerpoint.data.points import list_point_files, read_points

    files = _pick(list_point_files(calib_data), max_frames)
    frames, used = [], []
    for f in files:
        points = read_points(f, cfg.voxel.num_point_features).points
        voxels = model.voxelize([torch.from_numpy(points)])
        if voxels.num_voxels:
            frames.append((voxels.features, voxels.coords))
            used.append({"name": f.name, "voxels": voxels.num_voxels})
    if not frames:
        raise UserError(f"{calib_data}: no frame has a point inside the config's point_cloud_range")
    return frames, {"path": str(calib_data), "frames": used}


def _synthetic_frames(model, cfg: ModelConfig, count: int) -> list:
    """Validation frames when no data was given: the synthetic generator's scenes (seed 0)."""
    from trt_centerpoint.data.synth import generate_frame, scene_for_config

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


# Polygraphy's own comparison (OnnxrtRunner vs PyTorch) of each 2D file, a second, independent check:
# (statistic, atol, rtol); an output passes when the statistic of its abs OR its relative error is within
# tolerance (Polygraphy's rule). FP32: every element (max). INT8 runs free here (no layer-by-layer
# forcing), so one-step rounding flips cascade (rpn_head_int8.validate_rpn_head_int8): on the sample the
# median abs error reaches 1.2e-2 on an output the model never learned (vel); 5e-2 catches a broken file,
# and the layer-by-layer gate (1e-4) catches a wrong scale.
POLYGRAPHY_FP32 = ("max", 1e-4, 1e-4)
POLYGRAPHY_INT8 = ("median", 5e-2, 5e-2)


def _polygraphy_check(name: str, exported, model, bevs, rule, log) -> dict:
    from trt_centerpoint.exporter.rpn_head import RPN_HEAD_INPUT, RpnHeadModule
    from trt_centerpoint.exporter.rpn_head_int8 import polygraphy_compare

    stat, atol, rtol = rule
    figures = polygraphy_compare(exported.to_bytes(), RpnHeadModule(model), bevs, RPN_HEAD_INPUT,
                                 exported.output_names, atol=atol, rtol=rtol, check_error_stat=stat)
    worst = max(v[f"{stat}_abs"] for v in figures["per_output"].values())
    log(f"{name}: Polygraphy OnnxrtRunner vs PyTorch: {'passed' if figures['passed'] else 'FAILED'} "
        f"({stat} abs error <= {atol:g}; worst {worst:.3g})")
    if not figures["passed"]:
        failed = [n for n, v in figures["per_output"].items() if not v["passed"]]
        raise ValidationError(f"{name}: Polygraphy comparison with PyTorch failed on {', '.join(failed[:4])} "
                              f"({stat} abs error above {atol:g})")
    return figures


def _int8_head(name: str, qmodel, cfg: ModelConfig, bevs, log, **options):
    """Export one INT8 head file (options: fp16, fp16_io), print its pass log, lint and validate it."""
    from trt_centerpoint.exporter.rpn_head_int8 import export_rpn_head_int8, validate_rpn_head_int8

    rpn = export_rpn_head_int8(qmodel, cfg, **options)
    for report in rpn.passes:
        log(f"{name}: {report.line()}")
    _require_clean(name, rpn.model)
    figures = validate_rpn_head_int8(rpn, qmodel, bevs)
    log(f"{name}: ONNX Runtime vs PyTorch fake-quant head on {len(bevs)} BEV map(s): worst median abs error "
        f"{figures['max_median_abs_error']:.3g} layer by layer (tolerance {figures['tolerance']:g}), max abs error "
        f"{figures['max_abs_error']:.3g}")
    return rpn, figures


def _export_int8_fp16(qmodel, cfg: ModelConfig, bevs, fp16_io: bool, log):
    """`rpn_head.int8.fp16.onnx`: lint + ONNX Runtime vs PyTorch fake quant at the FP16 tolerance."""
    rpn, figures = _int8_head(RPN_HEAD_INT8_FP16_FILE, qmodel, cfg, bevs, log, fp16=True, fp16_io=fp16_io)
    info = {RPN_HEAD_INT8_FP16_FILE: {"format": "onnx", "opset": 19, "precision": "int8", "float_precision": "fp16",
                                      "io": "fp16" if fp16_io else "fp32", "outputs": rpn.output_names}}
    return {RPN_HEAD_INT8_FP16_FILE: rpn.to_bytes()}, {RPN_HEAD_INT8_FP16_FILE: figures}, info


def _export_int8(qmodel, cfg: ModelConfig, plan, validation_frames, bevs, log) -> tuple[dict, dict, dict]:
    """The three INT8 files as bytes, their validation figures and pass logs (raises on any failure);
    `bevs`: the PyTorch fake-quant backbone's output on `validation_frames`."""
    from trt_centerpoint.exporter.scn_qdq import scn_to_qdq
    from trt_centerpoint.exporter.scn_quant import precision_summary, scn_quant_specs

    fused = fuse_backbone(qmodel.backbone)
    specs = scn_quant_specs(walk_backbone(fused))
    summary = precision_summary(specs)
    log(f"{SCN_INT8_FILE}: {summary}")
    scn = export_scn(fused, output_bounds={p: b.bound for p, b in plan.items()}, max_voxels=cfg.voxel.max_voxels,
                     quant=specs)
    _require_clean(SCN_INT8_FILE, scn.model)
    runner = ScnRunner(scn.to_bytes(), precision="fp32")
    got = [runner.run(f, c) for f, c in validation_frames]
    scn_figures = validate_scn(runner, fp16_deployed_reference(fused), validation_frames, outputs=got)
    fp32_weights = validate_scn(runner, qmodel.backbone, validation_frames, min_cosine=0.0, outputs=got,
                                references=bevs)
    scn_figures["reference"] = "PyTorch fake-quant backbone with the file's FP16 weights and FP16 input features"
    scn_figures["vs_fp32_weights"] = {k: fp32_weights[k] for k in ("min_cosine", "max_abs_error")}
    log(f"{SCN_INT8_FILE}: reference runner vs PyTorch fake-quant backbone on {scn_figures['frames']} frame(s): "
        f"cosine {scn_figures['min_cosine']:.8f} with the file's FP16 weights and inputs (max abs error "
        f"{scn_figures['max_abs_error']:.3g}); {fp32_weights['min_cosine']:.6f} against the model as loaded "
        "(FP32 inputs; FP32 weights unless `ptq` rounded them to FP16)")

    qdq = scn_to_qdq(scn.model)
    _require_clean(SCN_QDQ_FILE, qdq)
    qdq_runner = ScnRunner(qdq.SerializeToString(), precision="fp32")
    for (features, coords), expected in zip(validation_frames, got):
        if not torch.equal(qdq_runner.run(features, coords), expected):
            raise ValidationError(f"{SCN_QDQ_FILE}: does not execute identically to {SCN_INT8_FILE}")
    qdq_figures = {"frames": len(validation_frames), "identical_to": SCN_INT8_FILE}
    log(f"{SCN_QDQ_FILE}: executes bit-identically to {SCN_INT8_FILE} on {len(validation_frames)} frame(s)")

    rpn, rpn_figures = _int8_head(RPN_HEAD_INT8_FILE, qmodel, cfg, bevs, log)
    rpn_figures["polygraphy"] = _polygraphy_check(RPN_HEAD_INT8_FILE, rpn, qmodel, bevs, POLYGRAPHY_INT8, log)
    files = {SCN_INT8_FILE: scn.to_bytes(), SCN_QDQ_FILE: qdq.SerializeToString(), RPN_HEAD_INT8_FILE: rpn.to_bytes()}
    figures = {SCN_INT8_FILE: scn_figures, SCN_QDQ_FILE: qdq_figures, RPN_HEAD_INT8_FILE: rpn_figures}
    info = {
        "passes": {SCN_INT8_FILE: [summary], RPN_HEAD_INT8_FILE: [r.as_dict() for r in rpn.passes]},
        "artifacts": {
            SCN_INT8_FILE: {"format": "libspconv-scn", "opset": 11, "precision": "int8", "node_paths": scn.node_paths,
                            "layers": {p: {"precision": q.precision, "output_precision": q.output_precision}
                                       for p, q in specs.items()}},
            SCN_QDQ_FILE: {"format": "scn-qdq", "opset": 13, "precision": "int8"},
            RPN_HEAD_INT8_FILE: {"format": "onnx", "opset": 17, "precision": "int8",
                                 "inputs": {"input": [1, cfg.bev_channels, *cfg.bev_shape]},
                                 "outputs": rpn.output_names},
        },
    }
    return files, figures, info


@torch.no_grad()
def run_export(config: str | Path | ModelConfig, checkpoint: str | Path, out: str | Path,
               calib_data: str | Path | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
               margin: float = DEFAULT_MARGIN, fp16: bool = False, fp16_io: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Export, validate and write the deployment files; returns the stage's manifest record as a dict.

    fp16 (quantized checkpoints): also `rpn_head.int8.fp16.onnx`, the INT8 head with its float parts in
    FP16 (opset 19, FP16 scales) for strongly typed TensorRT builds; fp16_io gives it FP16 input / outputs.
    """
    if fp16_io and not fp16:
        raise UserError("--fp16-io needs --fp16 (it applies to rpn_head.int8.fp16.onnx)")
    start = time.perf_counter()

    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    checkpoint, out = Path(checkpoint), Path(out)
    if max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    model, qmodel = load_export_models(cfg, checkpoint)
    log(f"{checkpoint}: {'quantized' if qmodel is not None else 'float'} checkpoint")
    if fp16 and qmodel is None:
        raise UserError(f"{checkpoint}: --fp16 applies to the INT8 head; give a quantized checkpoint (`ptq` / `qat`)")

    if calib_data is not None:
        frames, calib_record = _calib_frames(model, cfg, calib_data, max_frames)
    else:
        frames, calib_record = _synthetic_frames(model, cfg, VALIDATION_FRAMES), None
    validation_frames = frames[:VALIDATION_FRAMES]

    # --- sparse backbone -> scn.fp16.onnx
    fused = fuse_backbone(model.backbone)
    fusion_line = fusion_summary(model.backbone, fused)
    log(fusion_line)
    ops = walk_backbone(fused)
    observed = observe_active_voxels(fused, ops, frames) if calib_record else None
    plan = plan_output_bounds(ops, cfg.voxel.max_voxels, observed, margin)
    log(f"output_bound: {f'observed max x {margin:.2f}' if observed else 'safe fallback (no --calib-data)'}; "
        + ", ".join(f"{p}={b.bound}" for p, b in plan.items()))
    scn = export_scn(fused, output_bounds={p: b.bound for p, b in plan.items()}, max_voxels=cfg.voxel.max_voxels)
    scn_bytes = scn.to_bytes()
    _require_clean(SCN_FILE, scn.model)
    runner = ScnRunner(scn_bytes, precision="fp32")
    scn_figures = validate_scn(runner, model.backbone, validation_frames) if validation_frames else {}
    if scn_figures:
        log(f"{SCN_FILE}: reference runner vs PyTorch backbone on {scn_figures['frames']} frame(s): "
            f"cosine {scn_figures['min_cosine']:.8f}, max abs error {scn_figures['max_abs_error']:.3g}")

    # --- RPN + head -> rpn_head.fp32.onnx
    rpn = export_rpn_head(model, cfg)
    for report in rpn.passes:
        log(f"{RPN_HEAD_FILE}: {report.line()}")
    _require_clean(RPN_HEAD_FILE, rpn.model)
    bevs = [model.backbone(f, c, 1) for f, c in validation_frames] or [torch.zeros(1, cfg.bev_channels, *cfg.bev_shape)]
    rpn_figures = validate_rpn_head(rpn, model, bevs)
    log(f"{RPN_HEAD_FILE}: ONNX Runtime vs PyTorch on {rpn_figures['frames']} BEV map(s): "
        f"max abs error {rpn_figures['max_abs_error']:.3g} ({rpn_figures['max_scaled_error']:.3g} relative to "
        f"max(1, |output|); PyTorch FP32 vs float64: {rpn_figures['pytorch_fp32_vs_fp64_max_abs']:.3g})")
    rpn_figures["polygraphy"] = _polygraphy_check(RPN_HEAD_FILE, rpn, model, bevs, POLYGRAPHY_FP32, log)
    files = {SCN_FILE: scn_bytes, RPN_HEAD_FILE: rpn.to_bytes()}
    validation = {SCN_FILE: scn_figures, RPN_HEAD_FILE: rpn_figures}
    passes = {SCN_FILE: [fusion_line], RPN_HEAD_FILE: [r.as_dict() for r in rpn.passes]}
    artifacts = {
        SCN_FILE: {"format": "libspconv-scn", "opset": 11, "precision": "fp16",
                   "inputs": {SCN_INPUT: ["num_voxels", cfg.voxel.num_point_features]},
                   "outputs": {SCN_OUTPUT: [1, cfg.bev_channels, *cfg.bev_shape]},
                   "node_paths": scn.node_paths},
        RPN_HEAD_FILE: {"format": "onnx", "opset": 17, "precision": "fp32",
                        "inputs": {"input": [1, cfg.bev_channels, *cfg.bev_shape]},
                        "outputs": rpn.output_names},
    }

    # --- INT8 files (quantized checkpoint)
    if qmodel is not None:
        if not validation_frames:
            raise UserError(f"{checkpoint}: no frame with voxels to validate the INT8 export on")
        qbevs = [qmodel.backbone(f, c, 1) for f, c in validation_frames]
        int8_files, int8_figures, int8_info = _export_int8(qmodel, cfg, plan, validation_frames, qbevs, log)
        if fp16:
            fp16_files, fp16_figures, fp16_info = _export_int8_fp16(qmodel, cfg, qbevs, fp16_io, log)
            int8_files.update(fp16_files)
            int8_figures.update(fp16_figures)
            int8_info["artifacts"].update(fp16_info)
        files.update(int8_files)
        validation.update(int8_figures)
        passes.update(int8_info["passes"])
        artifacts.update(int8_info["artifacts"])

    # --- write
    manifest = Manifest(out)  # read first: a broken manifest fails before anything is written
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    inputs, params = export_key(cfg, checkpoint, calib_data, max_frames, margin, fp16, fp16_io)
    extra = {
        "checkpoint": str(checkpoint),
        "quantized": qmodel is not None,
        "calib_data": calib_record,
        "passes": passes,
        "output_bounds": {"margin": margin, "source": "calib_data" if observed else "fallback",
                          "layers": {p: b.as_dict() for p, b in plan.items()}},
        "validation": validation,
        "artifacts": artifacts,
    }
    record = manifest.record(STAGE, inputs, params, list(files), time.perf_counter() - start, extra)
    return {**vars(record), "versions": manifest.versions}
