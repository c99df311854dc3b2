"""Quantization of CenterPoint with NVIDIA pytorch-quantization 2.1.3 (SEED.md's recipe, CPU or GPU).

Modules, in the order a PTQ run uses them:

- ``fuse_bn``: fold BatchNorm into the conv before it (sparse, 2D, transposed), before quantizing;
- ``quant_modules`` / ``quantize``: quantized spconv convs, QuantAdd, QuantConcat, pytorch-quantization's
  2D modules, swapped in by walking the model (``quantize_model(model, skip=DEFAULT_SKIP)``);
- ``calibrate`` (+ ``mse``): collect statistics over frames, set and check every amax;
- ``ptq``: the `trt-centerpoint ptq` stage, the saved ``ptq.pth`` and ``load_quantized_model``;
- ``compat``: pytorch-quantization's CPU workarounds (state-dict loading, log noise).

Importing this package imports nothing heavy; the submodules import torch, spconv and the library.
"""
