"""What NVIDIA's libspconv does not check, our lint refuses: one line each, through `check`, no traceback.

Measured with both releases (host-side engine build, `tests/runtime/libspconv`, on the synthetic_small file
with the same change; docs/libspconv.md keeps the table):

| broken file                              | libspconv 1.0.1                | libspconv 1.1.10               |
|------------------------------------------|--------------------------------|--------------------------------|
| activation "Sigmoid"                     | builds, no message             | builds, no message             |
| ScatterDense format "yxz"                | builds, no message             | builds, no message             |
| weights / in_channels 16 on a 32-ch input| builds, no message             | builds, no message             |
| stride [0, 2, 2]                         | builds, no message             | builds, no message             |
| a dangling input name                    | segfault (SIGSEGV)             | segfault (SIGSEGV)             |
"""

import copy

import onnx
import pytest
from onnx import numpy_helper
from onnx_edit import node_named, set_attribute

from trt_centerpoint.cli import main
from trt_centerpoint.export.lint import lint_model


def _activation(m):
    set_attribute(node_named(m, "conv4"), "activation", "Sigmoid")


def _scatter_format(m):
    set_attribute(node_named(m, "scatter0"), "format", "yxz")


def _weight_in_channels(m):
    """conv4 reads conv3's 8 channels; its weight and in_channels both say 4 (consistent with each other)."""
    conv = node_named(m, "conv4")
    weight = next(t for t in m.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[..., :4].copy(), weight.name))
    set_attribute(conv, "in_channels", 4)


def _weight_only(m):
    conv = node_named(m, "conv4")
    weight = next(t for t in m.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[..., :4].copy(), weight.name))


def _stride0(m):
    set_attribute(node_named(m, "conv3"), "stride", [0, 2, 2])


def _dangling(m):
    node_named(m, "conv4").input[0] = "nowhere"


CASES = {
    "activation": (_activation, "conv4: activation 'Sigmoid' (must be one of ReLU, None)"),
    "scatter_format": (_scatter_format, "scatter0: format 'yxz' (must be 'zyx' or 'xyz')"),
    "weight_in_channels": (_weight_in_channels, "conv4: in_channels 4, but its input has 8 channels"),
    "weight_only": (_weight_only, "conv4: weight spconv4.weight has shape [8, 3, 3, 3, 4], expected [8, 3, 3, 3, 8] "
                                  "([out, kz, ky, kx, in] / [out])"),
    "stride0": (_stride0, "conv3: stride [0, 2, 2] (every value must be >= 1)"),
    "dangling": (_dangling, "conv4: input 'nowhere' is not produced by an earlier node or the graph input"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_gap_is_one_finding(scn, case):
    broken, expected = CASES[case]
    model = copy.deepcopy(scn)
    broken(model)
    assert [f.line("f.onnx") for f in lint_model(model)] == [f"f.onnx: {expected}"]


@pytest.mark.parametrize("case", ["stride0", "dangling"])
def test_check_refuses_in_one_line(scn, case, tmp_path, capsys):
    """stride 0 used to end `check` in a ZeroDivisionError traceback."""
    broken, expected = CASES[case]
    model = copy.deepcopy(scn)
    broken(model)
    path = tmp_path / "scn.onnx"
    onnx.save(model, str(path))
    assert main(["check", "--no-parser", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [f"{path}: {expected}"] and err == ""
