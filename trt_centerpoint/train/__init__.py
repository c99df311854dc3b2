"""Training the float model on labeled frames (`trt-centerpoint train`); QAT reuses its loop pieces."""
