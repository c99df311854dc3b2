"""Quantized modules against independent references: fake quant by hand, then the float op.

Reference fake quant (pytorch-quantization's documented numerics, written out here): scale = 127 / amax,
q = clamp(round_half_even(x * scale), -128, 127), x' = q / scale.
"""

import copy
import io
import warnings

import onnx
import pytest
import torch
from pytorch_quantization.nn import TensorQuantizer

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.quant import modules as qm
from trt_centerpoint.quant.calibrate import calibration_mode, compute_amax, set_amax

spconv = import_spconv()


def fake_quant(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    scale = torch.full_like(amax, 127.0) / amax  # a true division (`127.0 / amax` is reciprocal * 127)
    return torch.clamp(torch.round(x * scale), -128, 127) / scale


def test_reference_numerics_match_the_tensor_quantizer():
    q = qm.make_quantizer(qm.input_descriptor())
    set_amax(q, torch.tensor(127.0))  # step 1
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.6, 200.0, -127.6, -200.0, 0.49])
    expected = torch.tensor([0.0, 2.0, 2.0, -0.0, -2.0, 127.0, 127.0, -128.0, -128.0, 0.0])
    assert torch.equal(q(x), expected)  # half to even, asymmetric clamp [-128, 127]
    y = torch.randn(1000) * 3
    set_amax(q, torch.tensor(2.5))
    assert torch.equal(q(y), fake_quant(y, torch.tensor(2.5)))


