"""Export a CenterPoint model to the files a deployment uses, and prove each file computes the model.

Modules (one job each; nothing here is imported eagerly, spconv loads only when a module needs it):

- `fuse_relu`: BN folding (calib.fuse_bn) + ReLU fusion into sparse conv activations (libspconv's form);
- `walk`: the fused backbone as a flat op list (the hand trace); `output_bound`: per-layer voxel bounds;
- `scn`: the libspconv dialect writer (`scn.fp16.onnx`), `int8_spec`: its optional INT8 attributes;
- `scn_runner`: reference executor of a scn ONNX file on spconv;
- `lint`, `lint_scn`, `lint_common`: `trt-centerpoint check`;
- `rpn_head`: RPN + head to standard ONNX; `passes`: onnx-graphsurgeon passes;
- `validate`: figures and thresholds; `stage`: the `export` command (files + manifest record).
"""
