"""The deployment files, each proven to compute the model before it is written.

`scn/`: the sparse backbone in the dialect NVIDIA libspconv reads (walk the fused backbone, write the graph
by hand, INT8 ranges as attributes, a Q/DQ form). `head/`: RPN + CenterHead to standard ONNX with explicit
Q/DQ, patched with onnx-graphsurgeon. `lint.py` dispatches both files' rules (`trt-centerpoint check`).
"""
