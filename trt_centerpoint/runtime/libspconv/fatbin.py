"""The GPU code inside a libspconv.so: SASS targets and PTX, read from its ELF `.nv_fatbin` section.

Why: a libspconv without SASS for the GPU it meets dies there (no PTX is shipped, so the driver cannot JIT);
reading the section answers "which GPUs does this build run on" without a GPU or a CUDA tool.
Layout: the section is a run of fat binaries, each a 16-byte header (magic 0xBA55ED50, version, header size,
payload size) followed by entries; an entry header holds its kind (1 PTX, 2 ELF cubin) and its sm (at byte 28).
A cubin entry that is stored uncompressed is itself an ELF whose e_flags' low byte names the sm: where we can
read it, that is the number we report.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from trt_centerpoint.runtime.libspconv.elf import section_bytes

__all__ = ["GpuCode", "read_gpu_code"]

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


@dataclass(frozen=True)
class GpuCode:
    sass: tuple[int, ...]  # e.g. (80, 86, 90): sm_80, sm_86, sm_90
    ptx: tuple[int, ...]  # virtual architectures with PTX (JIT-able on newer GPUs); () for every release seen

    def describe(self) -> str:
        sass = ", ".join(f"sm_{s}" for s in self.sass) or "none"
        ptx = ", ".join(f"compute_{p}" for p in self.ptx) or "none"
        return f"SASS {sass}; PTX {ptx}"


def _entries(blob: bytes):
    """(kind, sm, payload) of every entry of every fat binary in the section."""
    pos = 0
    while pos + 16 <= len(blob):
        magic, _, header_size, size = struct.unpack_from("<IHHQ", blob, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fat binaries are 8-byte aligned in the section
            continue
        entry, end = pos + header_size, pos + header_size + size
        while entry + 32 <= end:
            kind, _, entry_header, payload_size = struct.unpack_from("<HHIQ", blob, entry)
            sm = struct.unpack_from("<I", blob, entry + 28)[0]
            if entry_header == 0:
                break
            yield kind, sm, blob[entry + entry_header: entry + entry_header + payload_size]
            entry += entry_header + payload_size
        pos = end


def _cubin_sm(payload: bytes, fallback: int) -> int:
    if payload[:4] == b"\x7fELF" and len(payload) >= 0x34:
        return struct.unpack_from("<I", payload, 0x30)[0] & 0xFF
    return fallback  # a compressed cubin: the entry header's sm


def read_gpu_code(library: str | Path) -> GpuCode:
    """SASS and PTX architectures embedded in a shared library (empty when it has no `.nv_fatbin`)."""
    blob = section_bytes(library, ".nv_fatbin") or b""
    sass, ptx = set(), set()
    for kind, sm, payload in _entries(blob):
        if kind == KIND_ELF:
            sass.add(_cubin_sm(payload, sm))
        elif kind == KIND_PTX:
            ptx.add(sm)
    return GpuCode(tuple(sorted(sass)), tuple(sorted(ptx)))
