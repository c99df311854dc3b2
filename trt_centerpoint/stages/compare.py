"""`trt-centerpoint compare`: what INT8 changes, measured on the deployed files (no PyTorch in the loop).

FP32 = `scn.fp16.onnx` (reference runner) + `rpn_head.fp32.onnx` (ONNX Runtime; with backend "trt" the
engine `rpn_head.fp32.plan`); INT8 = `scn.int8.onnx` + `rpn_head.int8.onnx` (or `rpn_head.int8.plan`). On
every frame of `--data`:
- per head output: cosine, max / mean / median abs error, SNR, a log-error histogram (`compare_runs`),
  and Polygraphy's own per-element check; the first `save_frames` frames of both runs are saved as
  Polygraphy RunResults JSON (`polygraphy inspect data compare.run_results.json` reads it);
- per layer of the 2D head: both rpn_head files on the same FP32 BEV, every intermediate tensor marked,
  pointing at the first layer where the error jumps (`per_layer_onnx`);
- detection agreement INT8 vs FP32 (boxes of the same class within 1 cm / 10 cm / 50 cm);
- with labels: mAP of both, also per distance band (the config's `eval.distance_bands`);
- a bird's-eye view (`bev_1.png`, ...) of the frames where INT8 and FP32 disagree most (`eval.disagreement`):
  points, ground truth, FP32 and INT8 boxes;
- with a quantized `checkpoint`: the deployment check of the export issue, the INT8 files against the
  PyTorch fake-quant model (boxes matched within 1 cm) on `verify_frames` frames.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from trt_centerpoint.artifacts import BEV_PNGS, COMPARE_JSON, DETECTIONS, HEAD_FILES, RUN_RESULTS
from trt_centerpoint.config import ModelConfig
from trt_centerpoint.data.detections import write_detections
from trt_centerpoint.data.frames import load_frames
from trt_centerpoint.distributed import DistContext, broadcast, context, gather, lockstep, shutdown
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.ap import evaluate
from trt_centerpoint.eval.compare import (
    DEFAULT_RUN_RESULTS_MB,
    compare_runs,
    find_first_jump,
    fit_run_results,
    per_layer_onnx,
    polygraphy_accuracy,
    save_run_results,
    to_run_results,
)
from trt_centerpoint.eval.disagreement import MIN_SCORE, WITHIN_M, confident, worst_frames
from trt_centerpoint.eval.match import match_detections, merge_matches
from trt_centerpoint.eval.tensor_metrics import tensor_metrics
from trt_centerpoint.export.head.export import RPN_HEAD_INPUT
from trt_centerpoint.fileio import atomic_write_json
from trt_centerpoint.model.decode import Detections, decode
from trt_centerpoint.report.bev import BoxLayer, bev_chart
from trt_centerpoint.report.table import format_table
from trt_centerpoint.runtime.libspconv.beside import libspconv_beside_reference
from trt_centerpoint.runtime.pipeline import Pipeline, make_pipeline, split_tasks
from trt_centerpoint.runtime.scn_runner import OutputBoundWarning
from trt_centerpoint.stages.evaluate import range_transforms

BACKENDS = ("onnx", "trt", "libspconv")  # the deployed files: the head on ONNX Runtime or its TensorRT engines;
# libspconv: the sparse part by NVIDIA's libspconv (a GPU), compared beside the reference runner too
RUNNER_NAMES = {"onnx": "onnxrt", "trt": "tensorrt", "libspconv": "libspconv"}  # runner names in the RunResults
AGREEMENT_RADII = (0.01, 0.1, 0.5)
DEFAULT_MAX_FRAMES = 50
# Polygraphy's per-element check: INT8 logits are expected to move; the bound flags gross breakage only.
POLYGRAPHY_ATOL, POLYGRAPHY_RTOL = 0.5, 0.1

__all__ = ["BACKENDS", "compare_outputs", "run_compare",
           "summary_lines"]


def _decode(outputs, cfg: ModelConfig) -> Detections:
    return decode(split_tasks(outputs), cfg)[0] if outputs is not None else Detections.empty(cfg.class_names)


class _Fp16Features:
    """A torch backbone fed FP16-rounded voxel features (what a scn file's FLOAT16 input does to them)."""

    def __init__(self, backbone):
        self.inner, self.name = backbone, f"{backbone.name}+fp16-features"

    def run(self, features, coords):
        return self.inner.run(features.half().float(), coords)


def _deployment_check(cfg, checkpoint, files_int8: list[Detections], frames) -> dict:
    """INT8 files vs the PyTorch fake-quant model: boxes matched within 1 cm / 10 cm / 50 cm, next to a
    baseline: the PyTorch fake-quant model against itself with FP16-rounded voxel features.

    Why the baseline: an INT8 network is discontinuous; a value that moves by a last bit can cross a
    quantization boundary, and the one-step flips cascade. Two INT8 implementations (or one, perturbed by
    the FP16 rounding of its input) therefore never agree to 1 cm on every box, while FP32 does (100 %).
    Files that agree with PyTorch about as well as PyTorch agrees with itself are faithful. `files_int8`: the
    INT8 files' detections on `frames`, as the comparison already made them.
    """
    torch_int8 = make_pipeline(cfg, "torch", "int8", checkpoint=checkpoint)
    perturbed = Pipeline(cfg, _Fp16Features(torch_int8.backbone), torch_int8.head)
    ref = [torch_int8.detect(p) for p in frames]
    out = {}
    for name, got in (("files", files_int8), ("baseline_fp16_features", [perturbed.detect(p) for p in frames])):
        out[name] = {f"{r:g}m": merge_matches([match_detections(a, b, r) for a, b in zip(ref, got)], r)
                     for r in AGREEMENT_RADII}
    return out


def compare_scn_layers(pipes: dict, points) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Every SparseConvolution / Add / Relu output of `scn.int8.onnx` against `scn.fp16.onnx` on one frame
    (`pipes`: the pipelines of the files by precision, whose backbones are the reference runners of both), and
    both files' BEVs of that frame (the head's per-layer comparison runs on the FP32 one; `compare_outputs` runs
    the heads on them: each backbone runs once). None when no voxel of the frame is in range.

    Both files name a tensor after the module that makes it ("conv2.3.conv1"), and share the geometry, so
    the active sites line up and the features compare element by element. Same output as `per_layer_onnx`.
    """
    voxels = pipes["fp32"].voxelize(points)
    if voxels.num_voxels == 0:
        return None
    runs, bevs = {}, {}
    for precision in ("fp32", "int8"):
        runner = pipes[precision].backbone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutputBoundWarning)
            bevs[precision], runs[precision] = runner.run(voxels.features, voxels.coords, keep=True)
    ops = {n.output[0]: n.op_type for n in runner.model.graph.node}
    layers = []
    for name, op in ops.items():
        if op not in ("SparseConvolution", "Add", "Relu") or name not in runs["fp32"]:
            continue
        ref, got = runs["fp32"][name].features, runs["int8"][name].features
        m = tensor_metrics(ref.float().cpu().numpy(), got.float().cpu().numpy())
        layers.append({"tensor": name, "op": op, "cosine": m["cosine"], "max_abs": m["max_abs"],
                       "median_abs": m["median_abs"], "snr_db": m["snr_db"]})
    return {"layers": layers, "first_jump": find_first_jump(layers)}, {p: b.cpu() for p, b in bevs.items()}


def _compare_frame(cfg: ModelConfig, pipes: dict, points, with_layers: bool = False) -> tuple[dict, tuple | None]:
    """One frame through the pipelines of both files: ({precision: (outputs, detections, overflows, conv counts)},
    the per-layer figures and FP32 BEV when `with_layers`, else None) (counts and overflows only when the backbone
    ran: a frame without voxels in range leaves them empty)."""
    layers = compare_scn_layers(pipes, points) if with_layers else None
    ran = {}
    for precision, pipe in pipes.items():
        if layers is not None:  # the backbones ran with every tensor kept: run the heads on their BEVs
            outputs = pipe.run_head(layers[1][precision])
        else:
            outputs = pipe.head_outputs(points)
        backbone = pipe.backbone
        overflows = dict(backbone.overflows) if outputs is not None else {}
        counts = {node: (count, backbone.convs[node].output_bound)
                  for node, count in getattr(backbone, "counts", {}).items()} if outputs is not None else {}
        ran[precision] = (outputs, _decode(outputs, cfg), overflows, counts)
    return ran, None if layers is None else (layers[0], layers[1]["fp32"])


def compare_outputs(cfg: ModelConfig, pipes: dict, frames, progress: bool = True, headroom: dict | None = None,
                    ctx: DistContext | None = None, layers: dict | None = None):
    """({precision: outputs per frame}, {precision: detections per frame}, output_bound overflows) of the
    pipelines of the files `pipes` ({"fp32": ..., "int8": ...}); an overflow is a conv whose active voxels exceeded
    its output_bound (libspconv would truncate; only reached with allow_overflow, else the runner raises).
    `headroom`, when given, collects per conv of the FP32 file its bound and the most active voxels seen.
    `layers`, when given (the backbones are reference runners), receives `compare_scn_layers` of the first frame
    ("figures", "bev" of the FP32 file, "frame": 0), computed from the same backbone runs.

    Under torchrun (`ctx`) each step runs one frame per rank and rank 0 merges them in frame order (the other
    ranks return empty figures)."""
    ctx = ctx or DistContext()
    outs = {"fp32": [], "int8": []}
    dets = {"fp32": [], "int8": []}
    overflows: dict[str, dict] = {}
    with warnings.catch_warnings(), tqdm(total=len(frames), desc="compare", unit="frame",
                                         disable=not (progress and ctx.is_main)) as bar:
        warnings.simplefilter("ignore", OutputBoundWarning)  # collected below, reported once
        for indices, mine in lockstep(frames, ctx):
            result = (_compare_frame(cfg, pipes, frames[mine], with_layers=layers is not None and mine == 0)
                      if mine is not None else None)
            for frame in gather(result, ctx) or []:
                if frame is None:
                    continue
                frame, kept = frame
                if kept is not None:
                    layers.update(figures=kept[0], bev=kept[1], frame=0)
                for precision, (outputs, detections, frame_overflows, counts) in frame.items():
                    outs[precision].append(outputs)
                    dets[precision].append(detections)
                    for node, (count, bound) in frame_overflows.items():
                        seen = overflows.setdefault(node, {"max_active": 0, "output_bound": bound, "frames": 0})
                        seen["max_active"] = max(seen["max_active"], count)
                        seen["frames"] += precision == "fp32"
                    if headroom is not None and precision == "fp32":
                        _track_headroom(headroom, counts)
            bar.update(len(indices))
    return outs, dets, overflows


def _track_headroom(headroom: dict, counts: dict[str, tuple[int, int | None]]) -> None:
    """Per sparse conv: its output_bound, the most active voxels seen, and their ratio (the report's headroom);
    `counts`: one frame's {conv: (active voxels, output_bound)}."""
    for node, (count, bound) in counts.items():
        row = headroom.setdefault(node, {"output_bound": bound, "max_active": 0})
        row["max_active"] = max(row["max_active"], count)
        row["headroom"] = None if not (bound and row["max_active"]) else bound / row["max_active"]


def _libspconv_beside_reference(pipes: dict, points) -> dict:
    """Per file (fp16, int8): libspconv's BEV against the reference runner's on one frame, first differing layer."""
    voxels = pipes["fp32"].voxelize(points)
    out = {}
    for precision, pipe in pipes.items():
        runner = pipe.backbone
        out[precision] = libspconv_beside_reference(runner.path, runner.spconv, voxels.features, voxels.coords)
    return out


def draw_worst_frames(cfg: ModelConfig, out: Path, frames, dets: dict, count: int) -> list[dict]:
    """`bev_1.png`, ... in `out`: the `count` frames where INT8 and FP32 disagree most (worst first), with their
    points, ground truth (if labeled), FP32 and INT8 boxes (score >= MIN_SCORE); returns what each shows."""
    count = min(count, len(BEV_PNGS), len(frames.points))
    pcr = cfg.voxel.point_cloud_range
    drawn = []
    for rank, (i, disagreement) in enumerate(worst_frames(dets["fp32"], dets["int8"], count)):
        stem = frames.stems[i]
        truth = (frames.ground_truth or {}).get(stem) or {}
        gt = np.asarray(truth.get("boxes") or np.zeros((0, 9)), np.float64)
        fp32, int8 = (confident(dets[p][i]).boxes.double().numpy() for p in ("fp32", "int8"))
        layers = [BoxLayer("ground truth", gt, "tab:green", linewidth=2.0),
                  BoxLayer("FP32", fp32, "tab:blue", "--"), BoxLayer("INT8", int8, "tab:red")]
        bev_chart(out / BEV_PNGS[rank], frames.points[i], layers, (pcr[0], pcr[3], pcr[1], pcr[4]),
                  f"{stem}: {disagreement} box(es) differ (score >= {MIN_SCORE:g}, {WITHIN_M:g} m)")
        drawn.append({"png": BEV_PNGS[rank], "stem": stem, "disagreement": disagreement, "gt_boxes": len(gt),
                      "fp32_boxes": len(fp32), "int8_boxes": len(int8)})
    for stale in BEV_PNGS[len(drawn):]:
        (out / stale).unlink(missing_ok=True)
    return drawn


def run_compare(cfg: ModelConfig, artifacts: str | Path, data: str | Path, **options) -> dict:
    """Compare the FP32 and INT8 files on `data` (options: `_compare_on_rank`). Under torchrun the ranks share
    the frames, rank 0 computes the figures and writes the files, and every rank returns the figures."""
    ctx = context()
    try:
        return broadcast(_compare_on_rank(cfg, artifacts, data, ctx=ctx, **options), ctx)
    finally:
        shutdown(ctx)


def _compare_on_rank(cfg: ModelConfig, artifacts: str | Path, data: str | Path, *, out: str | Path | None = None,
                     checkpoint: str | Path | None = None, max_frames: int = DEFAULT_MAX_FRAMES, save_frames: int = 3,
                     verify_frames: int = 3, progress: bool = True, log: Callable[[str], None] = print,
                     backend: str = "onnx", allow_overflow: bool = False,
                     run_results_mb: float = DEFAULT_RUN_RESULTS_MB, bev_frames: int = len(BEV_PNGS),
                     ctx: DistContext | None = None) -> dict | None:
    """Compare the FP32 and INT8 files on `data`, the head run by `backend` ("onnx": ONNX Runtime, "trt": the
    TensorRT engines); write compare.json, the RunResults and the detections to `out` (default:
    `artifacts`). Returns the figures (the report's `tensors`, `detections`, `accuracy`, `per_layer`
    sections); None on a rank other than 0."""
    start = time.perf_counter()
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: compare runs the deployed files, choose from {', '.join(BACKENDS)}")
    artifacts = Path(artifacts)
    out = Path(out) if out is not None else artifacts
    if max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    frames = load_frames(data, cfg, max_frames)
    if not frames.points:
        raise UserError(f"{data}: no point files")
    pipes = {p: make_pipeline(cfg, backend, p, artifacts=artifacts, allow_overflow=allow_overflow)
             for p in ("fp32", "int8")}
    headroom: dict[str, dict] = {}
    first: dict | None = {} if backend != "libspconv" else None  # the first frame's per-layer figures, same runs
    outs, dets, overflows = compare_outputs(cfg, pipes, frames.points, progress, headroom, ctx, layers=first)
    if ctx is not None and not ctx.is_main:  # rank 0 has every frame's results and does the rest
        for pipe in pipes.values():
            pipe.close()
        return None
    if overflows:
        worst = max(overflows, key=lambda n: overflows[n]["max_active"] / overflows[n]["output_bound"])
        log(f"warning: {len(overflows)} sparse conv(s) exceed their output_bound on these frames (worst {worst}: "
            f"{overflows[worst]['max_active']} active voxels > {overflows[worst]['output_bound']}); libspconv would "
            "drop voxels: export with --calib-data frames like these, a larger --bound-margin or --output-bound")
    ran = [i for i, o in enumerate(outs["fp32"]) if o is not None]
    if not ran:
        raise UserError(f"{data}: no frame has a point inside the config's point_cloud_range")
    ref, got = [outs["fp32"][i] for i in ran], [outs["int8"][i] for i in ran]

    tensors = compare_runs(ref, got)
    runner = RUNNER_NAMES[backend]
    saved = {f"{runner}-fp32": ref[:save_frames], f"{runner}-int8": got[:save_frames]}
    kept, run_results_note = fit_run_results(saved, run_results_mb)
    run_results_path = save_run_results(out / RUN_RESULTS, kept)
    if run_results_note["crop"]:
        log(f"{RUN_RESULTS}: one frame does not fit in {run_results_mb:g} MB; kept the central window "
            f"{run_results_note['crop']} of the first frame's maps (the figures cover every frame, whole maps)")
    accuracy_check = polygraphy_accuracy(to_run_results(saved), POLYGRAPHY_ATOL, POLYGRAPHY_RTOL)

    # per layer: the two scn files on the same voxels, and the two head ONNX files on the same FP32 BEV (an
    # engine's intermediate tensors cannot be marked as outputs, so the head is compared on its ONNX files)
    libspconv = None
    if backend == "libspconv":  # its layers are not visible: per layer on the reference runner, plus the bisection
        libspconv = _libspconv_beside_reference(pipes, frames.points[ran[0]])
        layer_pipes = {p: make_pipeline(cfg, "onnx", p, artifacts=artifacts, allow_overflow=True) for p in pipes}
    else:
        layer_pipes = pipes
    if first and first["frame"] == ran[0]:
        per_layer_backbone, bev = first["figures"], first["bev"]
    else:  # the first frame had no voxel in range, or the backbone is libspconv's: run the reference runners
        per_layer_backbone, bevs = compare_scn_layers(layer_pipes, frames.points[ran[0]])
        bev = bevs["fp32"]
    bev = bev.numpy()
    for pipe in {id(p): p for p in [*pipes.values(), *layer_pipes.values()]}.values():
        pipe.close()  # their ONNX Runtime sessions: a nuScenes-size head holds a GB each

    agreement = {f"{r:g}m": merge_matches([match_detections(a, b, r) for a, b in zip(dets["fp32"], dets["int8"])], r)
                 for r in AGREEMENT_RADII}
    detections = {"int8_vs_fp32": agreement, "frames": len(frames.points)}
    if checkpoint is not None and verify_frames > 0:
        checked = ran[:verify_frames]
        detections["int8_files_vs_pytorch_fake_quant"] = _deployment_check(
            cfg, checkpoint, [dets["int8"][i] for i in checked], [frames.points[i] for i in checked])

    per_layer = per_layer_onnx(onnx.load(str(artifacts / HEAD_FILES["fp32"])),
                               onnx.load(str(artifacts / HEAD_FILES["int8"])), {RPN_HEAD_INPUT: bev})
    if per_layer["first_jump"]:
        log(f"per layer: the error first jumps at {per_layer['first_jump']}")

    predictions = {p: {s: d.to_json_list() for s, d in zip(frames.stems, dets[p])} for p in ("fp32", "int8")}
    accuracy = None
    if frames.ground_truth is not None:
        accuracy = {"frames": len(frames.stems), "backend": backend}
        for precision in ("fp32", "int8"):
            metrics = evaluate(predictions[precision], frames.ground_truth, cfg.class_names,
                               class_range=cfg.eval.class_range, range_transforms=range_transforms(data),
                               distance_bands=cfg.eval.distance_bands)
            accuracy[precision] = {"mAP": metrics["mAP"], "per_class": metrics["per_class"],
                                   "mean_tp_errors": metrics.get("mean_tp_errors"),
                                   "nds_without_aae": metrics.get("nds_without_aae"), "bands": metrics.get("bands")}
        accuracy["delta_mAP"] = accuracy["int8"]["mAP"] - accuracy["fp32"]["mAP"]

    for precision, name in DETECTIONS.items():
        write_detections(out / name, predictions[precision])
    bev = draw_worst_frames(cfg, out, frames, dets, bev_frames)
    figures = {"bev": bev, "output_bound_overflows": overflows, "output_bound_headroom": headroom,
               "per_layer_backbone": per_layer_backbone, "tensors": tensors, "libspconv_vs_reference": libspconv,
               "polygraphy": accuracy_check, "per_layer": per_layer, "detections": detections,
               "accuracy": accuracy, "run_results": run_results_path.name, "run_results_saved": run_results_note,
               "frames": len(frames.points),
               "frames_with_voxels": len(ran), "data": str(data), "seconds": time.perf_counter() - start}
    atomic_write_json(out / COMPARE_JSON, figures)
    worst = min(tensors, key=lambda n: tensors[n]["cosine"])
    log(f"compare: {len(ran)} frame(s); lowest cosine {tensors[worst]['cosine']:.6f} ({worst}); boxes matched "
        f"within 10 cm {agreement['0.1m']['matched_fraction']:.3f}"
        + (f"; mAP FP32 {accuracy['fp32']['mAP']:.4f} INT8 {accuracy['int8']['mAP']:.4f}" if accuracy else ""))
    return figures


def summary_lines(figures: dict, out_dir: str | Path) -> list[str]:
    """What `trt-centerpoint compare` prints: per-output figures, the first jump, box agreement, mAP, files."""
    rows = [[name, f"{m['cosine']:.6f}", f"{m['max_abs']:.3g}", f"{m['median_abs']:.3g}", f"{m['snr_db']:.1f}"]
            for name, m in figures["tensors"].items()]
    lines = format_table(["output", "cosine", "max abs", "median abs", "SNR dB"], rows).splitlines()
    if figures["per_layer"]["first_jump"]:
        lines.append(f"per layer: the error first jumps at {figures['per_layer']['first_jump']}")
    for precision, rec in (figures.get("libspconv_vs_reference") or {}).items():
        where = rec["first_difference"]
        lines.append(f"{rec['library']} vs reference runner ({rec['file']}): cosine {rec['cosine']:.6f}, relative "
                     f"error {rec['relative_error']:.3g}" + (f"; first differs at {where['node']} ({where['tensor']})"
                                                             if where else ""))
    for radius, m in figures["detections"]["int8_vs_fp32"].items():
        lines.append(f"INT8 vs FP32 boxes within {radius}: {m['matched_fraction']:.3f}")
    check = figures["detections"].get("int8_files_vs_pytorch_fake_quant")
    if check:
        for radius, m in check["files"].items():
            base = check["baseline_fp16_features"][radius]["matched_fraction"]
            lines.append(f"INT8 files vs PyTorch fake quant within {radius}: {m['matched_fraction']:.3f} (PyTorch vs "
                         f"itself with FP16-rounded voxel features: {base:.3f})")
    if figures["accuracy"]:
        a = figures["accuracy"]
        lines.append(f"mAP FP32 {a['fp32']['mAP']:.4f}  INT8 {a['int8']['mAP']:.4f}  ({a['delta_mAP']:+.4f})")
        for band, m in (a["fp32"].get("bands") or {}).items():
            other = a["int8"]["bands"][band]["mAP"]
            if m["mAP"] is not None and other is not None:
                lines.append(f"  {band}: mAP FP32 {m['mAP']:.4f}  INT8 {other:.4f}  ({other - m['mAP']:+.4f})")
    if figures.get("bev"):
        lines.append(f"bird's-eye views of the frames where INT8 and FP32 disagree most: "
                     f"{', '.join(str(Path(out_dir) / b['png']) for b in figures['bev'])}")
    lines.append(f"wrote {Path(out_dir) / COMPARE_JSON} and {Path(out_dir) / RUN_RESULTS} (Polygraphy RunResults)")
    return lines
