"""Compare libspconv's output with the reference runner's (files written by prepare_device_check.py).

Standard library only: the GPU machine has no project environment. Prints one line: cosine, max abs error,
relative error (max |difference| / max |reference|) and the verdict against the tolerance; exit 1 when over.

    python3 scripts/device_compare.py EXPECTED.bin (float32) OUTPUT.bin DTYPE(float16|int8) TOLERANCE LABEL
"""

import math
import struct
import sys


def read(path, dtype):
    data = open(path, "rb").read()
    code, size = {"float32": ("f", 4), "float16": ("e", 2), "int8": ("b", 1)}[dtype]
    return struct.unpack(f"<{len(data) // size}{code}", data)


def main(argv):
    reference_path, output_path, dtype, tolerance, label = argv
    ref, out = read(reference_path, "float32"), read(output_path, dtype)
    if len(ref) != len(out):
        print(f"{label}: libspconv returned {len(out)} values, the reference {len(ref)}: differ")
        return 1
    dot = sum(a * b for a, b in zip(ref, out))
    norm = math.sqrt(sum(a * a for a in ref)) * math.sqrt(sum(b * b for b in out))
    cosine = dot / norm if norm else (1.0 if not any(ref) and not any(out) else 0.0)
    max_abs = max((abs(a - b) for a, b in zip(ref, out)), default=0.0)
    scale = max((abs(a) for a in ref), default=0.0) or 1e-38
    relative = max_abs / scale
    verdict = "agree" if relative <= float(tolerance) else "differ"
    print(f"{label}: libspconv vs reference runner: cosine {cosine:.6f}, max abs {max_abs:.4g}, relative "
          f"{relative:.4g} (tolerance {tolerance}): {verdict}")
    return 0 if verdict == "agree" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
