"""Just enough ELF64 reading for libspconv.so: section bytes by name and the NEEDED sonames.

Why in Python: `readelf` / `cuobjdump` may be missing on a user's machine; the two facts we need are a few
fixed-layout records away.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["ElfError", "needed_sonames", "section_bytes"]

SHT_DYNAMIC, SHT_STRTAB = 6, 3
DT_NEEDED, DT_STRTAB = 1, 5


class ElfError(ValueError):
    """Not a little-endian ELF64 file, or a header that points outside the file."""


def _check(data: bytes) -> None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a little-endian 64-bit ELF file")


def _sections(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, type, address, offset, size) of each section."""
    _check(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    try:
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names_at = raw[shstrndx][4]
    except (struct.error, IndexError):
        raise ElfError("section headers outside the file") from None
    out = []
    for name, kind, _, addr, offset, size, *_ in raw:
        start = names_at + name
        out.append((data[start:data.index(b"\0", start)].decode("ascii", "replace"), kind, addr, offset, size))
    return out


def section_bytes(path: str | Path, name: str) -> bytes | None:
    """The contents of section `name` (None when the file has no such section)."""
    data = Path(path).read_bytes()
    for section, _, _, offset, size in _sections(data):
        if section == name:
            return data[offset:offset + size]
    return None


def needed_sonames(path: str | Path) -> list[str]:
    """The DT_NEEDED entries of a shared library, in order (libcudart.so.12, libstdc++.so.6, ...)."""
    data = Path(path).read_bytes()
    sections = _sections(data)
    dynamic = next((s for s in sections if s[1] == SHT_DYNAMIC), None)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, dynamic[3] + i) for i in range(0, dynamic[4], 16)]
    strtab_addr = next((value for tag, value in entries if tag == DT_STRTAB), None)
    strtab = next((s for s in sections if s[1] == SHT_STRTAB and s[2] == strtab_addr), None)
    if strtab is None:
        raise ElfError("dynamic string table not found")
    out = []
    for tag, value in entries:
        if tag == DT_NEEDED:
            start = strtab[3] + value
            out.append(data[start:data.index(b"\0", start)].decode("ascii", "replace"))
    return out
