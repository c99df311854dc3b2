"""Fake-quant (PTQ) forward of the nuScenes-size CenterPoint vs its FP32 forward, on CPU, one run.

The whole network (sparse backbone, RPN, head) with BN folded; the fake-quant model has the default skip
list and is calibrated (histogram + MSE) on the same emulated LiDAR frame it is timed on. Reports min and
median of repeated forwards and their ratio (the issue's bar: fake-quant <= 1.3x FP32).

    OMP_NUM_THREADS=2 python benchmarks/bench_fake_quant.py --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_spconv_threads import lidar_points  # noqa: E402  (the same emulated 32-beam LiDAR)

from trt_centerpoint.config import load_config  # noqa: E402
from trt_centerpoint.model.centerpoint import CenterPoint  # noqa: E402
from trt_centerpoint.quant.calibrate import calibrate  # noqa: E402
from trt_centerpoint.quant.fuse_bn import fuse_bn  # noqa: E402
from trt_centerpoint.quant.quantize import quantize_model  # noqa: E402


def timed(model, voxels, repeats: int) -> list[float]:
    times = []
    with torch.no_grad():
        model(voxels.features, voxels.coords, 1)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model(voxels.features, voxels.coords, 1)
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config("nuscenes_voxel0075")
    torch.manual_seed(0)
    fp32 = CenterPoint(cfg).eval()
    fuse_bn(fp32)
    points = torch.from_numpy(lidar_points(np.random.default_rng(0), sweeps=args.sweeps).astype(np.float32))
    voxels = fp32.voxelize([points])
    print(f"{len(points)} points -> {voxels.num_voxels} voxels on {cfg.voxel.sparse_shape}, "
          f"{torch.get_num_threads()} threads")
    quant = copy.deepcopy(fp32)
    quantize_model(quant)
    t = time.perf_counter()
    calibrate(quant, [points], method="mse", total=1, progress=False)
    print(f"calibration (1 frame, mse): {time.perf_counter() - t:.1f} s")
    rows = {}
    for name, model in (("fp32", fp32), ("fake-quant", quant)):
        times = timed(model, voxels, args.repeats)
        rows[name] = (min(times), statistics.median(times))
        print(f"{name:>10}: min {rows[name][0]:.3f} s, median {rows[name][1]:.3f} s")
    print(f"fake-quant / fp32: {rows['fake-quant'][0] / rows['fp32'][0]:.2f}x (min), "
          f"{rows['fake-quant'][1] / rows['fp32'][1]:.2f}x (median)")


if __name__ == "__main__":
    main()
