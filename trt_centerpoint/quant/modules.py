"""Quantized modules for CenterPoint: spconv convs, the residual add and the RPN concat.

All use pytorch-quantization's ``TensorQuantizer`` (fake quant: scale = 127 / amax, round half to even,
clamp to [-128, 127]). Descriptors (CUDA-CenterPoint's recipe, within TensorRT's explicit-quantization rules):

- activations: 8-bit per tensor, histogram calibrator (amax picked later by mse / percentile / entropy);
- sparse conv weights [out, kz, ky, kx, in]: 8-bit per output channel (axis 0), max calibrator;
- Conv2d / Linear weights: per output channel (axis 0), max;
- ConvTranspose2d weights [C_in, C_out, kh, kw]: per output channel, axis 1 (``CONVTRANSPOSE_WEIGHT_AXIS``).
  Axis 0 is the input-channel axis, the one the deconvolution sums over: its scales cannot be applied after
  an INT8 GEMM. pytorch-quantization 2.1.3 defaults to axis 0 there; NVIDIA's later sources (TensorRT 10.2
  on) and ModelOpt use axis 1, which is what TensorRT 10 / 11 take, so we set the descriptor ourselves.

The sparse quantized convs are spconv's own classes with a different ``forward``: a float conv is turned
into one in place (``quantize_sparse_conv``), so parameter names, ``indice_key`` (rulebook reuse),
``act_type`` and every other attribute stay as they were; only quantizer state (``_amax``) is added.
"""

from __future__ import annotations

import torch
from pytorch_quantization.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear, TensorQuantizer
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from trt_centerpoint._compat.spconv import import_spconv

spconv = import_spconv()

NUM_BITS = 8
# ConvTranspose2d weight [C_in, C_out, kh, kw]: one scale per output channel (axis 1), as TensorRT 10 / 11
# and ModelOpt take it. A ptq.pth calibrated on axis 0 (older versions) is refused: `check_weight_amax`.
CONVTRANSPOSE_WEIGHT_AXIS = 1
ACTIVATION_CALIBRATORS = ("histogram", "max")


def input_descriptor(calib_method: str = "histogram") -> QuantDescriptor:
    """Per-tensor activation descriptor; `calib_method` "histogram" (mse/percentile/entropy) or "max"."""
    if calib_method not in ACTIVATION_CALIBRATORS:
        raise ValueError(f"activation calibrator must be one of {ACTIVATION_CALIBRATORS}, got {calib_method!r}")
    return QuantDescriptor(num_bits=NUM_BITS, calib_method=calib_method)


def weight_descriptor(axis: int | None = 0) -> QuantDescriptor:
    """Weight descriptor: per channel along `axis` (None: per tensor), max calibrator."""
    return QuantDescriptor(num_bits=NUM_BITS, axis=None if axis is None else (axis,), calib_method="max")


def make_quantizer(desc: QuantDescriptor) -> TensorQuantizer:
    quantizer = TensorQuantizer(desc)
    calibrator = getattr(quantizer, "_calibrator", None)
    if hasattr(calibrator, "_torch_hist"):
        calibrator._torch_hist = True  # fast torch.histc histogram (the 2.1.3 default, made explicit)
    return quantizer


# --- sparse convolutions ----------------------------------------------------------------------------


class _QuantSparseConvMixin:
    """Fake-quantize the input features and the weight, then run spconv's own conv on them.

    Mirrors ``spconv.pytorch.SparseConvolution.forward`` (spconv 2.3): the same ``_conv_forward`` call
    with the quantized tensors, so indice keys, rulebook reuse, bias and fused activation behave as in
    the float conv.
    """

    def forward(self, input, add_input=None):
        quant_input = input.replace_feature(self._input_quantizer(input.features))
        quant_weight = self._weight_quantizer(self.weight)
        return self._conv_forward(
            self.training,
            quant_input,
            quant_weight,
            self.bias,
            add_input,
            name=self.name,
            sparse_unique_name=self._sparse_unique_name,
            act_type=self.act_type,
            act_alpha=self.act_alpha,
            act_beta=self.act_beta,
        )

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    @property
    def weight_quantizer(self) -> TensorQuantizer:
        return self._weight_quantizer


class QuantSubMConv3d(_QuantSparseConvMixin, spconv.SubMConv3d):
    """Quantized ``SubMConv3d`` (made from a float one by ``quantize_sparse_conv``)."""


class QuantSparseConv3d(_QuantSparseConvMixin, spconv.SparseConv3d):
    """Quantized ``SparseConv3d``."""


