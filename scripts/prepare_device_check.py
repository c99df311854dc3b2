"""Prepare the folder `scripts/device_check.sh` runs on a GPU machine (no network there, little carried).

    python scripts/prepare_device_check.py --artifacts BUILD --data FRAMES --libspconv DIR --out build/device_check

Writes, for the scn.fp16 / scn.int8 files of BUILD: our compiled libspconv caller and its inputs (for 1.1.x the
description + weights our Python writes from the file; for 1.0.x the file itself), one frame's voxels, the
reference runner's outputs on them (float32), the library's SASS list, a copy of libspconv.so (+ 1.0.x's
libprotobuf.so.17) and the real CUDA runtime it needs (pip `nvidia-cuda-runtime-cu12` here, or --cudart FILE),
plus the stand-in runtime for a dry run here (`device_check.sh DIR --host-side`). About 5 MiB + the files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.data.points import iter_frames
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_dir
from trt_centerpoint.model.voxelizer import Voxelizer, collate
from trt_centerpoint.runtime.libspconv.describe import describe_scn
from trt_centerpoint.runtime.libspconv.engine import inference_precision
from trt_centerpoint.runtime.libspconv.fatbin import read_gpu_code
from trt_centerpoint.runtime.libspconv.process import find_cudart
from trt_centerpoint.runtime.libspconv.runner import input_grid
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.runtime.scn_runner import ScnRunner

FILES = {"fp16": "scn.fp16.onnx", "int8": "scn.int8.onnx"}


def _voxels(config: str, data: str):
    cfg = load_config(config)
    for _, points, _ in iter_frames(data, cfg.voxel.num_point_features):
        batch = collate([Voxelizer(cfg.voxel)(torch.as_tensor(points, dtype=torch.float32))])
        if batch.num_voxels:
            return batch.features, batch.coords
    raise UserError(f"{data}: no frame with a point in range")


def prepare(artifacts: Path, data: str, config: str, libspconv: str, out: Path, cudart: str | None) -> None:
    spconv = open_libspconv(libspconv, host_side=True)
    library = spconv.library
    real = Path(cudart) if cudart else (find_cudart(library.cudart_soname) or Path()) / library.cudart_soname
    if not real.is_file():
        raise UserError(f"{library.cudart_soname} not found: pip install {library.cudart_wheel} (or --cudart FILE)")
    features, coords = _voxels(config, data)
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "lib").mkdir()
        shutil.copy2(library.library, tmp / "lib" / "libspconv.so")
        if library.api == "1.0":
            shutil.copy2(library.lib_dir / "libprotobuf.so.17", tmp / "lib" / "libprotobuf.so.17")
        (tmp / "cudart").mkdir()
        shutil.copy2(real, tmp / "cudart" / library.cudart_soname)
        shutil.copytree(spconv.native.standin_dir, tmp / "standin")
        shutil.copy2(spconv.native.caller, tmp / "spconv_run")
        shutil.copytree(library.include, tmp / "include")  # to recompile there if our binary cannot start
        np.ascontiguousarray(features.numpy(), np.float16).tofile(tmp / "features.bin")
        np.ascontiguousarray(coords.numpy(), np.int32).tofile(tmp / "indices.bin")
        grid = None
        lines = [f"api {library.api}", f"version {library.version}", f"n {len(features)}",
                 f"c {features.shape[1]}", "sass " + " ".join(str(s) for s in read_gpu_code(library.library).sass),
                 "ptx " + " ".join(str(p) for p in read_gpu_code(library.library).ptx)]
        for precision, name in FILES.items():
            path = artifacts / name
            model = onnx.load(str(path))
            grid = input_grid(model)
            if library.api == "1.0":
                shutil.copy2(path, tmp / f"{precision}.onnx")
            else:
                described = describe_scn(model)
                (tmp / f"{precision}.net.txt").write_text(described.text)
                (tmp / f"{precision}.weights.bin").write_bytes(described.weights)
            reference = ScnRunner(model, precision="fp32").run(features, coords).float().numpy()
            reference.astype(np.float32).tofile(tmp / f"{precision}.reference.bin")
            lines.append(f"file {precision} {inference_precision(model)} " + " ".join(str(d) for d in reference.shape))
        lines.append("grid " + ",".join(str(g) for g in grid))
        (tmp / "meta.txt").write_text("\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB): run `scripts/device_check.sh {out}` on a GPU machine "
          f"(`--host-side` here: the stand-in runtime, no kernel)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", required=True, help="build folder with scn.fp16.onnx and scn.int8.onnx")
    p.add_argument("--data", required=True, help="point files; the first frame with points is used")
    p.add_argument("--config", default="synthetic_small")
    p.add_argument("--libspconv", required=True, metavar="DIR")
    p.add_argument("--cudart", help="the real CUDA runtime file (default: the pip wheel's, found next to Python)")
    p.add_argument("--out", default="build/device_check")
    args = p.parse_args(argv)
    try:
        prepare(Path(args.artifacts), args.data, args.config, args.libspconv, Path(args.out), args.cudart)
    except UserError as exc:
        print(f"prepare_device_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
