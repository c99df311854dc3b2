"""Workarounds for the libraries this project drives, each version-guarded, documented and tested.

One module per library (spconv, pytorch-quantization, Polygraphy, torch.distributed), plus `optional`: the
only place the optional GPU libraries (tensorrt, tensorrt_rtx, pycuda) are imported.
"""
