"""The user's libspconv folder: `--libspconv DIR` or `TRT_CENTERPOINT_LIBSPCONV`, in the layout NVIDIA ships.

    DIR/include/spconv/engine.hpp (+ tensor.hpp, version.hpp, ...)   DIR/lib/libspconv.so

The API generation comes from the headers: 1.0.x exports `load_engine_from_onnx` (the library parses ONNX
itself, through libprotobuf.so.17, which must sit next to it), 1.1.x and later `create_engine_builder`.
The CUDA runtime it needs is its NEEDED libcudart soname (read from the ELF, not guessed from the version).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.libspconv.elf import ElfError, needed_sonames

__all__ = ["ENV_LIBSPCONV", "Libspconv", "configured_libspconv", "locate_libspconv"]

ENV_LIBSPCONV = "TRT_CENTERPOINT_LIBSPCONV"
HEADERS = ("engine.hpp", "tensor.hpp")
# the pip wheel that ships each CUDA runtime soname libspconv releases link against
CUDART_WHEELS = {"libcudart.so.11.0": "nvidia-cuda-runtime-cu11", "libcudart.so.12": "nvidia-cuda-runtime-cu12",
                 "libcudart.so.13": "nvidia-cuda-runtime-cu13"}


@dataclass(frozen=True)
class Libspconv:
    root: Path
    version: str  # "1.1.10", from include/spconv/version.hpp ("unknown" without it)
    api: str  # "1.0" (load_engine_from_onnx) or "1.1" (EngineBuilder)
    needed: tuple[str, ...]  # DT_NEEDED sonames of lib/libspconv.so

    @property
    def include(self) -> Path:
        return self.root / "include"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def library(self) -> Path:
        return self.lib_dir / "libspconv.so"

    @property
    def cudart_soname(self) -> str:
        return next((n for n in self.needed if n.startswith("libcudart.so")), "")

    @property
    def cudart_wheel(self) -> str:
        return CUDART_WHEELS.get(self.cudart_soname, "the CUDA runtime of the toolkit it was built with")

    def describe(self) -> str:
        return f"libspconv {self.version} (API {self.api}.x) at {self.root}"


def configured_libspconv(option: str | os.PathLike | None) -> str | None:
    """The folder asked for: the option, else the environment variable, else None (libspconv not used)."""
    if option:
        return str(option)
    return os.environ.get(ENV_LIBSPCONV) or None


def _version(include: Path) -> str:
    path = include / "spconv" / "version.hpp"
    if not path.is_file():
        return "unknown"
    found = dict(re.findall(r"#define\s+NVSPCONV_(MAJOR|MINOR|REL)\s+(\d+)", path.read_text(errors="replace")))
    if len(found) != 3:
        return "unknown"
    return f"{found['MAJOR']}.{found['MINOR']}.{found['REL']}"


def _api(engine_hpp: Path) -> str:
    source = engine_hpp.read_text(errors="replace")
    if "create_engine_builder" in source:
        return "1.1"
    if "load_engine_from_onnx" in source:
        return "1.0"
    raise UserError(f"{engine_hpp}: declares neither load_engine_from_onnx (libspconv 1.0.x) nor "
                    "create_engine_builder (1.1.x and later): not a libspconv header")


def locate_libspconv(folder: str | os.PathLike) -> Libspconv:
    """Check the layout and read the API generation and NEEDED sonames; one UserError line for what is missing."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: no such libspconv folder (expected include/spconv/*.hpp and lib/libspconv.so)")
    for header in HEADERS:
        if not (root / "include" / "spconv" / header).is_file():
            raise UserError(f"{root}: include/spconv/{header} missing (a libspconv folder as NVIDIA ships it has "
                            "include/spconv/*.hpp and lib/libspconv.so)")
    library = root / "lib" / "libspconv.so"
    if not library.is_file():
        raise UserError(f"{root}: lib/libspconv.so missing (a libspconv folder as NVIDIA ships it has "
                        "include/spconv/*.hpp and lib/libspconv.so)")
    try:
        needed = tuple(needed_sonames(library))
    except (ElfError, OSError) as exc:
        raise UserError(f"{library}: not a readable shared library ({exc})") from None
    found = Libspconv(root, _version(root / "include"), _api(root / "include" / "spconv" / "engine.hpp"), needed)
    if found.api == "1.0" and "libprotobuf.so.17" in needed and not (root / "lib" / "libprotobuf.so.17").is_file():
        raise UserError(f"{root}: lib/libprotobuf.so.17 missing: libspconv 1.0.x parses ONNX with protobuf 3.6.1 "
                        "and needs that exact library next to lib/libspconv.so (CUDA-CenterPoint ships it in "
                        "3rdparty/libspconv/lib)")
    return found
