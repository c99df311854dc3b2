"""`trt-centerpoint build`: PTQ (or QAT) -> export -> check -> engine -> compare -> bench -> report.

Every stage is a function of files in, files out, recorded in the build folder's `manifest.json` with
the hashes of its inputs, its parameters and the hashes of its outputs; a stage whose record still
matches (same inputs and parameters, outputs present and unchanged) is skipped. So a second run costs
the hashing, deleting an artifact reruns the stage that makes it (and, if its bytes change, what reads
it), and an interrupted build resumes: every artifact is written to a temporary name and renamed, and a
stage is recorded only after its outputs are complete.

With no arguments: the bundled sample model (`samples/synthetic_small.pth`, config `synthetic_small`)
and scenes generated into `BUILD/data/{calib,eval}` (labeled, so the report has mAP).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trt_centerpoint.config import ModelConfig, config_to_dict, load_config
from trt_centerpoint.errors import UserError
from trt_centerpoint.manifest import Manifest, file_sha256, tree_sha256

SAMPLE_CONFIG = "synthetic_small"
SAMPLE_CHECKPOINT = Path(__file__).resolve().parents[2] / "samples" / "synthetic_small.pth"
DATA_SEEDS = {"calib": 101, "eval": 202}
SENSITIVITY_PNG = "sensitivity.png"
REPORT_FILES = ("report.md", "report.json", "latency.png", "errors.png")  # written by the report stage

__all__ = ["BuildOptions", "SAMPLE_CHECKPOINT", "SAMPLE_CONFIG", "run_build"]


@dataclass
class BuildOptions:
    config: str | Path = SAMPLE_CONFIG
    checkpoint: str | Path | None = None  # None: the bundled sample
    calib_data: str | Path | None = None  # None: generated
    eval_data: str | Path | None = None  # None: generated (labeled)
    out: str | Path = "build"
    qat: bool = False
    method: str = "mse"
    calib_frames: int = 32
    eval_frames: int = 50
    qat_epochs: int = 1
    bench_iterations: int = 20
    bench_warmup: int = 3
    workspace_mb: int = 1024
    progress: bool = True


@dataclass
class StageLog:
    """What each stage did, for the report's stage table and the terminal."""

    stages: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, status: str, seconds: float = 0.0, detail: str = "") -> None:
        self.stages[name] = {"status": status, "seconds": round(seconds, 2), "detail": detail}


def _sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _generate(out: Path, kind: str, frames: int, cfg: ModelConfig, progress: bool) -> None:
    """A labeled synthetic data set in `out`, made in a temporary folder and renamed into place."""
    from trt_centerpoint.data.synth import write_dataset

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_dataset(tmp, frames=frames, seed=DATA_SEEDS[kind], config=cfg, progress=progress)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_leftovers(out: Path) -> int:
    """Temporary files / folders a killed build left behind (`fileio.atomic_path`'s `.NAME.*.tmp`, the data
    sets' `.calib.*` / `.eval.*` folders). Only the build's own naming patterns are touched."""
    count = 0
    for path in [*out.glob(".*.tmp"), *(out / "data").glob(".*.tmp")]:
        path.unlink(missing_ok=True)
        count += 1
    for kind in DATA_SEEDS:
        for folder in (out / "data").glob(f".{kind}.*"):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                count += 1
    return count