def _sparse_input(channels=4, n=60, shape=(9, 10, 11), seed=0):
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(shape[0] * shape[1] * shape[2], generator=gen)[:n]
    z, rem = flat // (shape[1] * shape[2]), flat % (shape[1] * shape[2])
    coords = torch.stack([torch.zeros_like(z), z, rem // shape[2], rem % shape[2]], 1).int()
    features = torch.randn(n, channels, generator=gen) * 2
    return spconv.SparseConvTensor(features, coords, list(shape), 1)


def _quantize_with_amax(conv, x_features, input_frac=0.7, weight_frac=0.8):
    """A quantized copy of `conv` with amax below the data's max (so clipping is exercised)."""
    quant = qm.quantize_sparse_conv(copy.deepcopy(conv))
    in_amax = x_features.abs().max() * input_frac
    w_amax = conv.weight.detach().abs().amax(dim=(1, 2, 3, 4), keepdim=True) * weight_frac
    set_amax(quant.input_quantizer, in_amax)
    set_amax(quant.weight_quantizer, w_amax)
    return quant, in_amax, w_amax


def _float_reference(conv, x, in_amax, w_amax):
    ref = copy.deepcopy(conv)
    with torch.no_grad():
        ref.weight.copy_(fake_quant(conv.weight, w_amax))
    return ref(x.replace_feature(fake_quant(x.features, in_amax)))


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_quantized_sparse_conv_equals_float_conv_on_fake_quantized_tensors(kind):
    torch.manual_seed(1)
    if kind == "subm":
        conv = spconv.SubMConv3d(4, 6, 3, padding=1, bias=True, indice_key="k")
    else:
        conv = spconv.SparseConv3d(4, 6, 3, 2, padding=1, bias=False)
    conv.eval()
    x = _sparse_input()
    quant, in_amax, w_amax = _quantize_with_amax(conv, x.features)
    assert type(quant).__name__ == f"Quant{type(conv).__name__}"
    assert quant.weight_quantizer.axis == (0,)  # per output channel of [out, kz, ky, kx, in]
    with torch.no_grad():
        out = quant(x)
        ref = _float_reference(conv, x, in_amax, w_amax)
        plain = conv(x)
    assert torch.equal(out.indices, ref.indices)
    assert torch.equal(out.features, ref.features)
    assert not torch.allclose(out.features, plain.features, atol=1e-4)  # quantization did something


def test_quantized_inverse_conv_reuses_the_rulebook():
    torch.manual_seed(2)
    down = spconv.SparseConv3d(4, 6, 3, 2, padding=1, bias=False, indice_key="d").eval()
    inverse = spconv.SparseInverseConv3d(6, 4, 3, indice_key="d", bias=True).eval()
    x = _sparse_input()
    with torch.no_grad():
        y = down(x)
        quant, in_amax, w_amax = _quantize_with_amax(inverse, y.features)
        out = quant(y)
        ref = _float_reference(inverse, y, in_amax, w_amax)
    assert type(quant).__name__ == "QuantSparseInverseConv3d"
    assert torch.equal(out.indices, x.indices)  # back on the input's voxels: indice key "d" was reused
    assert torch.equal(out.features, ref.features)


def test_swap_keeps_parameter_names_and_attributes():
    conv = spconv.SubMConv3d(4, 6, 3, padding=1, bias=True, indice_key="res7")
    names = [n for n, _ in conv.named_parameters()]
    weight = conv.weight
    quant = qm.quantize_sparse_conv(conv)
    assert [n for n, _ in quant.named_parameters()] == names
    assert quant.weight is weight and quant.indice_key == "res7" and quant.subm
    assert set(quant.state_dict()) == set(names)  # no amax before calibration


def test_quant_add_shares_one_quantizer():
    add = qm.QuantAdd()
    amax = torch.tensor(1.3)
    set_amax(add.input_quantizer, amax)
    x, identity = torch.randn(50, 8), torch.randn(50, 8) * 3
    assert torch.equal(add(x, identity), fake_quant(x, amax) + fake_quant(identity, amax))
    assert [n for n, _ in add.named_modules() if n] == ["_input_quantizer"]


def test_quant_concat_shares_one_quantizer_and_calibrates_inputs_as_one():
    cat = qm.QuantConcat()
    small, large = torch.rand(1, 3, 4, 4) * 0.1, torch.rand(1, 2, 4, 4) * 9
    q = cat.input_quantizer
    q.disable_quant()
    q.enable_calib()
    assert torch.equal(cat([small, large]), torch.cat([small, large], 1))
    hist = q._calibrator._calib_hist
    assert hist.numel() == 2048 and int(hist.sum()) == small.numel() + large.numel()
    q.disable_calib()
    q.enable_quant()
    amax = torch.tensor(5.0)
    set_amax(q, amax)
    assert torch.equal(cat([small, large]), torch.cat([fake_quant(small, amax), fake_quant(large, amax)], 1))


def test_2d_modules_use_pytorch_quantization_with_tensorrt_legal_axes():
    from pytorch_quantization import nn as quant_nn

    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    deconv = torch.nn.ConvTranspose2d(6, 5, 2, stride=2, bias=False)
    linear = torch.nn.Linear(7, 3)
    qc, qd, ql = qm.quantize_conv2d(conv), qm.quantize_conv_transpose2d(deconv), qm.quantize_linear(linear)
    assert isinstance(qc, quant_nn.QuantConv2d) and qc.weight is conv.weight and qc.bias is None
    assert isinstance(qd, quant_nn.QuantConvTranspose2d) and qd.weight is deconv.weight
    assert isinstance(ql, quant_nn.QuantLinear) and ql.bias is linear.bias
    assert qc.weight_quantizer.axis == (0,) and ql.weight_quantizer.axis == (0,)
    # ConvTranspose weight [C_in, C_out, kh, kw]: per output channel, axis 1 (2.1.3's own default is axis 0,
    # the input-channel axis the deconvolution sums over)
    assert qd.weight_quantizer.axis == (qm.CONVTRANSPOSE_WEIGHT_AXIS,) == (1,)
    assert quant_nn.QuantConvTranspose2d.default_quant_desc_weight.axis == 0  # what we override
    x = torch.randn(1, 6, 5, 5)
    set_amax(qd.input_quantizer, torch.tensor(2.0))
    w_amax = deconv.weight.detach().abs().amax(dim=(0, 2, 3), keepdim=True)  # [1, C_out, 1, 1]
    assert w_amax.shape == (1, 5, 1, 1)
    set_amax(qd.weight_quantizer, w_amax)
    with torch.no_grad():
        ref = torch.nn.functional.conv_transpose2d(fake_quant(x, torch.tensor(2.0)), fake_quant(deconv.weight, w_amax),
                                                   stride=2)
        assert torch.equal(qd(x), ref)


def test_conv_transpose_weight_calibrates_and_exports_per_output_channel():
    deconv = torch.nn.ConvTranspose2d(6, 5, 2, stride=2, bias=False)
    qd = qm.quantize_conv_transpose2d(deconv, input_calib="max").eval()
    x = torch.randn(2, 6, 4, 4)
    with calibration_mode(qd), torch.no_grad():
        qd(x)
    compute_amax(qd, method="max")
    w_amax = qd.weight_quantizer.amax
    assert w_amax.shape == (1, 5, 1, 1)  # one per output channel, on axis 1 of [C_in, C_out, kh, kw]
    assert torch.equal(w_amax, deconv.weight.detach().abs().amax(dim=(0, 2, 3), keepdim=True))
    previous = TensorQuantizer.use_fb_fake_quant
    TensorQuantizer.use_fb_fake_quant = True
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            torch.onnx.export(qd, (x,), buffer, opset_version=17, dynamo=False)
    finally:
        TensorQuantizer.use_fb_fake_quant = previous
    model = onnx.load_from_string(buffer.getvalue())
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant"})
    deconv_node = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    dq = next(n for n in model.graph.node if deconv_node.input[1] in n.output)
    assert dq.op_type == "DequantizeLinear" and {a.name: a.i for a in dq.attribute}["axis"] == 1
    assert values[dq.input[1]].shape == (5,)
