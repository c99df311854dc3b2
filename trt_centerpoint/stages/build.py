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

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trt_centerpoint.artifacts import (
    BENCH_JSON,
    BENCH_PNG,
    COMPARE_ENGINES_DIR,
    COMPARE_JSON,
    DETECTIONS,
    ENGINE_FILES,
    ENGINE_SOURCES,
    MANIFEST,
    PRECISIONS,
    PTQ_CHECKPOINT,
    QAT_CHECKPOINT,
    REPORT_FILES,
    REPORT_JSON,
    RPN_HEAD_FP32,
    RPN_HEAD_INT8,
    RPN_HEAD_INT8_FP16,
    RUN_RESULTS,
    SCN_FP16,
    SCN_INT8,
    SCN_INT8_QDQ,
    SENSITIVITY_PNG,
    TIMING_CACHE,
    engine_file,
)
from trt_centerpoint.config import ModelConfig, config_to_dict, load_config
from trt_centerpoint.data.nuscenes import NuScenesSelection
from trt_centerpoint.data.source import DataSource, source_sha256
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.errors import UserError
from trt_centerpoint.eval.bench import BenchResult
from trt_centerpoint.fileio import check_output_dir, ensure_dir
from trt_centerpoint.lockfile import hold_lock
from trt_centerpoint.manifest import Manifest, file_sha256, json_sha256, tree_sha256
from trt_centerpoint.quant.ptq import read_ptq_meta
from trt_centerpoint.quant.qat import DEFAULT_EPOCHS, QAT_SKIP, QATOptions, run_qat
from trt_centerpoint.quant.recipe import DEFAULT_RECIPE, default_skip, float_layer_reasons, run_recipe
from trt_centerpoint.report.markdown import write_report
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.trt.build import RTX_DEFAULT_TARGETS, artifact_paths, build_engine
from trt_centerpoint.runtime.trt.env import BUILDER_NAMES, require_builder, resolve_builder
from trt_centerpoint.runtime.trt.inspect import format_counts
from trt_centerpoint.stages.bench import latency_section, run_bench
from trt_centerpoint.stages.check import check_files
from trt_centerpoint.stages.compare import run_compare
from trt_centerpoint.stages.export import STAGE as EXPORT_STAGE
from trt_centerpoint.stages.export import export_checkpoint, export_key

SAMPLE_CONFIG = "synthetic_small"
SAMPLE_CHECKPOINT = Path(__file__).resolve().parents[2] / "samples" / "synthetic_small.pth"
DATA_SETS = {"calib": 101, "eval": 202}  # the generated data sets, each with its synthetic generator seed
REPORT_DETAIL = "report.md, report.json, PNGs"

__all__ = ["BuildOptions", "SAMPLE_CHECKPOINT", "SAMPLE_CONFIG", "run_build"]


@dataclass
class BuildOptions:
    config: str | Path = SAMPLE_CONFIG
    checkpoint: str | Path | None = None  # None: the bundled sample
    calib_data: DataSource | None = None  # a folder or a nuScenes selection; None: generated
    eval_data: DataSource | None = None  # None: generated (labeled)
    out: str | Path = "build"
    qat: bool = False
    recipe: str = DEFAULT_RECIPE  # `ptq --recipe` (with qat: calibrate, then the full QAT recipe)
    method: str = "mse"
    calib_frames: int = 32
    eval_frames: int = 50
    qat_epochs: int = DEFAULT_EPOCHS  # sample, 32 frames x 2 epochs: full-INT8 mAP 0.7415 vs FP32 0.7405
    bench_iterations: int = 20
    bench_seconds: float = 20.0  # per backend x precision: a nuScenes-size model takes seconds per frame on CPU
    bench_warmup: int = 2
    workspace_mb: int = 1024
    builder: str = "auto"  # auto | tensorrt | tensorrt-rtx (`runtime.trt.env.resolve_builder`)
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("8.6", "12.0"); () = its default
    progress: bool = True
    allow_overflow: bool = False  # compare / bench: warn instead of failing on an output_bound overflow
    libspconv: str | None = None  # NVIDIA libspconv folder: the check stage builds the scn files with it too


