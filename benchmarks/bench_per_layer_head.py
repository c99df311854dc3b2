"""`compare`'s per-layer run of the two head files (`eval.compare.per_layer_onnx`) on one BEV: wall and CPU time,
peak resident memory. Run it once per version of the code (PYTHONPATH) on the same files, back to back.

    python benchmarks/bench_per_layer_head.py --artifacts build/ --repeats 1
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import onnx

from trt_centerpoint.eval.compare import per_layer_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, help="a build folder with rpn_head.fp32.onnx, rpn_head.int8.onnx")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ref = onnx.load(str(Path(args.artifacts) / "rpn_head.fp32.onnx"))
    got = onnx.load(str(Path(args.artifacts) / "rpn_head.int8.onnx"))
    dims = [d.dim_value for d in ref.graph.input[0].type.tensor_type.shape.dim]
    # non-negative like the backbone's ReLU output, ~60 % zeros like a real BEV
    rng = np.random.default_rng(args.seed)
    bev = (rng.random(dims, dtype=np.float32) * (rng.random(dims) > 0.6)).astype(np.float32)
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = per_layer_onnx(ref, got, {ref.graph.input[0].name: bev})
        print(f"per_layer_onnx: {len(result['layers'])} tensors, first jump {result['first_jump']}: "
              f"wall {time.perf_counter() - wall:.1f} s, CPU {time.process_time() - cpu:.1f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
