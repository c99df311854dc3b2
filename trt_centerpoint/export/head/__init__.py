"""RPN + CenterHead -> standard ONNX (FP32, INT8 with explicit Q/DQ, INT8 with FP16 float parts) + lint."""