@dataclass
class StageEntry:
    """One row of the report's stage table: what a stage did in this run."""

    status: str  # "ran", "skipped" or "unavailable"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class StageLog:
    """What each stage did, for the report's stage table and the terminal."""

    entries: dict[str, StageEntry] = field(default_factory=dict)

    def add(self, name: str, status: str, seconds: float = 0.0, detail: str = "") -> None:
        self.entries[name] = StageEntry(status, round(seconds, 2), detail)

    def as_dict(self) -> dict[str, dict]:
        return {name: asdict(entry) for name, entry in self.entries.items()}


@dataclass
class StageOutcome:
    """What a stage's work made: its output files (relative to the build folder), a one-line summary, and
    what else its manifest record keeps (`extra`)."""

    outputs: list[str]
    detail: str
    extra: dict = field(default_factory=dict)


def _generate(out: Path, kind: str, frames: int, cfg: ModelConfig, progress: bool) -> None:
    """A labeled synthetic data set in `out` (written whole, replacing what was there: it is the build's own)."""
    write_dataset(out, frames=frames, seed=DATA_SETS[kind], config=cfg, progress=progress, force=True)


def _remove_leftovers(out: Path) -> int:
    """Temporary files / folders a killed build left behind (`fileio.atomic_path`'s `.NAME.*.tmp`, the export's
    `.files.*.tmp` folder, the data sets' `.calib.*` / `.eval.*` folders). Only the build's own naming patterns are
    touched, and only under the build lock."""
    count = 0
    for path in [*out.glob(".*.tmp"), *(out / "data").glob(".*.tmp")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        count += 1
    for kind in DATA_SETS:
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
        self.spconv = None
        if opts.libspconv:  # the architecture gate before anything runs (and our libspconv caller compiled)
            self.spconv = open_libspconv(opts.libspconv, opts.compute_capabilities)
            if not self.spconv.verdict.ok:
                raise UserError(f"libspconv gate: {self.spconv.verdict.line}")
        ensure_dir(self.out, "build folder")
        self.manifest = Manifest(self.out)
        self.stages = StageLog()
        self.config_sha = json_sha256(config_to_dict(self.cfg))

    def _run_stage(self, name: str, inputs: dict, params: dict, work: Callable[[], StageOutcome],
                   still_valid: Callable[[dict], bool] | None = None) -> bool:
        """Skip `name` when its manifest record matches `inputs` and `params` (its outputs intact, and
        `still_valid(extra)` if given); otherwise run `work` and record it. True when it ran."""
        rec = self.manifest.stages.get(name)
        if self.manifest.up_to_date(name, inputs, params) and (still_valid is None or still_valid(rec.extra)):
            what = rec.extra.get("detail") or "outputs present"
            self.stages.add(name, "skipped", rec.seconds, f"up to date (made {rec.finished}: {what})")
            self.log(f"[{name}] up to date, skipped")
            return False
        self.log(f"[{name}] running")
        start = time.perf_counter()
        outcome = work()
        seconds = time.perf_counter() - start
        self.manifest.record(name, inputs, params, outcome.outputs, seconds,
                             {**outcome.extra, "detail": outcome.detail})
        self.stages.add(name, "ran", seconds, outcome.detail)
        return True

    def _artifact_inputs(self, names) -> dict:
        return {name: file_sha256(self.out / name) for name in names}

    def _sublog(self, line: str) -> None:
        self.log(f"  {line}")

    # --- stages ----------------------------------------------------------------------------------

    def data(self) -> tuple[DataSource, DataSource]:
        folders = {}
        for kind, given, frames in (("calib", self.opts.calib_data, self.opts.calib_frames),
                                    ("eval", self.opts.eval_data, self.opts.eval_frames)):
            if isinstance(given, NuScenesSelection):
                folders[kind] = given
                continue
            if given is not None:
                folders[kind] = Path(given)
                if not folders[kind].is_dir():
                    raise UserError(f"{given}: no such data folder (--{kind}-data)")
                continue
            folder = folders[kind] = self.out / "data" / kind

            def generate(kind=kind, folder=folder, frames=frames) -> StageOutcome:
                _generate(folder, kind, frames, self.cfg, self.opts.progress)
                return StageOutcome([f"data/{kind}/meta.json"], f"{frames} generated frames (seed {DATA_SETS[kind]})",
                                    {"tree": tree_sha256(folder)})

            self._run_stage(f"data_{kind}", {"config": self.config_sha},
                            {"frames": frames, "seed": DATA_SETS[kind], "config": self.cfg.name}, generate,
                            still_valid=lambda extra, folder=folder: extra.get("tree") == tree_sha256(folder))
        return folders["calib"], folders["eval"]

    def quantize(self, calib: DataSource) -> Path:
        ptq = self.out / PTQ_CHECKPOINT
        # with --qat: calibration only (QAT's own list: the whole RPN and head INT8), then the full QAT recipe
        recipe = "calibrate" if self.opts.qat else self.opts.recipe
        skip = list(QAT_SKIP) if self.opts.qat else default_skip(recipe)

        def calibrate() -> StageOutcome:
            meta = run_recipe(self.cfg, self.checkpoint, calib, ptq, recipe=recipe, num_frames=self.opts.calib_frames,
                              method=self.opts.method, skip=skip, progress=self.opts.progress)
            learned = ", ranges learned label-free" if "learned_ranges" in meta else ""
            return StageOutcome([PTQ_CHECKPOINT], f"{meta['num_quantizers']} quantizers, {self.opts.method}, "
                                                  f"{meta['num_frames']} frames{learned}")

        self._run_stage("ptq", {"checkpoint": file_sha256(self.checkpoint), "config": self.config_sha,
                                "calib_data": source_sha256(calib)},
                        {"method": self.opts.method, "frames": self.opts.calib_frames, "sparse_weights_fp16": True,
                         "skip": skip, "recipe": recipe}, calibrate)
        if not self.opts.qat:
            return ptq

        qat = self.out / QAT_CHECKPOINT
        objective = QATOptions().objective  # distill from the float checkpoint (labels unused): quant/qat.py

        def fine_tune() -> StageOutcome:
            run_qat(ptq, calib, qat, QATOptions(objective=objective, epochs=self.opts.qat_epochs),
                    progress=self.opts.progress)
            return StageOutcome([QAT_CHECKPOINT], f"{objective} QAT, {self.opts.qat_epochs} epoch(s)")

        self._run_stage("qat", {"ptq": file_sha256(ptq), "data": source_sha256(calib)},
                        {"epochs": self.opts.qat_epochs, "objective": objective}, fine_tune)
        return qat

    def export(self, quantized: Path, calib: DataSource) -> None:
        def export() -> StageOutcome:
            result = export_checkpoint(self.cfg, quantized, calib_data=calib, log=self._sublog)
            result.write(self.out)
            return StageOutcome(result.names, result.summary(), result.extra())

        inputs, params = export_key(self.cfg, quantized, calib)
        self._run_stage(EXPORT_STAGE, inputs, params, export)

    def check(self) -> list[str]:
        files = sorted(p.name for p in self.out.glob("*.onnx"))

        spconv = self.spconv
        if spconv is not None:
            self._sublog(spconv.verdict.line)

        def check() -> StageOutcome:
            checks = check_files([self.out / name for name in files], spconv=spconv)
            findings = [line for c in checks for line in c.lines(verbose=False)]
            if findings:
                raise UserError(f"check: {findings[0]} ({len(findings)} finding(s); `trt-centerpoint check` lists "
                                "them)")
            parsed = sorted({c.parsed_by or c.parser for c in checks if c.kind == "onnx"})
            for c in checks:
                self._sublog(f"{c.path.name}: ok ({c.kind}; {c.parser})")
            extra = {"files": {c.path.name: {"kind": c.kind, "parser": c.parser} for c in checks}}
            if spconv is not None:
                extra["libspconv"] = {"gate": spconv.verdict.line, "where": spconv.where,
                                      "files": {c.path.name: c.libspconv for c in checks if c.libspconv}}
            return StageOutcome([], f"{len(files)} files, no lint findings; NVIDIA parser: {', '.join(parsed)}",
                                extra)

        params = {}
        if spconv is not None:
            params = {"libspconv": file_sha256(spconv.library.library), "gate": spconv.verdict.line}
        self._run_stage("check", self._artifact_inputs(files), params, check)
        return files

    def engine(self) -> dict:
        """The head engines (FP32, INT8, and INT8 with FP16 float parts when it was exported) from the builder
        `opts.builder` resolves to; returns what was built, for bench, compare and the report."""
        builder, reason = resolve_builder(self.opts.builder)
        if builder is None:
            self.stages.add("engine", "unavailable", 0.0, reason)
            self.log(f"[engine] skipped: {reason}")
            return {"available": False, "reason": reason}
        version = str(require_builder(builder, "build the engines").__version__)
        targets = list(self.opts.compute_capabilities)
        engines, record = {}, {}
        for onnx_name in [name for name in ENGINE_SOURCES if (self.out / name).is_file()]:
            plan = engine_file(onnx_name, builder)
            layers = artifact_paths(self.out / plan)["layers"].name

            def build(onnx_name=onnx_name, plan=plan, layers=layers) -> StageOutcome:
                result = build_engine(self.out / onnx_name, self.out / plan, workspace_mb=self.opts.workspace_mb,
                                      timing_cache=self.out / TIMING_CACHE if builder == "tensorrt" else None,
                                      builder=builder, compute_capabilities=targets)
                return StageOutcome([plan, layers], f"{plan} from {onnx_name} ({result.settings.builder_name} "
                                                    f"{result.settings.trt_version}, {result.seconds:.1f} s)")

            stage = "engine_" + onnx_name[len("rpn_head."):-len(".onnx")].replace(".", "_")
            self._run_stage(stage, {"onnx": file_sha256(self.out / onnx_name)},
                            {"workspace_mb": self.opts.workspace_mb, "builder": builder, "version": version,
                             "targets": targets}, build)
            record = json.loads((self.out / layers).read_text())
            engines[plan] = {"onnx": onnx_name, "bytes": record["engine_bytes"],
                             "build_seconds": record["build_seconds"], "layers_json": layers,
                             "layers": format_counts(record), "strongly_typed": record["strongly_typed"]}
        return {"available": True, "reason": reason, "builder": builder, "builder_name": BUILDER_NAMES[builder],
                "version": version, "engines": engines,
                "targets": record.get("targets") or (targets or list(RTX_DEFAULT_TARGETS)),
                "targets_default": builder == "tensorrt-rtx" and not targets,
                # a TensorRT engine runs here (auto chose TensorRT because a GPU can build); TensorRT-RTX ones
                # only with the TensorRT-RTX runtime on RTX GPUs, never here
                "runnable": builder == "tensorrt"}

    def compare(self, eval_data: DataSource, quantized: Path) -> dict:
        def compare() -> StageOutcome:
            figures = run_compare(self.cfg, self.out, eval_data, checkpoint=quantized, max_frames=self.opts.eval_frames,
                                  progress=self.opts.progress, log=self._sublog,
                                  allow_overflow=self.opts.allow_overflow)
            overflows = len(figures["output_bound_overflows"])
            detail = f"{figures['frames']} frames" + (f"; {overflows} conv(s) over output_bound" if overflows else "")
            pictures = [b["png"] for b in figures.get("bev") or []]
            return StageOutcome([COMPARE_JSON, RUN_RESULTS, *DETECTIONS.values(), *pictures], detail)

        inputs = {**self._artifact_inputs([SCN_FP16, SCN_INT8, RPN_HEAD_FP32, RPN_HEAD_INT8]),
                  "eval_data": source_sha256(eval_data), "checkpoint": file_sha256(quantized)}
        self._run_stage("compare", inputs, {"max_frames": self.opts.eval_frames}, compare)
        return json.loads((self.out / COMPARE_JSON).read_text())

    def compare_engines(self, eval_data: DataSource, quantized: Path, engine: dict) -> dict | None:
        """Where the TensorRT engines run here: the same comparison with the head on the INT8 and FP32 engines
        (`compare --backend trt`), into `compare_trt/`; a few figures for the report. None otherwise."""
        if not engine.get("runnable"):
            return None
        folder = self.out / COMPARE_ENGINES_DIR
        names = [f"{COMPARE_ENGINES_DIR}/{n}" for n in (COMPARE_JSON, RUN_RESULTS, *DETECTIONS.values())]

        def compare() -> StageOutcome:
            folder.mkdir(exist_ok=True)
            figures = run_compare(self.cfg, self.out, eval_data, out=folder, checkpoint=quantized,
                                  max_frames=self.opts.eval_frames, progress=self.opts.progress, log=self._sublog,
                                  backend="trt", allow_overflow=self.opts.allow_overflow)
            return StageOutcome(names, f"{figures['frames']} frames, head on the TensorRT engines")

        inputs = {**self._artifact_inputs([SCN_FP16, SCN_INT8, *ENGINE_FILES.values()]),
                  "eval_data": source_sha256(eval_data), "checkpoint": file_sha256(quantized)}
        self._run_stage("compare_engines", inputs, {"max_frames": self.opts.eval_frames}, compare)
        figures = json.loads((folder / COMPARE_JSON).read_text())
        cosines = {n: t["cosine"] for n, t in (figures.get("tensors") or {}).items() if "cosine" in t}
        worst = min(cosines, key=cosines.get) if cosines else None
        matched = _flat_detections(figures.get("detections") or {})
        return {"folder": COMPARE_ENGINES_DIR, "frames": figures.get("frames"), "engines": list(ENGINE_FILES.values()),
                "min_cosine": cosines.get(worst), "min_cosine_output": worst,
                "matched_fraction": matched.get("matched_fraction"), "within_m": matched.get("within_m"),
                "mAP": {p: (figures.get("accuracy") or {}).get(p, {}).get("mAP") for p in PRECISIONS}
                if figures.get("accuracy") else None}

    def bench(self, eval_data: DataSource, engine: dict) -> dict:
        backends = ["onnx"] + (["trt"] if engine.get("runnable") else [])  # TensorRT-RTX engines never run here

        def bench() -> StageOutcome:
            section = run_bench(self.cfg, self.out, eval_data, backends=backends,
                                iterations=self.opts.bench_iterations, warmup=self.opts.bench_warmup,
                                progress=self.opts.progress, log=self._sublog, allow_overflow=self.opts.allow_overflow,
                                max_seconds=self.opts.bench_seconds)
            ran = sorted({s.get("iterations") for s in (section or {}).get("settings", {}).values()} - {None})
            what = "-".join(str(n) for n in ran[:: max(1, len(ran) - 1)]) or str(self.opts.bench_iterations)
            short = bool(ran) and ran[0] < self.opts.bench_iterations
            cut = f" (stopped at {self.opts.bench_seconds:g} s per column)" if short else ""
            return StageOutcome([BENCH_JSON, BENCH_PNG], f"{', '.join(backends)} x fp32/int8, {what} iterations{cut}")

        names = [SCN_FP16, SCN_INT8, RPN_HEAD_FP32, RPN_HEAD_INT8]
        names += [ENGINE_FILES[p] for p in PRECISIONS] if engine.get("runnable") else []
        inputs = {**self._artifact_inputs(names), "eval_data": source_sha256(eval_data)}
        params = {"backends": backends, "iterations": self.opts.bench_iterations, "warmup": self.opts.bench_warmup,
                  "max_seconds": self.opts.bench_seconds}
        self._run_stage("bench", inputs, params, bench)
        raw = json.loads((self.out / BENCH_JSON).read_text())
        return latency_section({label: BenchResult.from_dict(r) for label, r in raw.items()})

    def report(self, quantized: Path, compare: dict, latency: dict, engine: dict) -> dict:
        meta = read_ptq_meta(quantized)
        artifacts = {}
        for path in sorted(self.out.iterdir()):
            if path.is_file() and path.suffix in (".onnx", ".plan", ".pth", ".json", ".png", ".cache") \
                    and path.name not in REPORT_FILES and path.name != MANIFEST:
                artifacts[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        data = {
            "title": f"CenterPoint INT8 build: {self.cfg.name}",
            "model": {"config": self.cfg.name, "checkpoint": str(self.checkpoint),
                      "checkpoint_sha256": file_sha256(self.checkpoint),
                      "quantization": {"stage": meta.get("stage", "ptq"), "method": meta.get("amax_method"),
                                       "frames": meta.get("num_frames"), "skip": meta.get("skip"),
                                       "recipe": meta.get("recipe", "calibrate"),
                                       "ranges_learned": "learned_ranges" in meta or meta.get("stage") == "qat",
                                       "float_layers": meta.get("float_layers")
                                       or float_layer_reasons(meta.get("skip") or [])}},
            "accuracy": compare.get("accuracy"),
            "tensors": compare.get("tensors"),
            "detections": _flat_detections(compare.get("detections") or {}),
            "per_layer": compare.get("per_layer"),
            "bev": compare.get("bev"),
            "per_layer_backbone": compare.get("per_layer_backbone"),
            "output_bounds": _output_bounds(self.manifest, compare),
            "validation": _export_validation(self.manifest),
            "latency": latency,
            "artifacts": artifacts,
            "stages": None,  # filled in when the report is written: this run's stage table
            "engine": engine,
            "deployment": _libspconv_record(self.manifest),
            "versions": self.manifest.versions,
        }
        if (self.out / SENSITIVITY_PNG).is_file():  # `trt-centerpoint sensitivity --out BUILD` was run
            data["sensitivity"] = {"png": SENSITIVITY_PNG}

        def write() -> StageOutcome:
            self.stages.add("report", "ran", 0.0, REPORT_DETAIL)  # the report lists itself
            data["stages"] = self.stages.as_dict()
            written = write_report(self.out, data)
            return StageOutcome([p.name for p in written], REPORT_DETAIL)

        inputs = {name: a["sha256"] for name, a in artifacts.items()}
        if not self._run_stage("report", inputs, {"config": self.cfg.name, "engine": engine}, write):
            return json.loads((self.out / REPORT_JSON).read_text())
        return data


def _libspconv_record(manifest: Manifest) -> dict | None:
    """The check stage's libspconv gate and engine builds (None when no libspconv was configured)."""
    rec = manifest.stages.get("check")
    return rec.extra.get("libspconv") if rec else None


def _export_validation(manifest: Manifest) -> dict:
    """What the export checked, file by file, in a line each (figures from the export's manifest record)."""
    rec = manifest.stages.get(EXPORT_STAGE)
    v = rec.extra.get("validation", {}) if rec else {}
    out = {}
    if SCN_FP16 in v:
        out[SCN_FP16] = f"reference runner vs PyTorch FP32 backbone: cosine {v[SCN_FP16]['min_cosine']:.8f}"
    if SCN_INT8 in v:
        s = v[SCN_INT8]
        out[SCN_INT8] = (f"reference runner vs PyTorch fake quant: cosine {s['min_cosine']:.6f} (FP16 inputs, as "
                         f"the file), {s['vs_fp32_weights']['min_cosine']:.6f} (as loaded)")
    if SCN_INT8_QDQ in v:
        out[SCN_INT8_QDQ] = f"executes bit-identically to {SCN_INT8}"
    if RPN_HEAD_FP32 in v:
        out[RPN_HEAD_FP32] = f"ONNX Runtime vs PyTorch: max abs error {v[RPN_HEAD_FP32]['max_abs_error']:.3g}"
    for name in (RPN_HEAD_INT8, RPN_HEAD_INT8_FP16):
        if name in v:
            h = v[name]
            out[name] = (f"ONNX Runtime vs PyTorch fake quant: median abs error {h['max_median_abs_error']:.3g} layer "
                         f"by layer (gate {h['tolerance']:g}), {h['free_running']['max_median_abs_error']:.3g} free "
                         "running")
    return out


def _output_bounds(manifest: Manifest, compare: dict) -> dict | None:
    """Per sparse conv of scn.fp16.onnx: its output_bound, how it was set, and the headroom on the evaluation
    frames (bound / most active voxels seen; below 1 libspconv drops voxels)."""
    headroom = compare.get("output_bound_headroom") or {}
    if not headroom:
        return None
    rec = manifest.stages.get(EXPORT_STAGE)
    extra = rec.extra if rec else {}
    planned = (extra.get("output_bounds") or {}).get("layers") or {}
    paths = ((extra.get("artifacts") or {}).get(SCN_FP16) or {}).get("node_paths") or {}
    return {node: {**row, "path": paths.get(node), "source": (planned.get(paths.get(node)) or {}).get("source")}
            for node, row in headroom.items()}


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
    check_output_dir(opts.out, "build folder")  # a bad --out fails before anything else
    build = _Build(opts, log)
    with hold_lock(build.out, log):
        return _run_locked(build, log, start)


def _run_locked(build: "_Build", log: Callable[[str], None], start: float) -> dict:
    """The chain, with the build folder's lock held (so its leftovers are this folder's own, not a live build's)."""
    removed = _remove_leftovers(build.out)
    if removed:
        log(f"removed {removed} temporary file(s) left by an interrupted build")
    calib, eval_data = build.data()
    quantized = build.quantize(calib)
    build.export(quantized, calib)
    build.check()
    engine = build.engine()
    compare = build.compare(eval_data, quantized)
    comparison = build.compare_engines(eval_data, quantized, engine)
    if comparison is not None:
        engine["comparison"] = comparison
    latency = build.bench(eval_data, engine)
    data = build.report(quantized, compare, latency, engine)
    data["stages"] = build.stages.as_dict()  # this run's (a skipped report keeps the run that wrote it)
    data["seconds"] = time.perf_counter() - start
    return data
