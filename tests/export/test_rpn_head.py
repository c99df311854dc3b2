"""rpn_head.fp32.onnx: CUDA-CenterPoint's I/O names and order, valid ONNX, ONNX Runtime == PyTorch."""

import onnx
import pytest
import torch

from trt_centerpoint.export.head.export import (
    RPN_HEAD_INPUT,
    bev_input_shape,
    export_rpn_head,
    rpn_head_output_names,
    validate_rpn_head,
)
from trt_centerpoint.export.validate import ValidationError


@pytest.fixture(scope="module")
def exported(model, cfg):
    return export_rpn_head(model, cfg)


def test_names_shapes_and_opset(exported, model, cfg):
    names = [f"{k}_{i}" for i in range(2) for k in ("reg", "height", "dim", "rot", "vel", "hm")]
    assert rpn_head_output_names(model) == names == exported.output_names
    m = exported.model
    assert [o.name for o in m.graph.output] == names
    (inp,) = m.graph.input
    assert inp.name == RPN_HEAD_INPUT == "input"
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == bev_input_shape(cfg) == [1, cfg.bev_channels, *cfg.bev_shape]
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}["ai.onnx"] == 17
    hm1 = next(o for o in m.graph.output if o.name == "hm_1")
    assert [d.dim_value for d in hm1.type.tensor_type.shape.dim] == [1, 2, *cfg.bev_shape]  # pedestrian, cyclist
    assert not any(n.op_type in ("Constant", "Shape", "Identity") for n in m.graph.node)  # folded by the passes
    assert [r.name for r in exported.passes] == ["fold_constants", "name_and_order_outputs", "cleanup_toposort",
                                              "infer_shapes"]


def test_onnxruntime_matches_pytorch(exported, model, frames):
    with torch.no_grad():
        bevs = [model.backbone(f, c, 1) for f, c in frames] + [torch.randn(1, *exported_shape(model))]
    figures = validate_rpn_head(exported, model, bevs)
    assert figures["max_abs_error"] <= 1e-4 and figures["frames"] == 3
    assert set(figures["per_output_max_abs_error"]) == set(exported.output_names)
    onnx.checker.check_model(exported.model, full_check=True)
    print(f"rpn_head ORT vs torch max abs error {figures['max_abs_error']:.3g}")


def exported_shape(model):
    return [model.cfg.bev_channels, *model.cfg.bev_shape]


def test_validation_catches_a_wrong_file(exported, model):
    import copy

    broken = copy.deepcopy(exported)
    init = next(t for t in broken.model.graph.initializer if len(t.dims) == 4)
    array = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    with pytest.raises(ValidationError, match="rpn_head: ONNX Runtime differs from PyTorch by"):
        validate_rpn_head(broken, model, [torch.ones(1, *exported_shape(model))])
