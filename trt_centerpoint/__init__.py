"""trt-centerpoint: CenterPoint LiDAR detection from PyTorch to INT8 TensorRT, with numbers."""

__version__ = "0.1.0"
