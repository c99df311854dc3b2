"""TensorRT: availability, engine build through Polygraphy's loaders, engine runners, the layer inspector."""
