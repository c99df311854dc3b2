"""Reference executor for a libspconv scn ONNX *file*, on spconv (CPU or CUDA).

Why: TensorRT cannot run the dialect and libspconv needs a GPU, so this is the independent check that the
file (not the PyTorch module) computes the backbone: layers are rebuilt from nodes, attributes and
initializers only, and run in file order.

Semantics:
- SparseConvolution -> spconv conv with the node's geometry; `rulebook` becomes spconv's `indice_key`,
  so convs sharing a rulebook reuse its indice pairs exactly as libspconv reuses the rulebook;
  `activation` "ReLU" is spconv's fused ReLU (`act_type`). Each conv's active output voxels are compared
  with its `output_bound`; an overflow (libspconv would truncate) is recorded and warned about.
- Add: elementwise on two sparse tensors with the same sites; Relu; ScatterDense (format "zyx") ->
  dense [B, C, D, H, W]; Reshape / Transpose on the dense tensor.
- precision "fp32": FP16 weights and FP16-rounded input features (the file's input type) computed in
  FP32, the accuracy reference; "fp16": everything in float16 (works on CPU in spconv 2.3.8, slower).
- INT8 (`precision` "int8" on a node) is not executed yet: a clear UserError.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from trt_centerpoint.errors import UserError
from trt_centerpoint.exporter.fuse_relu import NO_ACT, RELU
from trt_centerpoint.exporter.lint_common import attributes, text
from trt_centerpoint.exporter.lint_scn import DIALECT_OPS
from trt_centerpoint.exporter.onnx_io import load_onnx
from trt_centerpoint.model.spconv_compat import import_spconv

spconv = import_spconv()

_ACTIVATIONS = {"ReLU": RELU, "None": NO_ACT, "": NO_ACT}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

__all__ = ["OutputBoundWarning", "ScnRunner"]


class OutputBoundWarning(UserWarning):
    """A conv produced more active voxels than its output_bound: libspconv would drop the excess."""


@dataclass
class _Conv:
    node: str
    module: torch.nn.Module
    output_bound: int | None


@dataclass
class ScnRunner:
    """`ScnRunner(path_or_model, precision="fp32").run(features, coords) -> BEV [B, C*D, H, W] float32`."""

    source: object
    precision: str = "fp32"
    device: str = "cpu"
    counts: dict[str, int] = field(default_factory=dict, init=False)  # active output voxels per conv, last run
    overflows: dict[str, tuple[int, int]] = field(default_factory=dict, init=False)  # node -> (count, bound)

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise UserError(f"scn runner: precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}")
        self.model, self.name = load_onnx(self.source)
        self.dtype = _DTYPES[self.precision]
        self._check_dialect()
        self.initializers = {t.name: t for t in self.model.graph.initializer}
        self.convs = {n.name: self._build_conv(n) for n in self.model.graph.node if n.op_type == "SparseConvolution"}
        first = next(n for n in self.model.graph.node if n.op_type == "SparseConvolution")
        self.input_spatial_shape = [int(v) for v in attributes(first).get("input_spatial_shape", [])]

    # --- loading -----------------------------------------------------------------------------------

    def _fail(self, message: str) -> UserError:
        return UserError(f"{self.name}: {message}")

    def _check_dialect(self) -> None:
        ops = [n.op_type for n in self.model.graph.node]
        foreign = sorted(set(ops) - set(DIALECT_OPS))
        if foreign or "SparseConvolution" not in ops or "ScatterDense" not in ops:
            found = ", ".join(sorted(set(ops))[:6]) or "no nodes"
            raise self._fail(f"not a libspconv scn ONNX (needs SparseConvolution ... ScatterDense; found {found})")
        for node in self.model.graph.node:
            if text(attributes(node).get("precision", "fp16")) == "int8":
                raise self._fail(f"node {node.name} is int8: the reference runner executes FP32 / FP16 files only so far")

    def _weight(self, node: onnx.NodeProto, index: int) -> torch.Tensor:
        if len(node.input) <= index or node.input[index] not in self.initializers:
            raise self._fail(f"node {node.name}: input {index} is not an initializer")
        array = numpy_helper.to_array(self.initializers[node.input[index]])
        return torch.from_numpy(np.array(array, copy=True)).to(self.dtype)

    def _build_conv(self, node: onnx.NodeProto) -> _Conv:
        a = attributes(node)
        try:
            ndim, cin, cout = int(a["ndim"]), int(a["in_channels"]), int(a["out_channels"])
            kernel, stride = list(a["kernel_size"]), list(a["stride"])
            padding, dilation = list(a["padding"]), list(a["dilation"])
            subm, act = bool(a["subm"]), _ACTIVATIONS[text(a["activation"])]
        except KeyError as exc:
            raise self._fail(f"node {node.name}: missing or unsupported attribute {exc}") from None
        if a.get("transposed", 0) or a.get("inverse", 0) or ndim != 3:
            raise self._fail(f"node {node.name}: only 3-D, non-transposed, non-inverse convs are supported")
        rulebook = text(a.get("rulebook", "")) or None
        module = spconv.conv.SparseConvolution(
            ndim, cin, cout, kernel, stride, padding, dilation, bias=True, subm=subm,
            indice_key=rulebook, act_type=act, dtype=self.dtype)
        weight, bias = self._weight(node, 1), self._weight(node, 2)
        if tuple(weight.shape) != tuple(module.weight.shape) or tuple(bias.shape) != (cout,):
            raise self._fail(f"node {node.name}: weight {list(weight.shape)} / bias {list(bias.shape)} do not fit "
                             f"[{cout}, *{kernel}, {cin}] / [{cout}]")
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
        bound = a.get("output_bound")
        return _Conv(node.name, module.eval().to(self.device), None if bound is None else int(bound))

    # --- running -----------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int = 1,
            keep: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Execute the graph on one batch of voxels: features [N, C] (any float), coords [N, 4] int32
        (batch, z, y, x). Returns the graph output as float32; with keep=True also every tensor by name."""
        graph = self.model.graph
        x = features.to(self.device).to(torch.float16).to(self.dtype)  # the file's input is FLOAT16
        tensors: dict[str, object] = {
            graph.input[0].name: spconv.SparseConvTensor(x, coords.to(self.device).int(), self.input_spatial_shape,
                                                         batch_size)
        }
        self.counts, self.overflows = {}, {}
        for node in graph.node:
            names = node.input[:1] if node.op_type == "SparseConvolution" else node.input
            undefined = [name for name in names if name not in tensors]
            if undefined:
                raise self._fail(f"node {node.name}: input {undefined[0]!r} is not produced before it")
            tensors[node.output[0]] = self._step(node, [tensors[name] for name in names])
        out = tensors[graph.output[0].name]
        out = out.float() if isinstance(out, torch.Tensor) else out.features.float()
        if keep:
            return out, tensors
        return out

    def _step(self, node: onnx.NodeProto, args: list):
        op = node.op_type
        if op == "SparseConvolution":
            conv = self.convs[node.name]
            y = conv.module(args[0])
            count = int(y.features.shape[0])
            self.counts[node.name] = count
            if conv.output_bound is not None and count > conv.output_bound:
                self.overflows[node.name] = (count, conv.output_bound)
                warnings.warn(f"{self.name}: {node.name} has {count} active voxels, over its output_bound "
                              f"{conv.output_bound}", OutputBoundWarning, stacklevel=3)
            return y
        if op in ("Add", "QuantAdd"):
            a, b = args
            if a.features.shape != b.features.shape:
                raise self._fail(f"node {node.name}: adds {list(a.features.shape)} and {list(b.features.shape)}")
            return a.replace_feature(a.features + b.features)
        if op == "Relu":
            x = args[0]
            return x.replace_feature(torch.relu(x.features)) if isinstance(x, spconv.SparseConvTensor) else torch.relu(x)
        a = attributes(node)
        if op == "ScatterDense":
            x = args[0]
            if text(a.get("format", "zyx")) != "zyx":
                raise self._fail(f"node {node.name}: only format 'zyx' is supported")
            if [int(v) for v in a.get("input_spatial_shape", x.spatial_shape)] != list(x.spatial_shape):
                raise self._fail(f"node {node.name}: input_spatial_shape {list(a['input_spatial_shape'])} "
                                 f"!= tensor spatial shape {list(x.spatial_shape)}")
            dense = x.dense()
            if "output_shape" in a and list(dense.shape) != [int(v) for v in a["output_shape"]]:
                raise self._fail(f"node {node.name}: dense shape {list(dense.shape)} != output_shape "
                                 f"{list(a['output_shape'])}")
            return dense
        if op == "Reshape":
            return args[0].reshape([int(v) for v in a["dims"]])
        return args[0].permute(*[int(v) for v in a["dims"]]).contiguous()  # Transpose
