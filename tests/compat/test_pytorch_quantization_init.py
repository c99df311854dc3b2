"""pytorch-quantization 2.1.3's init_quantizer calls inspect.stack() per quantized module: `fast_module_init`
replaces only that lookup (function names, nothing read from disk) and keeps the library's check."""

import inspect

import pytest
import torch
from pytorch_quantization.nn import QuantConv2d
from pytorch_quantization.nn.modules import _utils

from trt_centerpoint._compat import pytorch_quantization as compat
from trt_centerpoint.config import load_config
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.quant.modules import input_descriptor, weight_descriptor
from trt_centerpoint.quant.quantize import quantize_model


def _conv() -> QuantConv2d:
    return QuantConv2d(3, 4, 3, quant_desc_input=input_descriptor(), quant_desc_weight=weight_descriptor(0))


def test_version_guard():
    assert compat.needs_fast_module_init()  # the pinned 2.1.3
    assert compat.needs_fast_module_init("2.1.2")
    assert not compat.needs_fast_module_init("2.2.0")
    assert not compat.needs_fast_module_init("unknown")


def test_the_library_module_gets_inspect_back_and_nesting_is_harmless():
    with compat.fast_module_init():
        assert _utils.inspect is not inspect
        with compat.fast_module_init():
            assert _utils.inspect is not inspect
        assert _utils.inspect is not inspect  # the inner one did not restore early
    assert _utils.inspect is inspect
    with pytest.raises(ValueError), compat.fast_module_init():
        raise ValueError("restored on errors too")
    assert _utils.inspect is inspect


def test_stack_names_the_same_frames_as_inspect():
    def probe():
        return [f.function for f in inspect.stack(0)[:3]], [f.function for f in compat._FunctionNamesOnly.stack()[:3]]

    real, fast = probe()
    assert real == fast == ["probe", "test_stack_names_the_same_frames_as_inspect", real[2]]


def test_the_library_check_still_refuses_a_caller_that_is_not_init():
    conv = _conv()

    def not_an_init():
        conv.init_quantizer(input_descriptor(), weight_descriptor(0))

    for context in (compat.fast_module_init, _NoPatch):
        with context(), pytest.raises(TypeError, match="should be only called by __init__"):
            not_an_init()


class _NoPatch:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_modules_made_under_it_equal_the_library_s_own():
    torch.manual_seed(0)
    plain = _conv()
    torch.manual_seed(0)
    with compat.fast_module_init():
        fast = _conv()
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], fast.state_dict()[k]) for k in plain.state_dict())
    for attr in ("_input_quantizer", "_weight_quantizer"):
        a, b = getattr(plain, attr), getattr(fast, attr)
        assert (a._num_bits, a._axis, a._unsigned, type(a._calibrator)) == (b._num_bits, b._axis, b._unsigned,
                                                                                type(b._calibrator))
    assert _utils.inspect is inspect
    swapped = quantize_model(CenterPoint(load_config("tiny")))  # runs under fast_module_init
    assert "neck.blocks.0.1" in swapped and _utils.inspect is inspect
