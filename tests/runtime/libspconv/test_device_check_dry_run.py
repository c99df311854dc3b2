"""scripts/device_check.sh, prepared here and dry-run with the stand-in CUDA runtime (no GPU is lent to CI):
the folder is complete and small, the gate / run / compare plumbing works, and the host-side run is labelled.
On the stand-in no kernel runs, so the output is zeros: the comparison must say "differ" for both files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from spconv_helpers import release_dir

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.runtime.libspconv.locate import locate_libspconv
from trt_centerpoint.runtime.libspconv.session import open_libspconv

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
from prepare_device_check import prepare  # noqa: E402  (a script, not a package module)


def test_prepare_and_dry_run(scn_files, tmp_path, monkeypatch, native_cache):
    monkeypatch.setenv("XDG_CACHE_HOME", str(native_cache / "device"))
    data = tmp_path / "frames"
    write_dataset(data, frames=1, seed=5, config=load_config("synthetic_small"), progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    folder = release_dir("1.1.10")
    standin = open_libspconv(folder, host_side=True).native.standin_dir / "libcudart.so.12"
    out = tmp_path / "device_check"
    prepare(scn_files["fp16"].parent, str(data), "synthetic_small", str(folder), out, str(standin))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 16 * 2**20 and (out / "lib" / "libspconv.so").is_file() and locate_libspconv(folder).api == "1.1"
    done = subprocess.run([str(ROOT / "scripts" / "device_check.sh"), str(out), "--host-side"], capture_output=True,
                          text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines[0].startswith("scn.fp16.onnx (host-side build only: no kernel ran, build + forward ")
    assert lines[0].endswith("relative 1 (tolerance 0.05): differ")
    assert lines[1].startswith("scn.int8.onnx (host-side build only: no kernel ran, build + forward ")
    assert lines[1].endswith("relative 1 (tolerance 0.05): differ") and len(lines) == 2
