"""PTQ + the full export (float and INT8 files, every validation) of the nuScenes-size CenterPoint, on CPU.

The model is `nuscenes_voxel0075` with random weights and non-trivial BatchNorm statistics (no trained
nuScenes checkpoint is shipped), calibrated on emulated 32-beam LiDAR frames (10 sweeps each). It shows
that the INT8 path runs at real size and what each step costs; accuracy figures need a trained model.

    OMP_NUM_THREADS=2 python benchmarks/bench_export_nuscenes.py --frames 3 --out /tmp/nusc_export
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_spconv_threads import lidar_points  # noqa: E402  (the same emulated LiDAR)

from trt_centerpoint.config import load_config  # noqa: E402
from trt_centerpoint.data.points import write_points_bin  # noqa: E402
from trt_centerpoint.model.centerpoint import CenterPoint  # noqa: E402
from trt_centerpoint.model.checkpoint import save_checkpoint  # noqa: E402
from trt_centerpoint.quant.ptq import run_ptq  # noqa: E402
from trt_centerpoint.stages.export import run_export  # noqa: E402


def random_bn(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--out", default="/tmp/nusc_export")
    args = parser.parse_args()
    out = Path(args.out)
    cfg = load_config("nuscenes_voxel0075")
    torch.manual_seed(0)
    model = CenterPoint(cfg).eval()
    random_bn(model, 1)
    save_checkpoint(model, out / "fp32.pth")
    rng = np.random.default_rng(0)
    for i in range(args.frames):
        write_points_bin(out / "calib" / f"{i:04d}.bin", lidar_points(rng).astype(np.float32))
    timings = {}
    t = time.perf_counter()
    run_ptq(cfg, out / "fp32.pth", out / "calib", out / "ptq.pth", num_frames=args.frames, method="mse", progress=False)
    timings["ptq"] = time.perf_counter() - t
    t = time.perf_counter()
    record = run_export(cfg, out / "ptq.pth", out / "build", calib_data=out / "calib", max_frames=args.frames)
    timings["export (with validation)"] = time.perf_counter() - t
    v = record["extra"]["validation"]
    figures = {
        "seconds": {k: round(s, 1) for k, s in timings.items()},
        "threads": torch.get_num_threads(),
        "files_MiB": {name: round((out / "build" / name).stat().st_size / 2**20, 2) for name in record["outputs"]},
        "scn.fp16 vs PyTorch cosine": v["scn.fp16.onnx"]["min_cosine"],
        "scn.int8 vs PyTorch fake quant cosine": v["scn.int8.onnx"]["min_cosine"],
        "scn.int8 vs PyTorch as loaded cosine": v["scn.int8.onnx"]["vs_fp32_weights"]["min_cosine"],
        "rpn_head.fp32 max abs error": v["rpn_head.fp32.onnx"]["max_abs_error"],
        "rpn_head.int8 median abs error (layer by layer)": v["rpn_head.int8.onnx"]["max_median_abs_error"],
        "rpn_head.int8 median abs error (free running)": v["rpn_head.int8.onnx"]["free_running"][
            "max_median_abs_error"
        ],
        "voxels per frame": [f["voxels"] for f in record["extra"]["calib_data"]["frames"]],
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
