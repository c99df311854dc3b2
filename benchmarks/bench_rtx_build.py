"""TensorRT-RTX ahead-of-time build of the nuScenes-size head on CPU: build time and engine size, FP32 and INT8.

The 2D part of `nuscenes_voxel0075` (RPN + CenterHead, input [1, 256, 180, 180]) with random weights and
non-trivial BatchNorm statistics (no trained nuScenes checkpoint ships here). INT8: a quick PTQ of the 2D part
alone, max calibration on random non-negative BEV tensors (the scales are not meaningful; the graph, its
Q/DQ placement and its size are those of a real export). Both heads are exported as `export` writes them and
built with `trt_centerpoint.runtime.trt.build.build_engine(builder="tensorrt-rtx")`, which needs no GPU.

An RTX engine runs only with the TensorRT-RTX runtime on RTX GPUs; this measures NVIDIA's parser and builder
on our files, not inference speed.

    OMP_NUM_THREADS=2 python benchmarks/bench_rtx_build.py --out /tmp/rtx_bench --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import onnx
import torch
from pytorch_quantization.nn import TensorQuantizer

sys.path.insert(0, str(Path(__file__).parent))
from bench_export_nuscenes import random_bn  # noqa: E402  (the same random BatchNorm statistics)

from trt_centerpoint.artifacts import RPN_HEAD_FP32, RPN_HEAD_INT8, engine_file  # noqa: E402
from trt_centerpoint.config import load_config  # noqa: E402
from trt_centerpoint.export.head.export import RpnHeadModule, bev_input_shape, export_rpn_head  # noqa: E402
from trt_centerpoint.export.head.int8 import export_rpn_head_int8  # noqa: E402
from trt_centerpoint.model.centerpoint import CenterPoint  # noqa: E402
from trt_centerpoint.quant.ptq import prepare_model  # noqa: E402
from trt_centerpoint.quant.quantize import DEFAULT_SKIP  # noqa: E402
from trt_centerpoint.runtime.trt.build import build_engine  # noqa: E402
from trt_centerpoint.runtime.trt.inspect import format_counts  # noqa: E402


def quick_head_ptq(model: torch.nn.Module, cfg, batches: int = 2) -> torch.nn.Module:
    """Quantizers inserted (default skip list), the 2D part's calibrated (max) on random BEV tensors."""
    qmodel, _ = prepare_model(cfg, DEFAULT_SKIP, "max", bn_fused=True, model=copy.deepcopy(model))
    head = RpnHeadModule(qmodel).eval()
    quantizers = [m for m in head.modules() if isinstance(m, TensorQuantizer) and m._calibrator is not None]
    for q in quantizers:
        q.disable_quant()
        q.enable_calib()
    with torch.no_grad():
        for _ in range(batches):
            head(torch.relu(torch.randn(bev_input_shape(cfg))))
    for q in quantizers:
        q.load_calib_amax()
        q.enable_quant()
        q.disable_calib()
    return qmodel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/rtx_bench")
    parser.add_argument("--repeats", type=int, default=2, help="builds per engine (default 2)")
    parser.add_argument("--config", default="nuscenes_voxel0075")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = CenterPoint(cfg).eval()
    random_bn(model, 1)

    t = time.perf_counter()
    qmodel = quick_head_ptq(model, cfg)
    ptq_s = time.perf_counter() - t
    t = time.perf_counter()
    onnx.save(export_rpn_head(model, cfg).model, str(out / RPN_HEAD_FP32))
    onnx.save(export_rpn_head_int8(qmodel, cfg).model, str(out / RPN_HEAD_INT8))
    export_s = time.perf_counter() - t

    rows = {}
    for name in (RPN_HEAD_FP32, RPN_HEAD_INT8):
        plan = out / engine_file(name, "tensorrt-rtx")
        builds, walls = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = build_engine(out / name, plan, builder="tensorrt-rtx")
            walls.append(time.perf_counter() - t)
            builds.append(result.seconds)
        record = result.record
        rows[name] = {"engine": plan.name, "onnx_bytes": (out / name).stat().st_size,
                      "engine_bytes": record["engine_bytes"], "build_s": builds, "wall_s": walls,
                      "builder": f"TensorRT-RTX {record['builder_version']}", "targets": record["targets"],
                      "layers": format_counts(record)}
    summary = {"config": cfg.name, "input": bev_input_shape(cfg), "threads": torch.get_num_threads(),
               "quick_ptq_s": round(ptq_s, 2), "export_s": round(export_s, 2), "engines": rows}
    fp32, int8 = rows[RPN_HEAD_FP32], rows[RPN_HEAD_INT8]
    summary["int8_vs_fp32"] = {"build_time": min(int8["build_s"]) / min(fp32["build_s"]),
                               "engine_size": int8["engine_bytes"] / fp32["engine_bytes"],
                               "onnx_size": int8["onnx_bytes"] / fp32["onnx_bytes"]}
    (out / "bench_rtx_build.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
