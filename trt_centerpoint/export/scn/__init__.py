"""Sparse backbone -> the libspconv ONNX dialect: walk, fuse ReLU, output bounds, INT8 spec, writer, lint."""
