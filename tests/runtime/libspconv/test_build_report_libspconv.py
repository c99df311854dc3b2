"""`build --libspconv`: the gate stops the build before anything runs; the report's deployment section."""

from __future__ import annotations

import pytest
from spconv_helpers import release_dir

from trt_centerpoint.errors import UserError
from trt_centerpoint.report.markdown import render_markdown
from trt_centerpoint.stages.build import BuildOptions, run_build


def test_build_refuses_a_library_without_sass_for_the_target_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "build"
    opts = BuildOptions(out=out, libspconv=str(release_dir("1.0.1")), compute_capabilities=("9.0",))
    with pytest.raises(UserError, match=r"^libspconv gate: libspconv 1.0.1 GPU code: sm_80, sm_86 .*9.0 needs sm_90"):
        run_build(opts, log=lambda line: None)
    assert not out.exists()


def test_deployment_section():
    record = {"gate": "libspconv 1.1.10 GPU code: sm_80, sm_86, sm_90 (no PTX: no JIT); no GPU here and no "
                      "--compute-capability: not gated",
              "where": "host-side build only: no kernel ran",
              "files": {"scn.fp16.onnx": "libspconv 1.1.10: engine built, 18 nodes (host-side build only: no "
                                         "kernel ran)"}}
    page = render_markdown({"deployment": record})
    section = page.split("## Deployment: libspconv\n\n")[1].split("\n## ")[0]
    assert section.startswith(f"Gate: {record['gate']}.\n\n- `scn.fp16.onnx`: libspconv 1.1.10: engine built")
    assert "no kernel ran, so nothing here says the GPU computes the right numbers" in section
    assert "libspconv: not checked" in render_markdown({})
