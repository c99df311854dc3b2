"""Learned quantizer ranges for QAT: each amax becomes a trained parameter with an LSQ-style gradient.

Why: with the calibrated amax fixed, fine-tuning cannot move the error that full INT8 costs: the
straight-through estimator passes the rounding unchanged, so the loss never "sees" the rounding noise
of a too-coarse range, and a value past amax only loses its gradient. Learning amax gives the loss a
handle on the step size itself (LSQ, Esser et al. 2020; PACT for the clipping side).
pytorch-quantization's own ``learn_amax`` is not used: it trains a separate ``Clip`` module (PACT: a
gradient only from clipped values, none from the rounding) and quantizes with that clip value, while
``_amax``, what ``ptq.pth`` stores and the exporters read, stays the calibrated one.

How: ``learn_ranges(model, kinds)`` turns the ``_amax`` buffer of every chosen, enabled quantizer into an
``nn.Parameter`` of the same name, shape and value, and gives the quantizer the class
``LearnedRangeQuantizer``. Its forward is pytorch-quantization's fake quant, called with the same
arguments (bit-identical outputs); only its backward differs. With ``q = clamp(round(x * 127 / amax),
lo, 127)`` and ``out = q * amax / 127``:

- input: the library's straight-through gradient (passed where ``|x| <= amax``, zero where clipped);
- amax: ``d out / d amax = (out - x) / amax`` inside the range (rounding passed straight through),
  ``out / amax`` where ``x`` was clipped (+1 above, -128/127 below), summed over the elements that
  share one amax (per tensor, or per channel for weights).

``freeze_ranges(model)`` turns them back into plain buffers holding exactly the trained values, so the
saved ``qat.pth`` has the ``ptq.pth`` layout and the loader and exporters read the trained amax
unchanged. ``LearnedRanges.clamp`` keeps every amax at least ``MIN_RELATIVE_AMAX`` of its starting value
(positive: a zero amax would quantize everything to 0 and is an invalid TensorRT / libspconv scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pytorch_quantization.nn import TensorQuantizer
from pytorch_quantization.tensor_quant import fake_tensor_quant
from torch import nn

from trt_centerpoint._compat.pytorch_quantization import iter_quantizers

# which amax QAT learns: none, activations only, activations + weights, or the activations of the dense 2D part
# only (RPN + head: the sparse backbone keeps its calibrated ranges and needs no backward pass, which is what costs
# memory at nuScenes size)
RANGE_KINDS = ("none", "inputs", "all", "2d-inputs")
SPARSE_PREFIX = "backbone."
MIN_RELATIVE_AMAX = 1e-2


class _LearnedFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, amax, num_bits, unsigned, narrow_range):
        outputs = fake_tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)
        ctx.save_for_backward(inputs, amax, outputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, amax, outputs = ctx.saved_tensors
        inside = inputs.abs() <= amax
        grad_inputs = torch.where(inside, grad_outputs, grad_outputs.new_zeros(()))
        grad_amax = None
        if ctx.needs_input_grad[1]:
            local = torch.where(inside, outputs - inputs, outputs) / amax
            grad_amax = (grad_outputs * local).sum_to_size(amax.shape)
        return grad_inputs, grad_amax, None, None, None


class LearnedRangeQuantizer(TensorQuantizer):
    """A ``TensorQuantizer`` whose ``_amax`` is an ``nn.Parameter`` trained by back-propagation."""

    def _quant_forward(self, inputs):
        if not self._fake_quant or self._learn_amax or self._scale_amax is not None:
            raise RuntimeError("learned ranges need a plain fake-quant TensorQuantizer")
        return _LearnedFakeQuant.apply(inputs, self._amax, self._num_bits, self._unsigned, self._narrow_range)


def _is_weight(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "_weight_quantizer"


@dataclass
class LearnedRanges:
    """The amax parameters QAT trains ({quantizer path: parameter}; tied quantizers share one) and the
    floor each is kept at."""

    params: dict[str, nn.Parameter] = field(default_factory=dict)
    floors: dict[str, torch.Tensor] = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        """Each trained tensor once (tied quantizers share one)."""
        return list({id(p): p for p in self.params.values()}.values())

    @torch.no_grad()
    def clamp(self) -> None:
        """Keep every amax at or above its floor (positive, finite for TensorRT / libspconv); in place."""
        for name, param in self.params.items():
            param.copy_(torch.maximum(param, self.floors[name].to(param.device)))


def learn_ranges(model: nn.Module, kinds: str = "inputs") -> LearnedRanges:
    """Make the amax of every enabled, calibrated quantizer of `kinds` a parameter, in place.

    `kinds`: "inputs" (activation quantizers), "all" (also the per-channel weight quantizers), "2d-inputs" (the
    activation quantizers outside the sparse backbone) or "none".
    Activation quantizers with bit-identical calibrated amax share ONE parameter: calibration gives that
    only to quantizers that saw the same data (the head branches all read the shared conv's output, one
    histogram search serves them all), and one range per tensor keeps it one INT8 tensor in TensorRT
    (each of its readers would otherwise requantize it with its own scale).
    Call it before building the optimizer and before wrapping the model in DistributedDataParallel.
    """
    if kinds not in RANGE_KINDS:
        raise ValueError(f"learned ranges: one of {', '.join(RANGE_KINDS)}, got {kinds!r}")
    learned = LearnedRanges()
    if kinds == "none":
        return learned
    shared: dict[tuple, nn.Parameter] = {}
    for name, quantizer in list(iter_quantizers(model)):
        amax = quantizer._buffers.get("_amax")
        weight = _is_weight(name)
        if quantizer._disabled or amax is None or (kinds in ("inputs", "2d-inputs") and weight):
            continue
        if kinds == "2d-inputs" and name.startswith(SPARSE_PREFIX):
            continue
        if type(quantizer) is not TensorQuantizer:
            raise TypeError(f"learned ranges: {name} is a {type(quantizer).__name__}, not a TensorQuantizer")
        value = amax.detach().clone().float()
        key = (tuple(value.shape), value.cpu().numpy().tobytes())
        param = shared.get(key) if not weight else None
        if param is None:
            param = nn.Parameter(value)
            if not weight:
                shared[key] = param
        del quantizer._buffers["_amax"]
        quantizer.register_parameter("_amax", param)
        quantizer.__class__ = LearnedRangeQuantizer
        learned.params[name] = param
        learned.floors[name] = value * MIN_RELATIVE_AMAX
    return learned


def freeze_ranges(model: nn.Module) -> int:
    """Turn every learned amax back into a buffer with exactly its trained value; returns how many."""
    count = 0
    for _, quantizer in list(iter_quantizers(model)):
        if not isinstance(quantizer, LearnedRangeQuantizer):
            continue
        param = quantizer._parameters.pop("_amax")
        quantizer.register_buffer("_amax", param.detach().clone())
        quantizer.__class__ = TensorQuantizer
        count += 1
    return count
