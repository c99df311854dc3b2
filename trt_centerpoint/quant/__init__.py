"""Quantization with NVIDIA pytorch-quantization 2.1.3, on CPU or GPU.

In the order a PTQ run uses them: `fuse_bn` (fold BatchNorm), `modules` / `quantize` (quantized sparse and 2D
convs, QuantAdd, QuantConcat, swapped in by walking the model), `calibrate` + `mse` (statistics over frames,
every amax set and checked), `ptq` (the saved `ptq.pth`), then `qat` + `distill` (fine-tuning) and
`sensitivity` (per-layer ranking, a skip list for an accuracy budget).
"""
