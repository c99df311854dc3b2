"""Runners behind one interface (torch, the scn reference runner, ONNX Runtime, TensorRT), composed into
`points -> detections` by `pipeline.Pipeline`."""
