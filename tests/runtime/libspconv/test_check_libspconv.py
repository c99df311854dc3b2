"""`check --libspconv`: NVIDIA's own engine build of real exported scn files, both API generations, host-side.

Where there is no GPU the library loads our stand-in CUDA runtime (host memory, no kernel launched): the parse,
every push into the engine builder and the build run; a forward pass would compute nothing. Each line says so.
"""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from onnx import helper
from spconv_helpers import int8_specs, release_dir

from trt_centerpoint.cli import main
from trt_centerpoint.config import load_config
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.runtime.libspconv.engine import HOST_SIDE, build_engine
from trt_centerpoint.runtime.libspconv.process import LibspconvCrash
from trt_centerpoint.runtime.libspconv.session import open_libspconv
from trt_centerpoint.stages.check import check_files, exit_status

# the library's node count after its own fusions on this network (13 convs, 4 add, 4 relu, scatter, reshape):
# 1.0.1 keeps every node and fuses add + relu at run time; 1.1.10 fuses them (and scatter + reshape) up front
NODES = {"1.0.1": 23, "1.1.10": 18}


def _session(folder, cache):
    return open_libspconv(folder, cache=cache, host_side=True)


def test_gate_refuses_1_0_1_on_sm90_in_one_line(scn_files, capsys):
    folder = release_dir("1.0.1")
    status = main(["check", "--libspconv", str(folder), "--compute-capability", "9.0", str(scn_files["fp16"])])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert "sm_80, sm_86" in line and "no PTX: no JIT" in line and "9.0 needs sm_90" in line


def test_gate_accepts_1_1_10_on_sm90_and_builds_host_side(scn_files, native_cache, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(native_cache / "cli"))
    folder = release_dir("1.1.10")
    status = main(["check", "--libspconv", str(folder), "--compute-capability", "9.0", str(scn_files["fp16"])])
    out, _ = capsys.readouterr()
    lines = out.strip().splitlines()
    assert status == 0, out
    assert "9.0 runs sm_90" in lines[0] and lines[0].endswith(": ok")
    where = HOST_SIDE if not torch.cuda.is_available() else "on the GPU ("
    assert f"libspconv 1.1.10: engine built, 18 nodes ({where}" in lines[1]


@pytest.mark.parametrize("version", sorted(NODES))
def test_both_releases_build_our_fp16_and_int8_files(version, scn_files, native_cache):
    spconv = _session(release_dir(version), native_cache)
    assert spconv.library.api == version[:3]
    checks = check_files([scn_files["fp16"], scn_files["int8"]], use_parser=False, spconv=spconv)
    assert exit_status(checks) == 0, [c.lines() for c in checks]
    for check in checks:
        assert check.libspconv == f"libspconv {version}: engine built, {NODES[version]} nodes ({HOST_SIDE})"


@pytest.mark.parametrize("version", sorted(NODES))
def test_a_dangling_input_crashes_the_library_and_is_one_line(version, scn_files, native_cache, tmp_path):
    """Our lint names the node; NVIDIA's library (both releases) segfaults on it: the child dies, we go on."""
    model = onnx.load(str(scn_files["fp16"]))
    next(n for n in model.graph.node if n.name == "conv4").input[0] = "nowhere"
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    (check,) = check_files([path], use_parser=False, spconv=_session(release_dir(version), native_cache))
    assert check.findings[0].endswith("conv4: input 'nowhere' is not produced by an earlier node or the graph input")
    crash = check.findings[1]
    assert crash.startswith(f"{path}: libspconv {version} crashed (SIGSEGV); its last messages: ")
    assert crash.endswith(f"({HOST_SIDE})") and "\n" not in crash and len(check.findings) == 2


