"""The final report: one markdown page, its JSON twin and the charts it links, from one `data` dict.

Why one dict: every stage (evaluate, compare, bench, build) contributes its part, and a part that did not
run is shown as "not run" rather than failing the report, so a CPU-only machine still gets an honest page.
The JSON is `data` exactly (NaN / inf as null): the numbers a reader checks are the ones the page shows.
Charts are written first and every file atomically, so an error leaves no half-written report.md. The
latency chart is the bench stage's `bench.png`, linked when it lies next to the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trt_centerpoint.artifacts import BENCH_PNG, ERRORS_PNG, REPORT_JSON, REPORT_MD
from trt_centerpoint.fileio import atomic_write_json, atomic_write_text
from trt_centerpoint.report.plots import errors_chart
from trt_centerpoint.report.table import format_table

__all__ = ["errors_chart", "latency_series", "render_markdown", "summary_table", "write_report"]

NOT_RUN = "not run"
_DASH = "-"
_MAX_LAYERS = 60  # rows of the per-layer table on the page; report.json keeps them all

_HOW_TO_READ = """\
**Cosine** similarity compares the INT8 tensor with the FP32 one as patterns, ignoring scale: 1 is
identical; heat-map and regression heads that keep 0.999 or more usually lose no measurable mAP, and
below about 0.99 the detections start to move. **SNR** (10 log10 of signal energy over error energy, in dB)
says how loud the error is next to the signal: 40 dB is an error 1% of the signal's amplitude, 20 dB is
10%; INT8 outputs typically land between 20 and 45 dB. **Max / median abs** error are in the output's own
units (logits, metres, radians): the median is the typical error, the max the worst single element, which
is often one outlier. The per-layer table finds where error enters the network: the first jump is the
first tensor whose 1 - cosine is both visible and ten times worse than anything before it. mAP is what
matters in the end; the tensor figures explain it. Latency is the median of many frames after warm-up,
with p90 as the whisker; speed-up is FP32 time divided by INT8 time, so above 1 means INT8 is faster."""


# ------------------------------------------------------------------------------------------------ formatting

def _num(value, fmt: str) -> str:
    if value is None:
        return _DASH
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _esc(value):
    """A literal '|' would end a markdown cell early."""
    return value.replace("|", "\\|") if isinstance(value, str) else value


def _md_table(headers: list[str], rows: list[list]) -> str:
    return format_table([_esc(h) for h in headers], [[_esc(v) for v in row] for row in rows], markdown=True)


def _plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _size(n) -> str:
    if not isinstance(n, (int, float)):
        return _DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def _get(d, *keys):
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# ------------------------------------------------------------------------------------------------ latency

def latency_series(latency: dict | None) -> dict[str, dict[str, dict]]:
    """{backend: {precision: {stage: stats}}, "meta": ..., "settings": ...} -> {"backend/precision": {stage: stats}}."""
    series = {}
    for backend, per_precision in (latency or {}).items():
        if backend in ("meta", "settings") or not isinstance(per_precision, dict):
            continue
        for precision, stages in per_precision.items():
            if isinstance(stages, dict) and stages:
                series[f"{backend}/{precision}"] = stages
    return series


# Backends whose INT8 runs as simulated quantization (Q/DQ + float kernels) on the CPU: their FP32 / INT8 ratio is
# no speed-up, only noise around 1 (the voxelizer, identical code in both, showed "1.40x" once).
SIMULATED_INT8 = ("onnx", "torch")


def _speedups(latency: dict) -> dict[str, dict[str, float]]:
    """Per backend holding both fp32 and int8 and running INT8 kernels: {backend: {stage: fp32 / int8 median}}."""
    out = {}
    for backend, per_precision in latency.items():
        if backend in ("meta", "settings", *SIMULATED_INT8) or not isinstance(per_precision, dict):
            continue
        lower = {str(k).lower(): v for k, v in per_precision.items()}
        fp32, int8 = lower.get("fp32"), lower.get("int8")
        if not isinstance(fp32, dict) or not isinstance(int8, dict):
            continue
        ratios = {}
        for stage in fp32:
            a, b = _get(fp32, stage, "median_ms"), _get(int8, stage, "median_ms")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
                ratios[stage] = a / b
        out[backend] = ratios
    return out


# ------------------------------------------------------------------------------------------------ sections

def _section_model(data: dict) -> list[str]:
    model = data.get("model") or {}
    lines = ["## Built from", ""]
    for key, label in (("config", "config"), ("checkpoint", "checkpoint"), ("checkpoint_sha256", "checkpoint sha256")):
        lines.append(f"- {label}: `{model.get(key) or _DASH}`")
    quant = model.get("quantization")
    if quant:
        lines.append("- quantization:")
        lines += [f"  - {k}: `{_plain(v)}`" for k, v in quant.items() if k != "float_layers"]
        floats = quant.get("float_layers")
        if isinstance(floats, dict):
            lines.append("  - layers left float (everything else runs INT8):" + ("" if floats else " none"))
            lines += [f"    - `{pattern}`: {why}" for pattern, why in floats.items()]
    for key in sorted(set(model) - {"config", "checkpoint", "checkpoint_sha256", "quantization"}):
        lines.append(f"- {key}: `{_plain(model[key])}`")
    return lines


TP_ERRORS = ("mATE", "mASE", "mAOE", "mAVE")


def _section_accuracy(data: dict) -> list[str]:
    acc = data.get("accuracy")
    lines = ["## Accuracy (mAP and box errors)", ""]
    if not acc:
        return lines + [f"Accuracy: {NOT_RUN}."]
    fp32, int8 = acc.get("fp32") or {}, acc.get("int8") or {}

    def row(name, a, b):
        delta = b - a if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        return [name, _num(a, ".4f"), _num(b, ".4f"), _num(delta, "+.4f")]

    def tp_row(name, a, b):
        cells = row(name, a, b)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            cells[3] += f" ({(b - a) / a:+.1%})"
        return cells

    rows = [row("**mAP**", fp32.get("mAP"), int8.get("mAP"))]
    rows += [tp_row(f"{name} (lower is better)", _get(fp32, "mean_tp_errors", name), _get(int8, "mean_tp_errors", name))
             for name in TP_ERRORS if _get(fp32, "mean_tp_errors", name) is not None]
    if fp32.get("nds_without_aae") is not None:
        rows.append(row("NDS without AAE", fp32.get("nds_without_aae"), int8.get("nds_without_aae")))
    classes = list(fp32.get("per_class") or {})
    classes += [c for c in (int8.get("per_class") or {}) if c not in classes]
    rows += [row(f"AP {c}", _get(fp32, "per_class", c), _get(int8, "per_class", c)) for c in classes]
    lines.append(_md_table(["measure", "FP32", "INT8", "delta (INT8 - FP32)"], rows))
    if fp32.get("mean_tp_errors"):
        lines += ["", "TP errors are the nuScenes true-positive errors of the matched boxes (at 2 m): ATE centre "
                      "distance (m), ASE 1 - IoU of the aligned sizes, AOE yaw error (rad), AVE velocity error (m/s); "
                      "the delta column gives their change in percent too. NDS without AAE = (5 mAP + sum of "
                      "(1 - min(1, error))) / 9: the NDS formula without the attribute error, not the nuScenes NDS."]
    if not fp32:
        lines += ["", f"FP32 evaluation: {NOT_RUN}."]
    if not int8:
        lines += ["", f"INT8 evaluation: {NOT_RUN}."]
    if acc.get("frames") is not None:
        lines += ["", f"Evaluated on {acc['frames']} frames."]
    return lines


def _section_bands(data: dict) -> list[str]:
    """AP by distance band, FP32 and INT8 side by side (from compare's per-band metrics)."""
    acc = data.get("accuracy") or {}
    fp32, int8 = (acc.get("fp32") or {}).get("bands"), (acc.get("int8") or {}).get("bands")
    if not fp32 or not int8:
        return []
    rows = []
    for band, a in fp32.items():
        b = int8.get(band) or {}
        gt = sum((a.get("num_gt") or {}).values())
        delta = a["mAP"] is not None and b.get("mAP") is not None
        rows.append([f"**{band}**", "mAP", gt, _num(a["mAP"], ".4f"), _num(b.get("mAP"), ".4f"),
                     _num(b["mAP"] - a["mAP"], "+.4f") if delta else _DASH])
        for name, ap in (a.get("per_class") or {}).items():
            if ap is None:
                continue
            other = (b.get("per_class") or {}).get(name)
            rows.append(["", f"AP {name}", a["num_gt"][name], _num(ap, ".4f"), _num(other, ".4f"),
                         _num(other - ap, "+.4f") if other is not None else _DASH])
        for name in TP_ERRORS[:2]:  # where INT8 loses box quality, the far objects lose it first
            x, y = _get(a, "mean_tp_errors", name), _get(b, "mean_tp_errors", name)
            if x is not None and y is not None:
                rows.append(["", f"{name} (lower is better)", gt, _num(x, ".3f"), _num(y, ".3f"),
                             _num(y - x, "+.3f") + (f" ({(y - x) / x:+.1%})" if x else "")])
    return ["## Accuracy by distance", "",
            "The same metric on the boxes whose BEV centre distance (from the ego vehicle where poses are known) "
            "lies in each band: calibration clipping costs far, sparse objects first, and a mean over all "
            "distances hides it. A band's mAP is the mean over the classes with ground truth in it.", "",
            _md_table(["band", "measure", "GT boxes", "FP32", "INT8", "delta (INT8 - FP32)"], rows)]


def _section_bev(data: dict) -> list[str]:
    """The bird's-eye views of the frames where INT8 and FP32 disagree most."""
    frames = data.get("bev")
    if not frames:
        return []
    lines = ["## Worst INT8 frames (bird's-eye view)", "",
             "The frames where INT8 and FP32 disagree most, worst first: confident boxes (score >= 0.3) of one "
             "precision with no box of the same class of the other within 0.5 m. Points (grey, darker is higher), "
             "ground truth (green), FP32 (blue, dashed) and INT8 (red); the line from a box centre marks its "
             "heading.", ""]
    for f in frames:
        lines += [f"**{f['stem']}**: {f['disagreement']} box(es) differ; {f['fp32_boxes']} FP32, {f['int8_boxes']} "
                  f"INT8, {f['gt_boxes']} ground-truth boxes", "", f"![{f['stem']}]({f['png']})", ""]
    return lines[:-1]


def _section_tensors(data: dict, pngs: dict[str, Path]) -> list[str]:
    tensors = data.get("tensors")
    lines = ["## Output tensors (INT8 vs FP32)", ""]
    if not tensors:
        return lines + [f"Tensor comparison: {NOT_RUN}."]
    rows = [[name, _num(m.get("cosine"), ".6f"), _num(m.get("snr_db"), ".1f"), _num(m.get("max_abs"), ".4g"),
             _num(m.get("median_abs"), ".4g"), _num(m.get("mean_abs"), ".4g"), _num(m.get("ref_max_abs"), ".4g")]
            for name, m in tensors.items()]
    lines.append(_md_table(["output", "cosine", "SNR dB", "max abs", "median abs", "mean abs", "FP32 max abs"],
                           rows))
    if "errors" in pngs:
        lines += ["", f"![error histograms]({pngs['errors'].name}) (log10 absolute error per output)"]
    if _get(data, "model", "quantization", "ranges_learned"):
        lines += ["", "These activation ranges were learned against the FP32 outputs at objects (the distillation "
                      "weights the regression maps by the FP32 heatmap), so background cells whose values lie far "
                      "outside them are clipped: the whole-map cosine and SNR of the regression maps are low by "
                      "design, while the values decoding reads (cells the heatmap selects) stay close. Judge this "
                      "build by the accuracy and detection agreement above."]
    return lines


def _section_validation(data: dict) -> list[str]:
    checks = data.get("validation")
    lines = ["## Files checked at export", ""]
    if not checks:
        return lines + [f"Export validation: {NOT_RUN}."]
    return lines + [_md_table(["file", "check"], [[f"`{name}`", text] for name, text in checks.items()])]


def _section_detections(data: dict) -> list[str]:
    det = data.get("detections")
    lines = ["## Detection agreement (INT8 vs FP32 boxes)", ""]
    if not det:
        return lines + [f"Detection agreement: {NOT_RUN}."]
    rows = [[_detection_label(k), _num(v, ".4f") if isinstance(v, float) else _plain(v)] for k, v in det.items()]
    return lines + [_md_table(["measure", "value"], rows)]


_RADII = {"0.01m": "1 cm", "0.1m": "10 cm", "0.5m": "50 cm"}
_DETECTION_LABELS = {
    "matched_fraction": "INT8 boxes matching FP32 (headline radius)", "within_m": "headline radius (m)",
    "fp32_boxes": "FP32 boxes", "int8_boxes": "INT8 boxes", "frames": "frames",
    "matched_fraction_": "INT8 boxes matching FP32 within ",
    "int8_files_vs_pytorch_fake_quant_": "INT8 files vs PyTorch fake quant, boxes within ",
    "pytorch_fake_quant_vs_itself_fp16_features_":
        "baseline: PyTorch fake quant vs itself (FP16 voxel features), within ",
}


def _detection_label(key: str) -> str:
    """report.json's detection keys in words (`matched_fraction_0.1m` -> "... within 10 cm")."""
    if key in _DETECTION_LABELS:
        return _DETECTION_LABELS[key]
    for prefix, words in _DETECTION_LABELS.items():
        if prefix.endswith("_") and key.startswith(prefix):
            radius = key[len(prefix):]
            return words + _RADII.get(radius, radius)
    return key


def _section_per_layer(data: dict) -> list[str]:
    lines = _per_layer_lines(data.get("per_layer_backbone"), "## Per-layer error: sparse backbone (scn.int8 vs "
                             "scn.fp16, same voxels)") if data.get("per_layer_backbone") else []
    return lines + ([""] if lines else []) + _per_layer_lines(data.get("per_layer"), "## Per-layer error")


def _per_layer_lines(per: dict | None, title: str) -> list[str]:
    lines = [title, ""]
    if not per:
        return lines + [f"Per-layer comparison: {NOT_RUN}."]
    jump = per.get("first_jump")
    text = f"First jump: `{jump}`." if jump else "First jump: none found (no layer adds error abruptly)."
    if per.get("criterion"):
        text += f" Criterion: {per['criterion']}."
    lines.append(text)
    layers = per.get("layers") or []
    if layers:
        rows = [[("**" + str(lay.get("tensor")) + "**") if lay.get("tensor") == jump else lay.get("tensor"),
                 lay.get("op", _DASH), _num(lay.get("cosine"), ".6f"), _num(lay.get("snr_db"), ".1f"),
                 _num(lay.get("max_abs"), ".4g"), _num(lay.get("median_abs"), ".4g")] for lay in layers[:_MAX_LAYERS]]
        lines += ["", _md_table(["tensor", "op", "cosine", "SNR dB", "max abs", "median abs"], rows)]
        if len(layers) > _MAX_LAYERS:
            lines += ["", f"{len(layers) - _MAX_LAYERS} more layers in report.json."]
    return lines


def _section_output_bounds(data: dict) -> list[str]:
    """Headroom per sparse conv: libspconv allocates `output_bound` voxels per layer and drops the rest."""
    bounds = data.get("output_bounds")
    if not bounds:
        return []
    lines = ["## Sparse conv output_bound headroom (evaluation frames)", "",
             "Headroom = output_bound / most active voxels on one frame; below 1.0 libspconv would drop voxels "
             "(runs stop with an error unless `--allow-overflow`)."]
    rows = [[f"`{node}`", row.get("path") or _DASH, _plain(row.get("output_bound")), _plain(row.get("max_active")),
             _num(row.get("headroom"), ".2f"), row.get("source") or _DASH] for node, row in bounds.items()]
    tight = min((row["headroom"] for row in bounds.values() if row.get("headroom")), default=None)
    if tight is not None:
        lines[-1] += f" Tightest: {tight:.2f}."
    return lines + ["", _md_table(["node", "layer", "output_bound", "max active", "headroom", "set by"], rows)]


def _section_latency(data: dict, pngs: dict[str, Path]) -> list[str]:
    latency = data.get("latency")
    series = latency_series(latency)
    lines = ["## Latency (median ms)", ""]
    if not series:
        return lines + [f"Latency benchmark: {NOT_RUN}."]
    speedups = _speedups(latency)
    stages: list[str] = []
    for per_stage in series.values():
        stages += [s for s in per_stage if s not in stages]
    headers = ["stage", *series, *(f"speed-up {b} (FP32/INT8)" for b in speedups)]
    rows = [[stage, *(_num(_get(st, stage, "median_ms"), ".2f") for st in series.values()),
             *(_num(r.get(stage), ".2f") + ("x" if stage in r else "") for r in speedups.values())]
            for stage in stages]
    lines.append(_md_table(headers, rows))
    p90 = [[stage, *(_num(_get(st, stage, "p90_ms"), ".2f") for st in series.values())] for stage in stages]
    lines += ["", "p90 ms:", "", _md_table(["stage", *series], p90)]
    simulated = [b for b in SIMULATED_INT8 if b in latency]
    if simulated:
        lines += ["", f"{' and '.join(simulated)}: INT8 runs as simulated quantization (Q/DQ + float kernels) on the "
                      "CPU, so no FP32 / INT8 speed-up is shown for them; an INT8 speed figure needs TensorRT on a "
                      "GPU."]
    settings = latency.get("settings")
    meta = latency.get("meta")
    if isinstance(settings, dict) and settings:
        keys = sorted({k for s in settings.values() for k in s if k not in ("backend", "precision")})
        rows = [[label, *(str(s.get(k, "")) for k in keys)] for label, s in settings.items()]
        lines += ["", "Measured with (per column):", "", _md_table(["column", *keys], rows)]
    elif meta:
        lines += ["", "Measured on: " + ", ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, dict))]
    if "latency" in pngs:
        lines += ["", f"![latency]({pngs['latency'].name})"]
    return lines


_RTX_SCOPE = ("These engines run only with the TensorRT-RTX runtime on RTX GPUs (compute capability 7.5, 8.6, 8.9, "
              "12.0; not Hopper, not Jetson) and were not run here. They prove that NVIDIA's ONNX parser and builder "
              "accept the exported files. They are not an INT8 latency figure: TensorRT-RTX lists INT8 only as "
              "weight-only GEMM, so the Q/DQ convolutions need not run as INT8 kernels there. TensorRT stays the "
              "deployment target where it is installed.")
_TRT_SCOPE = ("These engines run with TensorRT {version} on the GPU model they were built on (a TensorRT engine "
              "is specific to both); the latency table and the engine comparison below ran them here.")


def _section_engine(data: dict) -> list[str]:
    engine = data.get("engine")
    lines = ["## Engines", ""]
    if not engine:
        return lines + [f"Engine: {NOT_RUN}."]
    reason = engine.get("reason")
    if not engine.get("available"):
        return lines + ["Engine: not available" + (f" ({reason})" if reason else "") + "."]
    name = engine.get("builder_name") or engine.get("builder") or "TensorRT"
    targets = ", ".join(str(t) for t in engine.get("targets") or [])
    if engine.get("builder") == "tensorrt-rtx":
        where = f"compute capability {targets}" + (" (TensorRT-RTX's default)" if engine.get("targets_default") else "")
    else:
        where = targets or "the build GPU"
    lines.append(f"Engine: built with {name} {engine.get('version', '')}".rstrip() + f", for {where}."
                 + (f" Builders found here: {reason}." if reason else ""))
    rows = [[f"`{plan}`", f"`{e.get('onnx', _DASH)}`", _size(e.get("bytes")), _num(e.get("build_seconds"), ".2f"),
             "yes" if e.get("strongly_typed") else "no", e.get("layers") or _DASH]
            for plan, e in (engine.get("engines") or {}).items()]
    if rows:
        lines += ["", _md_table(["engine", "from", "size", "build s", "strongly typed", "layer precision"], rows)]
    scope = _RTX_SCOPE if engine.get("builder") == "tensorrt-rtx" else _TRT_SCOPE.format(version=engine.get("version"))
    lines += ["", scope]
    comparison = engine.get("comparison")
    if comparison:
        c = comparison
        lines += ["", f"INT8 vs FP32 engines on {c.get('frames')} frames: min output cosine "
                      f"{_num(c.get('min_cosine'), '.6f')} ({c.get('min_cosine_output')}), INT8 boxes matching FP32 "
                      f"within {_num(c.get('within_m'), 'g')} m: {_num(c.get('matched_fraction'), '.3f')} (files in "
                      f"`{c.get('folder')}/`)."]
    return lines


_HOST_SIDE_SCOPE = ("Host-side means NVIDIA's library parsed each file and ran its whole engine build against a "
                    "stand-in CUDA runtime (host memory, no kernel launched): the file is accepted, no kernel ran, so "
                    "nothing here says the GPU computes the right numbers.")


def _section_deployment(data: dict) -> list[str]:
    """libspconv, the runtime the scn files are for: its GPU-architecture gate and its engine build of each."""
    spconv = data.get("deployment")
    lines = ["## Deployment: libspconv", ""]
    if not spconv:
        return lines + ["libspconv: not checked (give `build --libspconv DIR` or set TRT_CENTERPOINT_LIBSPCONV)."]
    lines += [f"Gate: {spconv.get('gate')}.", ""]
    lines += [f"- `{name}`: {line}" for name, line in (spconv.get("files") or {}).items()]
    if "host-side" in str(spconv.get("where")):
        lines += ["", _HOST_SIDE_SCOPE]
    return lines


def _section_sensitivity(data: dict) -> list[str]:
    png = _get(data, "sensitivity", "png")
    lines = ["## Layer sensitivity", ""]
    return lines + ([f"![sensitivity]({png})"] if png else [f"Sensitivity analysis: {NOT_RUN}."])


def _section_artifacts(data: dict) -> list[str]:
    arts = data.get("artifacts")
    lines = ["## Artifacts", ""]
    if not arts:
        return lines + ["No artifacts recorded."]
    rows = [[f"`{name}`", _size(a.get("bytes")), _num(a.get("bytes"), "d"), (a.get("sha256") or _DASH)[:12]]
            for name, a in arts.items()]
    return lines + [_md_table(["artifact", "size", "bytes", "sha256[:12]"], rows)]


def _section_stages(data: dict) -> list[str]:
    stages = data.get("stages")
    lines = ["## Pipeline stages", ""]
    if not stages:
        return lines + ["No stages recorded."]
    rows = [[name, s.get("status", _DASH), _num(s.get("seconds"), ".1f"), s.get("detail") or ""]
            for name, s in stages.items()]
    return lines + [_md_table(["stage", "status", "seconds", "detail"], rows)]


def _section_versions(data: dict) -> list[str]:
    versions = data.get("versions")
    if not versions:
        return []
    return ["## Versions", "", _md_table(["package", "version"], [[k, str(v)] for k, v in versions.items()])]


def render_markdown(data: dict, pngs: dict[str, Path] | None = None) -> str:
    """The report page; `pngs` maps chart kind ("latency", "errors") to the files to link."""
    pngs = pngs or {}
    parts = [[f"# {data.get('title') or 'CenterPoint INT8 report'}"], _section_model(data), _section_accuracy(data),
             _section_bands(data), _section_bev(data), _section_validation(data),
             _section_tensors(data, pngs), _section_detections(data), _section_per_layer(data),
             _section_output_bounds(data),
             _section_latency(data, pngs), _section_engine(data), _section_deployment(data),
             _section_sensitivity(data),
             _section_artifacts(data), _section_stages(data), _section_versions(data),
             ["## How to read this report", "", _HOW_TO_READ]]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


# ------------------------------------------------------------------------------------------------ charts

def _write_charts(out_dir: Path, data: dict) -> dict[str, Path]:
    pngs = {}
    tensors = data.get("tensors") or {}
    if any(isinstance(m, dict) and isinstance(m.get("histogram"), dict) for m in tensors.values()):
        pngs["errors"] = errors_chart(out_dir / ERRORS_PNG, tensors)
    return pngs


# ------------------------------------------------------------------------------------------------ entry points

def write_report(out_dir: str | Path, data: dict) -> list[Path]:
    """Write the error chart, report.md and report.json into `out_dir`; return the paths written."""
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError("report data needs a 'model' entry (what the report is about)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = _write_charts(out_dir, data)
    links = dict(pngs)
    if latency_series(data.get("latency")) and (out_dir / BENCH_PNG).is_file():
        links["latency"] = out_dir / BENCH_PNG  # written by the bench stage
    markdown = render_markdown(data, links)
    json_path = atomic_write_json(out_dir / REPORT_JSON, data)
    md_path = atomic_write_text(out_dir / REPORT_MD, markdown)
    return [md_path, json_path, *pngs.values()]


def _cosine_grid(cosines: dict[str, float]) -> str:
    """INT8 vs FP32 cosine per output as a grid: one row per head (reg, hm, ...), one column per task."""
    cells: dict[str, dict[int, float]] = {}
    for name, value in cosines.items():
        head, _, task = name.rpartition("_")
        if not head or not task.isdigit():
            return ""
        cells.setdefault(head, {})[int(task)] = value
    tasks = sorted({t for row in cells.values() for t in row})
    rows = [[head, *(_num(row.get(t), ".5f") if t in row else _DASH for t in tasks)] for head, row in cells.items()]
    return format_table(["cosine", *(f"task {t}" for t in tasks)], rows)


def summary_table(data: dict) -> str:
    """A few lines for the terminal: mAP FP32 vs INT8, worst output cosine, latency medians, artifacts."""
    fp32, int8 = _get(data, "accuracy", "fp32", "mAP"), _get(data, "accuracy", "int8", "mAP")
    rows = [["mAP FP32", _num(fp32, ".4f") if fp32 is not None else NOT_RUN],
            ["mAP INT8", _num(int8, ".4f") if int8 is not None else NOT_RUN]]
    if isinstance(fp32, (int, float)) and isinstance(int8, (int, float)):
        rows.append(["mAP delta", _num(int8 - fp32, "+.4f")])
    for name in TP_ERRORS:
        a, b = _get(data, "accuracy", "fp32", "mean_tp_errors", name), _get(data, "accuracy", "int8", "mean_tp_errors",
                                                                              name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            rows.append([f"{name} FP32 / INT8", f"{_num(a, '.4f')} / {_num(b, '.4f')}"
                         + (f" ({(b - a) / a:+.1%})" if a else "")])
    a, b = _get(data, "accuracy", "fp32", "nds_without_aae"), _get(data, "accuracy", "int8", "nds_without_aae")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        rows.append(["NDS without AAE FP32 / INT8", f"{_num(a, '.4f')} / {_num(b, '.4f')}"])
    cosines = {n: m.get("cosine") for n, m in (data.get("tensors") or {}).items()
               if isinstance(m, dict) and isinstance(m.get("cosine"), (int, float))}
    if cosines:
        worst = min(cosines, key=cosines.get)
        rows.append(["min output cosine", f"{cosines[worst]:.6f} ({worst})"])
    else:
        rows.append(["min output cosine", NOT_RUN])
    matched = _get(data, "detections", "matched_fraction")
    if isinstance(matched, (int, float)):
        within = _get(data, "detections", "within_m")
        rows.append([f"INT8 boxes matching FP32 ({_num(within, 'g')} m)", _num(matched, ".3f")])
    series = latency_series(data.get("latency"))
    if not series:
        rows.append(["latency", NOT_RUN])
    for name, a in (data.get("artifacts") or {}).items():
        rows.append([f"artifact {name}", f"{_size(a.get('bytes'))}  {(a.get('sha256') or _DASH)[:12]}"])
    text = format_table(["item", "value"], rows)
    grid = _cosine_grid(cosines)
    if grid:
        text += "\n\n" + grid
    if series:
        stages: list[str] = []
        for per_stage in series.values():
            stages += [s for s in per_stage if s not in stages]
        table = [[s, *(_num(_get(st, s, "median_ms"), ".2f") for st in series.values())] for s in stages]
        text += "\n\n" + format_table(["median ms", *series], table)
    return text
