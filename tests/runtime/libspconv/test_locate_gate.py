"""Finding a libspconv, reading its GPU code and NEEDED sonames from the ELF, the architecture gate, and the
one-line messages for what is missing (compiler, header, library, protobuf, CUDA runtime)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from spconv_helpers import release_dir

from trt_centerpoint.errors import UserError
from trt_centerpoint.runtime.libspconv import process
from trt_centerpoint.runtime.libspconv.compile import compile_native
from trt_centerpoint.runtime.libspconv.elf import ElfError, needed_sonames
from trt_centerpoint.runtime.libspconv.fatbin import GpuCode, read_gpu_code
from trt_centerpoint.runtime.libspconv.gate import gate, parse_capability, runs_on
from trt_centerpoint.runtime.libspconv.locate import ENV_LIBSPCONV, configured_libspconv, locate_libspconv

# NVIDIA's release notes: 1.0.1 (CUDA-CenterPoint) sm_80 / sm_86; 1.1.10 "Add SM90 support for H100"; no PTX
SASS = {"1.0.1": (80, 86), "1.1.10": (80, 86, 90)}


@pytest.mark.parametrize("version", sorted(SASS))
def test_gpu_code_and_needed_sonames(version):
    folder = release_dir(version)
    code = read_gpu_code(folder / "lib" / "libspconv.so")
    assert code.sass == SASS[version] and code.ptx == ()
    needed = needed_sonames(folder / "lib" / "libspconv.so")
    readelf = shutil.which("readelf")
    if readelf:  # binutils' own reading as the reference
        dump = subprocess.run([readelf, "-d", str(folder / "lib" / "libspconv.so")], capture_output=True,
                              text=True, check=True).stdout
        assert needed == [line.split("[")[1].split("]")[0] for line in dump.splitlines() if "(NEEDED)" in line]
    assert needed[0] == {"1.0.1": "libcudart.so.11.0", "1.1.10": "libcudart.so.12"}[version]


def test_a_library_without_gpu_code_and_a_non_elf_file(tmp_path):
    assert read_gpu_code(sys.executable).sass == ()  # an ELF without .nv_fatbin
    (tmp_path / "x.so").write_bytes(b"not an ELF file at all")
    with pytest.raises(ElfError):
        needed_sonames(tmp_path / "x.so")


def test_runs_on_follows_cuda_binary_compatibility():

    code = GpuCode((80, 86), ())
    assert runs_on(code, (8, 0)) == 80 and runs_on(code, (8, 6)) == 86
    assert runs_on(code, (8, 9)) == 86 and runs_on(code, (8, 7)) == 86  # same major, newer minor
    assert runs_on(code, (9, 0)) is None and runs_on(code, (12, 0)) is None and runs_on(code, (7, 5)) is None
    with pytest.raises(UserError, match="expected MAJOR.MINOR"):
        parse_capability("sm_90")


def test_gate_lines():
    old, new = locate_libspconv(release_dir("1.0.1")), locate_libspconv(release_dir("1.1.10"))
    refused = gate(old, ["9.0"])
    assert not refused.ok and refused.line.startswith(
        "libspconv 1.0.1 GPU code: sm_80, sm_86 (no PTX: no JIT); --compute-capability 9.0 needs sm_90: not in this "
        "build: refused")
    assert "1.1.10 was the first with sm_90" in refused.line
    assert gate(new, ["9.0", "8.6"]).ok
    assert not gate(new, ["12.0"]).ok
    assert gate(old, ["8.9"]).line.endswith("8.9 runs sm_86 (same major, binary compatible): ok")


def test_locate_messages(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such libspconv folder"):
        locate_libspconv(tmp_path / "missing")
    broken = tmp_path / "lib_only"
    (broken / "lib").mkdir(parents=True)
    with pytest.raises(UserError, match=r"include/spconv/engine.hpp missing"):
        locate_libspconv(broken)
    real = release_dir("1.0.1")
    no_protobuf = tmp_path / "no_protobuf"
    shutil.copytree(real / "include", no_protobuf / "include")
    (no_protobuf / "lib").mkdir()
    (no_protobuf / "lib" / "libspconv.so").symlink_to(real / "lib" / "libspconv.so")
    with pytest.raises(UserError, match="lib/libprotobuf.so.17 missing"):
        locate_libspconv(no_protobuf)
    (no_protobuf / "lib" / "libspconv.so").unlink()
    with pytest.raises(UserError, match="lib/libspconv.so missing"):
        locate_libspconv(no_protobuf)
    monkeypatch.setenv(ENV_LIBSPCONV, "/from/env")
    assert configured_libspconv(None) == "/from/env" and configured_libspconv("opt") == "opt"
    monkeypatch.delenv(ENV_LIBSPCONV)
    assert configured_libspconv(None) is None


def test_missing_compiler_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(UserError, match=r"no c\+\+ compiler: .*install g\+\+"):
        compile_native(locate_libspconv(release_dir("1.1.10")), tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_compile_is_cached_and_keyed(native_cache):
    library = locate_libspconv(release_dir("1.1.10"))
    first = compile_native(library, native_cache)
    stamp = first.caller.stat().st_mtime_ns
    assert compile_native(library, native_cache) == first and first.caller.stat().st_mtime_ns == stamp
    assert (first.standin_dir / "libcudart.so.12").is_file()
    other = compile_native(locate_libspconv(release_dir("1.0.1")), native_cache)
    assert other.folder != first.folder and (other.standin_dir / "libcudart.so.11.0").is_file()


def test_a_compile_error_is_one_line(monkeypatch, tmp_path):
    """A header that is not NVIDIA's: the compiler's first error line, no half-written cache entry."""
    real = release_dir("1.1.10")
    fake = tmp_path / "fake"
    shutil.copytree(real / "include", fake / "include")
    (fake / "lib").mkdir()
    (fake / "lib" / "libspconv.so").symlink_to(real / "lib" / "libspconv.so")
    tensor = fake / "include" / "spconv" / "tensor.hpp"
    tensor.chmod(0o644)
    tensor.write_text(tensor.read_text().replace("struct Tensor {", "struct Tensor { broken here"))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"^compiling our libspconv 1.1.x caller .* failed: .*error"):
        compile_native(locate_libspconv(fake), cache)
    assert [p for p in cache.iterdir()] == []


def test_missing_cuda_runtime_names_the_wheel(monkeypatch, native_cache):
    library = locate_libspconv(release_dir("1.1.10"))
    native = compile_native(library, native_cache)
    monkeypatch.setattr(sys, "path", [])
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setattr(process, "SYSTEM_LIB_DIRS", ())
    with pytest.raises(UserError, match=r"^libcudart.so.12 not found .*pip install nvidia-cuda-runtime-cu12"):
        process.run_caller(library, native, ["build"], host_side=False, what="x")