@pytest.mark.parametrize("version", sorted(NODES))
def test_the_tiny_configs_8_channels_have_no_kernel(version, native_cache, tmp_path):
    """A fact for config authors: libspconv's implicit-GEMM kernels exist for the channel counts NVIDIA's models
    use; the tiny test config's 5 -> 8 input conv has none, and both releases say so while building."""
    torch_model = CenterPoint(load_config("tiny")).eval()
    path = tmp_path / "scn.tiny.onnx"
    onnx.save(export_scn(fuse_backbone(torch_model.backbone)).model, str(path))
    spconv = _session(release_dir(version), native_cache)
    with pytest.raises(LibspconvCrash, match="Can not find any matched kernel 5 x 8"):
        build_engine(spconv.library, spconv.native, path, host_side=True)


@pytest.mark.parametrize("version", sorted(NODES))
def test_the_5_channel_input_conv_builds_in_int8(version, scn_files, sample_model, native_cache, tmp_path):
    """conv_input (5 -> 16) at int8, everything else as the default INT8 file: both releases build it and
    report it as an Int8 layer (host-side only: whether its INT8 kernel is accurate needs a GPU)."""
    fused = fuse_backbone(copy.deepcopy(sample_model.backbone))
    path = tmp_path / "scn.int8.conv_input.onnx"
    onnx.save(export_scn(fused, quant=int8_specs(fused, fp16_layers=("conv1.0.",))).model, str(path))
    spconv = _session(release_dir(version), native_cache)
    built = build_engine(spconv.library, spconv.native, path, host_side=True)
    assert built.errors == [] and built.nodes == NODES[version]
    conv0 = [m for m in built.messages if m.startswith("Add SparseConvolution conv0")]
    assert len(conv0) == 1 and "precision: Int8" in conv0[0] and "kernel: 16x3x3x3x5" in conv0[0]


def test_the_qdq_form_is_not_fed_to_libspconv(scn_files, native_cache, tmp_path):
    from trt_centerpoint.export.scn.qdq import scn_to_qdq

    path = tmp_path / "scn.int8.qdq.onnx"
    onnx.save(scn_to_qdq(onnx.load(str(scn_files["int8"]))), str(path))
    (check,) = check_files([path], use_parser=False, spconv=_session(release_dir("1.1.10"), native_cache))
    assert check.findings == [] and "not run: the Q/DQ form" in check.libspconv


def test_an_error_line_of_the_library_is_a_finding(scn_files, native_cache, tmp_path):
    """1.1.10 prints an error for a ScatterDense volume that disagrees and still returns an engine; our lint
    says the same in its terms; both are findings."""
    model = onnx.load(str(scn_files["fp16"]))
    scatter = next(n for n in model.graph.node if n.op_type == "ScatterDense")
    for i, a in enumerate(scatter.attribute):
        if a.name == "output_shape":
            shape = list(a.ints)
            del scatter.attribute[i]
            break
    shape[1] *= 2
    scatter.attribute.append(helper.make_attribute("output_shape", shape))
    path = tmp_path / "scatter.onnx"
    onnx.save(model, str(path))
    (check,) = check_files([path], use_parser=False, spconv=_session(release_dir("1.1.10"), native_cache))
    assert exit_status([check]) == 1
    ours = [f for f in check.findings if "libspconv" not in f]
    theirs = [f for f in check.findings if "libspconv 1.1.10" in f]
    assert ours and ours[0].startswith(f"{path}: scatter0: output_shape")
    assert theirs, check.findings


@pytest.mark.parametrize("version", sorted(NODES))
def test_an_unknown_operator(version, scn_files, native_cache, tmp_path):
    """1.0.1 parses the file itself and stops at the operator; for 1.1.x our description has no line for it."""
    model = onnx.load(str(scn_files["fp16"]))
    next(n for n in model.graph.node if n.name == "relu1").op_type = "Gelu"
    path = tmp_path / "gelu.onnx"
    onnx.save(model, str(path))
    (check,) = check_files([path], use_parser=False, spconv=_session(release_dir(version), native_cache))
    assert check.findings[0].startswith(f"{path}: relu1: unsupported operator 'Gelu'")
    theirs = [f for f in check.findings if f"libspconv {version}" in f]
    assert len(theirs) == 1 and "\n" not in theirs[0], check.findings