class QuantSparseInverseConv3d(_QuantSparseConvMixin, spconv.SparseInverseConv3d):
    """Quantized ``SparseInverseConv3d``."""


SPARSE_QUANT_CLASSES: dict[type, type] = {
    spconv.SubMConv3d: QuantSubMConv3d,
    spconv.SparseConv3d: QuantSparseConv3d,
    spconv.SparseInverseConv3d: QuantSparseInverseConv3d,
}


def quantize_sparse_conv(module: nn.Module, input_calib: str = "histogram") -> nn.Module:
    """Turn a float spconv conv into its quantized class, in place; returns the same object."""
    cls = SPARSE_QUANT_CLASSES.get(type(module))
    if cls is None:
        raise TypeError(f"no quantized version of {type(module).__name__}")
    module.__class__ = cls
    module.add_module("_input_quantizer", make_quantizer(input_descriptor(input_calib)))
    module.add_module("_weight_quantizer", make_quantizer(weight_descriptor(0)))
    return module


# --- 2D convs and linear: pytorch-quantization's own modules -----------------------------------------


def _take_parameters(quant: nn.Module, float_module: nn.Module) -> nn.Module:
    """Reuse the float module's weight / bias Parameters (same names, same tensors)."""
    quant.weight = float_module.weight
    quant.bias = float_module.bias
    return quant.train(float_module.training)


def quantize_conv2d(module: nn.Conv2d, input_calib: str = "histogram") -> nn.Module:
    quant = QuantConv2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
        module.dilation, module.groups, module.bias is not None, module.padding_mode,
        quant_desc_input=input_descriptor(input_calib), quant_desc_weight=weight_descriptor(0),
    )
    return _take_parameters(quant, module)


def quantize_conv_transpose2d(module: nn.ConvTranspose2d, input_calib: str = "histogram") -> nn.Module:
    quant = QuantConvTranspose2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
        module.output_padding, module.groups, module.bias is not None, module.dilation, module.padding_mode,
        quant_desc_input=input_descriptor(input_calib), quant_desc_weight=weight_descriptor(CONVTRANSPOSE_WEIGHT_AXIS),
    )
    return _take_parameters(quant, module)


def quantize_linear(module: nn.Linear, input_calib: str = "histogram") -> nn.Module:
    quant = QuantLinear(
        module.in_features, module.out_features, module.bias is not None,
        quant_desc_input=input_descriptor(input_calib), quant_desc_weight=weight_descriptor(0),
    )
    return _take_parameters(quant, module)


# --- residual add and concat: one shared input quantizer --------------------------------------------


def quantize_shared(quantizer: TensorQuantizer, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Apply one quantizer to several tensors; in calibration mode it collects them as ONE tensor.

    Collecting them together matters for the histogram calibrator: its bin width is fixed by the first
    tensor it sees, so collecting a small-range input before a large-range one would grow the histogram
    ten-fold or more (and the MSE search is quadratic in the bin count). Same data, one range.
    """
    if not (quantizer._if_calib and not quantizer._disabled):
        return [quantizer(t) for t in tensors]
    quantizer._calibrator.collect(torch.cat([t.detach().reshape(-1) for t in tensors]))
    quantizer._if_calib = False
    try:
        return [quantizer(t) for t in tensors]
    finally:
        quantizer._if_calib = True


class QuantAdd(nn.Module):
    """Residual add whose two inputs share ONE quantizer (one scale), as CUDA-CenterPoint does.

    With one scale the INT8 add needs no rescale of either branch; the exporter writes the same amax as
    libspconv's ``input0_dynamic_range`` and ``input1_dynamic_range``.
    """

    def __init__(self, input_calib: str = "histogram"):
        super().__init__()
        self._input_quantizer = make_quantizer(input_descriptor(input_calib))

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        x, identity = quantize_shared(self._input_quantizer, [x, identity])
        return x + identity


class QuantConcat(nn.Module):
    """Channel concat whose inputs share one quantizer: TensorRT concatenates INT8 tensors only when
    every input has the same scale.

    Its inputs are calibrated as one tensor, i.e. the values of the concat's output: the next conv's
    input quantizer sees the same values and gets the same amax, so its fake quant is then a no-op.
    """

    def __init__(self, input_calib: str = "histogram", dim: int = 1):
        super().__init__()
        self.dim = dim
        self._input_quantizer = make_quantizer(input_descriptor(input_calib))

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(quantize_shared(self._input_quantizer, list(tensors)), dim=self.dim)