class _Build:
    def __init__(self, opts: BuildOptions, log: Callable[[str], None]):
        self.opts, self.log = opts, log
        self.out = Path(opts.out)
        self.cfg = load_config(opts.config)
        self.checkpoint = Path(opts.checkpoint) if opts.checkpoint is not None else SAMPLE_CHECKPOINT
        if not self.checkpoint.is_file():
            hint = "" if opts.checkpoint is not None else (" (the bundled sample ships in the source checkout's "
                                                          "samples/; give --checkpoint)")
            raise UserError(f"{self.checkpoint}: no such checkpoint{hint}")
        self.out.mkdir(parents=True, exist_ok=True)
        removed = _remove_leftovers(self.out)
        if removed:
            log(f"removed {removed} temporary file(s) left by an interrupted build")
        self.manifest = Manifest(self.out)
        self.stages = StageLog()
        self.config_sha = _sha_json(config_to_dict(self.cfg))

    def _skip(self, stage: str, inputs: dict, params: dict, still_valid: Callable[[dict], bool] | None = None) -> bool:
        self.manifest = Manifest(self.out)  # stages that record themselves write the manifest too
        rec = self.manifest.stages.get(stage)
        if self.manifest.up_to_date(stage, inputs, params) and (still_valid is None or still_valid(rec.extra)):
            what = rec.extra.get("detail") or "outputs present"
            self.stages.add(stage, "skipped", rec.seconds, f"up to date (made {rec.finished}: {what})")
            self.log(f"[{stage}] up to date, skipped")
            return True
        self.log(f"[{stage}] running")
        return False

    def _record(self, stage: str, inputs: dict, params: dict, outputs: list[str], start: float, detail: str = "",
                extra: dict | None = None) -> None:
        self.manifest = Manifest(self.out)
        seconds = time.perf_counter() - start
        self.manifest.record(stage, inputs, params, outputs, seconds, {**(extra or {}), "detail": detail})
        self.stages.add(stage, "ran", seconds, detail)

    # --- stages ----------------------------------------------------------------------------------

    def data(self) -> tuple[Path, Path]:
        folders = {}
        for kind, given, frames in (("calib", self.opts.calib_data, self.opts.calib_frames),
                                    ("eval", self.opts.eval_data, self.opts.eval_frames)):
            if given is not None:
                folders[kind] = Path(given)
                if not folders[kind].is_dir():
                    raise UserError(f"{given}: no such data folder (--{kind}-data)")
                continue
            folders[kind] = self.out / "data" / kind
            stage = f"data_{kind}"
            params = {"frames": frames, "seed": DATA_SEEDS[kind], "config": self.cfg.name}
            inputs = {"config": self.config_sha}
            meta = f"data/{kind}/meta.json"
            folder = folders[kind]
            if self._skip(stage, inputs, params, lambda extra, folder=folder: extra.get("tree") == tree_sha256(folder)):
                continue
            start = time.perf_counter()
            _generate(folders[kind], kind, frames, self.cfg, self.opts.progress)
            self._record(stage, inputs, params, [meta], start, f"{frames} generated frames (seed {DATA_SEEDS[kind]})",
                         {"tree": tree_sha256(folders[kind])})
        return folders["calib"], folders["eval"]

    def quantize(self, calib: Path, eval_data: Path) -> Path:
        from trt_centerpoint.calib.ptq import run_ptq

        inputs = {"checkpoint": file_sha256(self.checkpoint), "config": self.config_sha,
                  "calib_data": tree_sha256(calib)}
        params = {"method": self.opts.method, "frames": self.opts.calib_frames, "sparse_weights_fp16": True}
        ptq = self.out / "ptq.pth"
        if not self._skip("ptq", inputs, params):
            start = time.perf_counter()
            meta = run_ptq(self.cfg, self.checkpoint, calib, ptq, num_frames=self.opts.calib_frames,
                           method=self.opts.method, progress=self.opts.progress)
            self._record("ptq", inputs, params, ["ptq.pth"], start,
                         f"{meta['num_quantizers']} quantizers, {self.opts.method}, {meta['num_frames']} frames")
        if not self.opts.qat:
            return ptq
        from trt_centerpoint.calib.qat import QATOptions, run_qat

        qat = self.out / "qat.pth"
        labeled = (calib / "labels").is_dir()
        q_inputs = {"ptq": file_sha256(ptq), "data": tree_sha256(calib)}
        q_params = {"epochs": self.opts.qat_epochs, "objective": "supervised" if labeled else "distill"}
        if not self._skip("qat", q_inputs, q_params):
            start = time.perf_counter()
            run_qat(ptq, calib, qat, QATOptions(objective=q_params["objective"], epochs=self.opts.qat_epochs),
                    progress=self.opts.progress)
            self._record("qat", q_inputs, q_params, ["qat.pth"], start,
                         f"{q_params['objective']} QAT, {self.opts.qat_epochs} epoch(s)")
        return qat

    def export(self, quantized: Path, calib: Path) -> None:
        from trt_centerpoint.exporter.stage import STAGE, export_key, run_export

        inputs, params = export_key(self.cfg, quantized, calib)
        if self._skip(STAGE, inputs, params):
            return
        start = time.perf_counter()
        record = run_export(self.cfg, quantized, self.out, calib_data=calib, log=lambda line: self.log(f"  {line}"))
        v = record["extra"]["validation"]
        detail = (f"scn.int8 cosine {v['scn.int8.onnx']['min_cosine']:.6f} (file weights), "
                  f"{v['scn.int8.onnx']['vs_fp32_weights']['min_cosine']:.6f} (FP32 weights); rpn_head.int8 median "
                  f"abs error {v['rpn_head.int8.onnx']['max_median_abs_error']:.2g} layer by layer")
        self.stages.add(STAGE, "ran", time.perf_counter() - start, detail)
        self.manifest = Manifest(self.out)
        self.manifest.stages[STAGE].extra["detail"] = detail
        self.manifest.save()

    def check(self) -> list[str]:
        from trt_centerpoint.exporter.lint import lint_file

        files = sorted(p.name for p in self.out.glob("*.onnx"))
        inputs = self._artifact_inputs(files)
        if self._skip("check", inputs, {}):
            return files
        start = time.perf_counter()
        findings = [line for name in files for line in lint_file(self.out / name)[1]]
        if findings:
            raise UserError(f"check: {findings[0]} ({len(findings)} finding(s); `trt-centerpoint check` lists them)")
        self._record("check", inputs, {}, [], start, f"{len(files)} files, no findings")
        return files

    def engine(self) -> dict:
        from trt_centerpoint.engine.trt_env import tensorrt_available

        available, reason = tensorrt_available()
        if not available:
            self.stages.add("engine", "unavailable", 0.0, reason)
            self.log(f"[engine] skipped: {reason}")
            return {"available": False, "reason": reason}
        from trt_centerpoint.engine.trt_build import build_engine

        for precision in ("fp32", "int8"):
            onnx_name, plan = f"rpn_head.{precision}.onnx", f"rpn_head.{precision}.plan"
            inputs, params = {"onnx": file_sha256(self.out / onnx_name)}, {"workspace_mb": self.opts.workspace_mb}
            stage = f"engine_{precision}"
            if self._skip(stage, inputs, params):
                continue
            start = time.perf_counter()
            build_engine(self.out / onnx_name, self.out / plan, workspace_mb=self.opts.workspace_mb,
                         timing_cache=self.out / "timing.cache")
            self._record(stage, inputs, params, [plan], start, f"{plan} from {onnx_name}")
        return {"available": True, "reason": reason}

    def _artifact_inputs(self, names) -> dict:
        return {name: file_sha256(self.out / name) for name in names}

    def compare(self, eval_data: Path, quantized: Path) -> dict:
        from trt_centerpoint.pipeline.compare_stage import COMPARE_JSON, DETECTIONS, RUN_RESULTS, run_compare

        inputs = {**self._artifact_inputs(["scn.fp16.onnx", "scn.int8.onnx", "rpn_head.fp32.onnx",
                                           "rpn_head.int8.onnx"]),
                  "eval_data": tree_sha256(eval_data), "checkpoint": file_sha256(quantized)}
        params = {"max_frames": self.opts.eval_frames}
        if not self._skip("compare", inputs, params):
            start = time.perf_counter()
            figures = run_compare(self.cfg, self.out, eval_data, checkpoint=quantized, max_frames=self.opts.eval_frames,
                                  progress=self.opts.progress, log=lambda line: self.log(f"  {line}"))
            overflows = figures["output_bound_overflows"]
            detail = f"{figures['frames']} frames" + (f"; {len(overflows)} conv(s) over output_bound" if overflows else "")
            self._record("compare", inputs, params, [COMPARE_JSON, RUN_RESULTS, *DETECTIONS.values()], start, detail)
        return json.loads((self.out / COMPARE_JSON).read_text())

    def bench(self, eval_data: Path, engine: dict) -> dict:
        from trt_centerpoint.pipeline.bench_stage import BENCH_JSON, BENCH_PNG, latency_section, run_bench

        backends = ["onnx"] + (["trt"] if engine["available"] else [])
        names = ["scn.fp16.onnx", "scn.int8.onnx", "rpn_head.fp32.onnx", "rpn_head.int8.onnx"]
        names += [f"rpn_head.{p}.plan" for p in ("fp32", "int8")] if engine["available"] else []
        inputs = {**self._artifact_inputs(names), "eval_data": tree_sha256(eval_data)}
        params = {"backends": backends, "iterations": self.opts.bench_iterations, "warmup": self.opts.bench_warmup}
        if not self._skip("bench", inputs, params):
            start = time.perf_counter()
            run_bench(self.cfg, self.out, eval_data, backends=backends, iterations=self.opts.bench_iterations,
                      warmup=self.opts.bench_warmup, progress=self.opts.progress, log=lambda line: self.log(f"  {line}"))
            self._record("bench", inputs, params, [BENCH_JSON, BENCH_PNG], start,
                         f"{', '.join(backends)} x fp32/int8, {self.opts.bench_iterations} iterations")
        from trt_centerpoint.engine.bench import BenchResult

        raw = json.loads((self.out / BENCH_JSON).read_text())
        return latency_section({label: BenchResult.from_dict(r) for label, r in raw.items()})

    def report(self, quantized: Path, compare: dict, latency: dict, engine: dict) -> dict:
        from trt_centerpoint.calib.ptq import read_ptq_meta
        from trt_centerpoint.report.build_report import write_report

        meta = read_ptq_meta(quantized)
        artifacts = {}
        for path in sorted(self.out.iterdir()):
            if path.is_file() and path.suffix in (".onnx", ".plan", ".pth", ".json", ".png", ".cache") \
                    and path.name not in REPORT_FILES and path.name != "manifest.json":
                artifacts[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        data = {
            "title": f"CenterPoint INT8 build: {self.cfg.name}",
            "model": {"config": self.cfg.name, "checkpoint": str(self.checkpoint),
                      "checkpoint_sha256": file_sha256(self.checkpoint),
                      "quantization": {"stage": meta.get("stage", "ptq"), "method": meta.get("amax_method"),
                                       "frames": meta.get("num_frames"), "skip": meta.get("skip")}},
            "accuracy": compare.get("accuracy"),
            "tensors": compare.get("tensors"),
            "detections": _flat_detections(compare.get("detections") or {}),
            "per_layer": compare.get("per_layer"),
            "per_layer_backbone": compare.get("per_layer_backbone"),
            "validation": _export_validation(self.manifest),
            "latency": latency,
            "artifacts": artifacts,
            "stages": self.stages.stages,
            "engine": engine,
            "versions": self.manifest.versions,
        }
        if (self.out / SENSITIVITY_PNG).is_file():  # `trt-centerpoint sensitivity --out BUILD` was run
            data["sensitivity"] = {"png": SENSITIVITY_PNG}
        inputs = {name: a["sha256"] for name, a in artifacts.items()}
        params = {"config": self.cfg.name, "engine": engine}
        if self._skip("report", inputs, params):
            return json.loads((self.out / "report.json").read_text())
        start = time.perf_counter()
        self.stages.add("report", "ran", 0.0, "report.md, report.json, PNGs")
        written = write_report(self.out, data)
        self._record("report", inputs, params, [p.name for p in written], start, "report.md, report.json, PNGs")
        return data


def _export_validation(manifest: Manifest) -> dict:
    """What the export checked, file by file, in a line each (figures from the export's manifest record)."""
    rec = manifest.stages.get("export")
    v = rec.extra.get("validation", {}) if rec else {}
    out = {}
    if "scn.fp16.onnx" in v:
        out["scn.fp16.onnx"] = f"reference runner vs PyTorch FP32 backbone: cosine {v['scn.fp16.onnx']['min_cosine']:.8f}"
    if "scn.int8.onnx" in v:
        s = v["scn.int8.onnx"]
        out["scn.int8.onnx"] = (f"reference runner vs PyTorch fake quant: cosine {s['min_cosine']:.6f} (FP16 inputs, as "
                                f"the file), {s['vs_fp32_weights']['min_cosine']:.6f} (as loaded)")
    if "scn.int8.qdq.onnx" in v:
        out["scn.int8.qdq.onnx"] = "executes bit-identically to scn.int8.onnx"
    if "rpn_head.fp32.onnx" in v:
        out["rpn_head.fp32.onnx"] = f"ONNX Runtime vs PyTorch: max abs error {v['rpn_head.fp32.onnx']['max_abs_error']:.3g}"
    for name in ("rpn_head.int8.onnx", "rpn_head.int8.fp16.onnx"):
        if name in v:
            h = v[name]
            out[name] = (f"ONNX Runtime vs PyTorch fake quant: median abs error {h['max_median_abs_error']:.3g} layer by "
                         f"layer (gate {h['tolerance']:g}), {h['free_running']['max_median_abs_error']:.3g} free running")
    return out


def _flat_detections(detections: dict) -> dict:
    """The report's `detections` as plain figures: INT8 vs FP32 boxes matched within 10 cm (the headline),
    1 cm and 50 cm; and the INT8 files vs the PyTorch fake-quant model at the same radii."""
    agreement = detections.get("int8_vs_fp32", {})
    head = agreement.get("0.1m", {})
    out = {"matched_fraction": head.get("matched_fraction"), "within_m": head.get("within_m"),
           "frames": detections.get("frames"), "fp32_boxes": head.get("ref_boxes"), "int8_boxes": head.get("got_boxes")}
    for radius, figures in agreement.items():
        out[f"matched_fraction_{radius}"] = figures.get("matched_fraction")
    check = detections.get("int8_files_vs_pytorch_fake_quant") or {}
    for radius, figures in check.get("files", {}).items():
        out[f"int8_files_vs_pytorch_fake_quant_{radius}"] = figures.get("matched_fraction")
    for radius, figures in check.get("baseline_fp16_features", {}).items():
        out[f"pytorch_fake_quant_vs_itself_fp16_features_{radius}"] = figures.get("matched_fraction")
    return out


def run_build(opts: BuildOptions | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole chain into `opts.out`; returns the report data."""
    opts = opts or BuildOptions()
    start = time.perf_counter()
    build = _Build(opts, log)
    calib, eval_data = build.data()
    quantized = build.quantize(calib, eval_data)
    build.export(quantized, calib)
    build.check()
    engine = build.engine()
    compare = build.compare(eval_data, quantized)
    latency = build.bench(eval_data, engine)
    data = build.report(quantized, compare, latency, engine)
    data["stages"] = build.stages.stages  # this run's (a skipped report keeps the run that wrote it)
    data["seconds"] = time.perf_counter() - start
    return data
