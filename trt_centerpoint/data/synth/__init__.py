"""The synthetic LiDAR generator: scenes of boxes and cylinders, ray-cast by a spinning sensor model."""
