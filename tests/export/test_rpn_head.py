"""rpn_head.fp32.onnx: CUDA-CenterPoint's I/O names and order, valid ONNX, ONNX Runtime == PyTorch."""

import onnx
import pytest
import torch

from trt_centerpoint.export.head.export import (
    FP64_WINDOW,
    RPN_HEAD_INPUT,
    RpnHeadModule,
    bev_input_shape,
    central_window,
    export_rpn_head,
    fp32_vs_fp64,
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


def test_float64_context_runs_on_an_aligned_central_window(exported, model, frames):
    big = torch.arange(2 * 180 * 180, dtype=torch.float32).reshape(1, 2, 180, 180)
    window = central_window(big, 64)
    assert list(window.shape) == [1, 2, 64, 64]
    assert int(window[0, 0, 0, 0]) == 56 * 180 + 56  # (180 - 64) // 2 = 58, down to a multiple of 8
    small = torch.zeros(1, 2, 40, 24)
    assert central_window(small, 64).shape == small.shape
    with torch.no_grad():
        bev = model.backbone(*frames[0], 1)
    figures = validate_rpn_head(exported, model, [bev])
    assert figures["pytorch_fp32_vs_fp64_window"] == list(central_window(bev, FP64_WINDOW).shape[-2:])
    wrapper = RpnHeadModule(model).eval()
    # the figure is float32 rounding: above zero for a trained-size network, far below the gate's 1e-4
    assert 0.0 < figures["pytorch_fp32_vs_fp64_max_abs"] == fp32_vs_fp64(wrapper, central_window(bev, FP64_WINDOW))
    assert figures["pytorch_fp32_vs_fp64_max_abs"] < 1e-4


def test_onnxruntime_gives_the_same_bits_on_one_and_two_threads(exported, model):
    """The validation sessions run on --threads: MLAS splits a conv's outputs between threads, not its sums."""
    import numpy as np
    import onnxruntime as ort

    x = torch.relu(torch.randn(1, *exported_shape(model), generator=torch.Generator().manual_seed(3))).numpy()
    runs = []
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(exported.to_bytes(), options, providers=["CPUExecutionProvider"])
        runs.append(session.run(None, {RPN_HEAD_INPUT: x}))
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
