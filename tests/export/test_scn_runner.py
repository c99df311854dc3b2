"""The reference runner executes the scn ONNX *file* with spconv and matches the PyTorch FP32 backbone."""

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from trt_centerpoint.errors import UserError
from trt_centerpoint.export.scn.fuse import fuse_backbone
from trt_centerpoint.export.scn.writer import export_scn
from trt_centerpoint.export.validate import compare_tensors, validate_scn
from trt_centerpoint.runtime.scn_runner import OutputBoundOverflow, OutputBoundWarning, ScnRunner


@pytest.fixture(scope="module")
def fused(model):
    return fuse_backbone(model.backbone)


@pytest.fixture(scope="module")
def scn_file(fused, tmp_path_factory):
    path = tmp_path_factory.mktemp("scn") / "scn.fp16.onnx"
    path.write_bytes(export_scn(fused, max_voxels=20000).to_bytes())
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_runner_matches_pytorch_fp32_backbone(scn_file, model, frames, precision):
    runner = ScnRunner(scn_file, precision=precision)
    figures = validate_scn(runner, model.backbone, frames)
    assert figures["min_cosine"] >= 0.9999
    # FP16 weights (+ FP16 compute): small absolute errors against values of order 1
    assert figures["max_abs_error"] <= (2e-3 if precision == "fp32" else 5e-3)
    print(f"{precision}: cosine {figures['min_cosine']:.8f} max abs {figures['max_abs_error']:.3g}")


def test_runner_reuses_rulebooks_and_counts_voxels(scn_file, frames):
    runner = ScnRunner(scn_file)
    features, coords = frames[0]
    out, tensors = runner.run(features, coords, keep=True)
    assert out.dtype == torch.float32 and out.shape[0] == 1
    assert "res0" in tensors["conv1.0.conv2"].indice_dict  # subm convs of a stage share rulebook res0
    assert "res1" in tensors["conv2.3.conv2"].indice_dict
    assert runner.counts["conv0"] == len(features) and runner.counts["conv2"] == len(features)
    assert runner.overflows == {}


def test_output_bound_overflow_is_an_error_unless_allowed(fused, frames):
    data = export_scn(fused, output_bounds={"conv2.0": 10}).to_bytes()
    with pytest.raises(OutputBoundOverflow, match=r"sparse conv conv3 needs \d+ output voxels on this frame, over "
                                                  r"its output_bound 10: libspconv would drop \d+ of them"):
        ScnRunner(data).run(*frames[0])
    runner = ScnRunner(data, allow_overflow=True)
    with pytest.warns(OutputBoundWarning, match="conv3 has .* active voxels, over its output_bound 10"):
        runner.run(*frames[0])
    assert runner.overflows["conv3"][1] == 10


def test_non_scn_onnx_is_a_one_line_user_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], "r")], "g", [x], [y]))
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError) as err:
        ScnRunner(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: not a libspconv scn ONNX") and "Relu" in message
    with pytest.raises(UserError, match="no such ONNX file"):
        ScnRunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        ScnRunner(tmp_path / "junk.onnx")


def test_compare_tensors_figures():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert compare_tensors(a, a)["cosine"] == pytest.approx(1.0)
    figures = compare_tensors(a, -a)
    assert figures["cosine"] == pytest.approx(-1.0) and figures["max_abs_error"] == 6.0
