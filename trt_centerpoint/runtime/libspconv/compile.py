"""Our native part, compiled on first use: the caller of the user's libspconv (`native/spconv_run10.cpp` for
the 1.0.x API, `spconv_run11.cpp` for 1.1.x) and the stand-in CUDA runtime (`native/cudart_standin.c`).

Why on first use: the caller must be compiled against the user's own headers and library (C++ ABI, API
generation); shipping binaries would pin one release. The result goes to a per-user cache
($XDG_CACHE_HOME or ~/.cache, then trt-centerpoint/libspconv/<key>), keyed by our sources, the library's
bytes and the compiler, and appears whole or not at all (built in a temporary folder, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_dir
from trt_centerpoint.manifest import file_sha256
from trt_centerpoint.runtime.libspconv.locate import Libspconv

__all__ = ["NATIVE", "NativeBuild", "cache_root", "compile_native", "find_compiler"]

NATIVE = Path(__file__).parent / "native"
SOURCES = ("shim_io.hpp", "spconv_run10.cpp", "spconv_run11.cpp", "cudart_standin.c", "cudart_standin.map.in")
CALLER = {"1.0": "spconv_run10", "1.1": "spconv_run11"}
COMPILE_SECONDS = 300


@dataclass(frozen=True)
class NativeBuild:
    folder: Path

    @property
    def caller(self) -> Path:
        return self.folder / "spconv_run"

    @property
    def standin_dir(self) -> Path:
        """Holds the stand-in CUDA runtime under the soname the library needs; put first on LD_LIBRARY_PATH."""
        return self.folder / "standin"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trt-centerpoint" / "libspconv"


def find_compiler(kind: str) -> str:
    """The C++ (or C) compiler: $CXX / $CC, else g++ / gcc on PATH; one line on what to install if none."""
    env, default = ("CXX", "g++") if kind == "c++" else ("CC", "gcc")
    chosen = os.environ.get(env) or default
    path = shutil.which(chosen)
    if path is None:
        raise UserError(f"no {kind} compiler: {chosen!r} not found on PATH (the libspconv backend compiles a small "
                        f"caller on first use; install g++ and gcc, e.g. `apt install g++`, or set {env})")
    return path


def _key(library: Libspconv, cxx: str, cc: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (NATIVE / name).read_bytes())
    for header in sorted((library.include / "spconv").glob("*.hpp")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    digest.update(f"{file_sha256(library.library)}\0{library.api}\0{library.cudart_soname}\0{cxx}\0{cc}".encode())
    return digest.hexdigest()[:20]


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS)
    except subprocess.TimeoutExpired:
        raise UserError(f"compiling {what} took over {COMPILE_SECONDS} s: {' '.join(command[:2])} ...") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        first = next((line for line in output if "error" in line), output[0] if output else "no output")
        raise UserError(f"compiling {what} failed: {first.strip()}")


def _compile(library: Libspconv, cxx: str, cc: str, folder: Path) -> None:
    soname = library.cudart_soname
    if soname:
        standin = folder / "standin"
        standin.mkdir()
        version_script = folder / "cudart_standin.map"
        version_script.write_text((NATIVE / "cudart_standin.map.in").read_text().replace("@SONAME@", soname))
        _run([cc, "-shared", "-fPIC", "-O1", "-o", str(standin / soname), f"-Wl,-soname,{soname}",
              f"-Wl,--version-script={version_script}", str(NATIVE / "cudart_standin.c")],
             f"the stand-in CUDA runtime ({soname})")
    source = NATIVE / f"{CALLER[library.api]}.cpp"
    # the library's own CUDA runtime is found at run time (LD_LIBRARY_PATH): it may be the stand-in or the real one
    _run([cxx, "-std=c++14", "-O1", "-o", str(folder / "spconv_run"), str(source), f"-I{library.include}",
          f"-L{library.lib_dir}", "-lspconv", f"-Wl,-rpath,{library.lib_dir}", "-Wl,--allow-shlib-undefined"],
         f"our libspconv {library.api}.x caller against {library.root}")


def compile_native(library: Libspconv, cache: Path | None = None) -> NativeBuild:
    """The compiled caller + stand-in for this library, from the cache or compiled now."""
    cxx, cc = find_compiler("c++"), find_compiler("c")
    folder = (cache or cache_root()) / _key(library, cxx, cc)
    build = NativeBuild(folder)
    if build.caller.is_file():
        return build
    try:
        with atomic_dir(folder) as tmp:
            _compile(library, cxx, cc, tmp)
    except FileExistsError:  # another process finished the same build first
        pass
    except OSError as exc:
        if not build.caller.is_file():
            raise UserError(f"{folder}: cannot write the compiled libspconv caller ({exc.strerror or exc})") from None
    return build
