"""Reference executor for a libspconv scn ONNX *file*, on spconv (CPU or CUDA); the `BackboneRunner` of the
onnx and trt pipelines (`run(features, coords) -> BEV`).

Why: TensorRT cannot run the dialect and libspconv needs a GPU, so this is the independent check that the
file (not the PyTorch module) computes the backbone: layers are rebuilt from nodes, attributes and
initializers only, and run in file order.

Semantics:
- SparseConvolution -> spconv conv with the node's geometry; `rulebook` becomes spconv's `indice_key`,
  so convs sharing a rulebook reuse its indice pairs exactly as libspconv reuses the rulebook;
  `activation` "ReLU" is spconv's fused ReLU (`act_type`). Each conv's active output voxels are compared
  with its `output_bound`: an overflow (libspconv would drop the excess voxels, silently) is an error naming the
  layer, its bound and the count; with `allow_overflow` it is recorded and warned about instead.
- Add: elementwise on two sparse tensors with the same sites; Relu; ScatterDense (format "zyx") ->
  dense [B, C, D, H, W]; Reshape / Transpose on the dense tensor.
- precision "fp32": FP16 weights and FP16-rounded input features (the file's input type) computed in
  FP32, the accuracy reference; "fp16": everything in float16 (works on CPU in spconv 2.3.8, slower).
- INT8, `scn.int8.onnx`: a node with `precision` "int8" fake-quantizes its inputs with its dynamic
  ranges (a conv: input features per tensor, weights per output channel; an add: each input with its
  range) as `export.scn.fake_quant` defines it (scale = amax / 127, ONNX Q/DQ arithmetic), then computes in
  float. `output_precision` changes nothing here: the exporter sets it to int8 only where every consumer
  quantizes the output with one range anyway (`export.scn.quant`).
- INT8, `scn.int8.qdq.onnx`: QuantizeLinear / DequantizeLinear nodes run on the sparse features with
  ONNX semantics; Q/DQ chains over initializers (INT8 weights + DequantizeLinear) are evaluated once at
  load. Both INT8 forms therefore execute bit-identically.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from trt_centerpoint._compat.spconv import import_spconv
from trt_centerpoint.errors import UserError
from trt_centerpoint.export.lint_common import QDQ_OPS, attributes, text
from trt_centerpoint.export.onnx_io import load_onnx
from trt_centerpoint.export.scn.fake_quant import dequantize_linear, fake_quant, quantize_linear
from trt_centerpoint.export.scn.fuse import NO_ACT, RELU
from trt_centerpoint.export.scn.lint import DIALECT_OPS

spconv = import_spconv()

_ACTIVATIONS = {"ReLU": RELU, "None": NO_ACT, "": NO_ACT}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

__all__ = ["OutputBoundOverflow", "OutputBoundWarning", "ScnRunner"]


class OutputBoundWarning(UserWarning):
    """A conv produced more active voxels than its output_bound: libspconv would drop the excess."""


class OutputBoundOverflow(UserError):
    """The same, as an error: the default, because libspconv's truncation changes results without a word."""


@dataclass
class _Conv:
    node: str
    module: torch.nn.Module
    output_bound: int | None
    input_amax: float | None = None  # int8 layer: fake-quantize the input features with this range


@dataclass
class ScnRunner:
    """`ScnRunner(path_or_model, precision="fp32").run(features, coords) -> BEV [B, C*D, H, W] float32`, on
    `device` (a `runtime.base.BackboneRunner`)."""

    source: object
    precision: str = "fp32"
    device: str = "cpu"
    allow_overflow: bool = False  # an output_bound overflow warns instead of raising OutputBoundOverflow
    counts: dict[str, int] = field(default_factory=dict, init=False)  # active output voxels per conv, last run
    overflows: dict[str, tuple[int, int]] = field(default_factory=dict, init=False)  # node -> (count, bound)

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise UserError(f"scn runner: precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}")
        self.model, self.name = load_onnx(self.source)
        self.dtype = _DTYPES[self.precision]
        self._check_dialect()
        self.initializers = {t.name: t for t in self.model.graph.initializer}
        self.producers = {o: n for n in self.model.graph.node for o in n.output}
        self.constants: dict[str, torch.Tensor] = {}
        self.convs = {n.name: self._build_conv(n) for n in self.model.graph.node if n.op_type == "SparseConvolution"}
        first = next(n for n in self.model.graph.node if n.op_type == "SparseConvolution")
        self.input_spatial_shape = [int(v) for v in attributes(first).get("input_spatial_shape", [])]

    # --- loading -----------------------------------------------------------------------------------

    def _fail(self, message: str) -> UserError:
        return UserError(f"{self.name}: {message}")

    def _check_dialect(self) -> None:
        ops = [n.op_type for n in self.model.graph.node]
        foreign = sorted(set(ops) - set(DIALECT_OPS) - set(QDQ_OPS))
        if foreign or "SparseConvolution" not in ops or "ScatterDense" not in ops:
            found = ", ".join(sorted(set(ops))[:6]) or "no nodes"
            raise self._fail(f"not a libspconv scn ONNX (needs SparseConvolution ... ScatterDense; found {found})")

    def _constant(self, name: str) -> torch.Tensor | None:
        """An initializer, or a Q/DQ chain over initializers evaluated once (float32); None if neither."""
        if name in self.constants:
            return self.constants[name]
        if name in self.initializers:
            array = numpy_helper.to_array(self.initializers[name])
            value = torch.from_numpy(np.array(array, copy=True))
        elif name in self.producers and self.producers[name].op_type in QDQ_OPS:
            node = self.producers[name]
            args = [self._constant(i) for i in node.input]
            if any(a is None for a in args):
                return None
            value = self._qdq(node, args[0], args[1:])
        else:
            return None
        self.constants[name] = value
        return value

    def _qdq(self, node: onnx.NodeProto, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """QuantizeLinear / DequantizeLinear (int8, zero point 0) on a dense tensor."""
        scale = params[0].float().numpy()
        if len(params) > 1 and bool(params[1].ne(0).any()):
            raise self._fail(f"node {node.name}: non-zero zero point (symmetric int8 only)")
        axis = int(attributes(node).get("axis", 1)) if scale.ndim else None
        if node.op_type == "QuantizeLinear":
            return quantize_linear(x.float(), scale, axis)
        if x.dtype != torch.int8:
            raise self._fail(f"node {node.name}: DequantizeLinear of a {x.dtype} tensor (int8 expected)")
        return dequantize_linear(x, scale, axis)

    def _weight(self, node: onnx.NodeProto, index: int) -> torch.Tensor:
        value = self._constant(node.input[index]) if len(node.input) > index else None
        if value is None:
            raise self._fail(f"node {node.name}: input {index} is not an initializer (or a Q/DQ of one)")
        return value.float()

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
        input_amax = None
        if text(a.get("precision", "fp16")) == "int8" and "input_dynamic_range" in a:
            ranges = a.get("weight_dynamic_ranges")
            if ranges is None or len(ranges) != cout:
                raise self._fail(f"node {node.name}: int8 needs {cout} weight_dynamic_ranges, got "
                                 f"{0 if ranges is None else len(ranges)}")
            weight = fake_quant(weight, list(ranges), axis=0)
            input_amax = float(a["input_dynamic_range"])
        with torch.no_grad():
            module.weight.copy_(weight.to(self.dtype))
            module.bias.copy_(bias.to(self.dtype))
        bound = a.get("output_bound")
        return _Conv(node.name, module.eval().to(self.device), None if bound is None else int(bound), input_amax)

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
            if node.output[0] in self.constants:  # a Q/DQ chain over initializers, evaluated at load
                continue
            names = node.input[:1] if node.op_type == "SparseConvolution" else node.input
            if node.op_type in QDQ_OPS:
                names = node.input[:1]
            undefined = [name for name in names if name not in tensors]
            if undefined:
                raise self._fail(f"node {node.name}: input {undefined[0]!r} is not produced before it")
            tensors[node.output[0]] = self._step(node, [tensors[name] for name in names])
        out = tensors[graph.output[0].name]
        out = out.float() if isinstance(out, torch.Tensor) else out.features.float()
        if keep:
            return out, tensors
        return out

    @torch.no_grad()
    def run_node(self, name: str, args: list):
        """One node of the file on given inputs (sparse tensors for convs and adds), as `run` executes it: a
        layer-by-layer check feeds each node the reference's own input (`export.scn.layers`)."""
        if not hasattr(self, "_nodes"):
            self._nodes = {n.name: n for n in self.model.graph.node}
        return self._step(self._nodes[name], args)

    def _step(self, node: onnx.NodeProto, args: list):
        op = node.op_type
        if op in QDQ_OPS:
            x = args[0]
            params = [self._constant(name) for name in node.input[1:]]
            if any(p is None for p in params):
                raise self._fail(f"node {node.name}: scale / zero point must be initializers")
            if isinstance(x, spconv.SparseConvTensor):
                return x.replace_feature(self._qdq(node, x.features, params))
            return self._qdq(node, x, params)
        if op == "SparseConvolution":
            conv = self.convs[node.name]
            x = args[0]
            if conv.input_amax is not None:
                x = x.replace_feature(fake_quant(x.features.float(), conv.input_amax).to(self.dtype))
            elif x.features.dtype != self.dtype:  # the output of a DequantizeLinear (float32)
                x = x.replace_feature(x.features.to(self.dtype))
            y = conv.module(x)
            count = int(y.features.shape[0])
            self.counts[node.name] = count
            if conv.output_bound is not None and count > conv.output_bound:
                self.overflows[node.name] = (count, conv.output_bound)
                if not self.allow_overflow:
                    raise OutputBoundOverflow(
                        f"{self.name}: sparse conv {node.name} needs {count} output voxels on this frame, over its "
                        f"output_bound {conv.output_bound}: libspconv would drop {count - conv.output_bound} of them; "
                        "re-export with --calib-data frames like these or --output-bound, or pass --allow-overflow")
                warnings.warn(f"{self.name}: {node.name} has {count} active voxels, over its output_bound "
                              f"{conv.output_bound}", OutputBoundWarning, stacklevel=3)
            return y
        if op in ("Add", "QuantAdd"):
            a, b = args
            if a.features.shape != b.features.shape:
                raise self._fail(f"node {node.name}: adds {list(a.features.shape)} and {list(b.features.shape)}")
            fa, fb = a.features, b.features
            attrs = attributes(node)
            if text(attrs.get("precision", "fp16")) == "int8" and "input0_dynamic_range" in attrs:
                fa = fake_quant(fa.float(), float(attrs["input0_dynamic_range"]))
                fb = fake_quant(fb.float(), float(attrs["input1_dynamic_range"]))
            return a.replace_feature((fa.float() + fb.float()).to(self.dtype))
        if op == "Relu":
            x = args[0]
            if isinstance(x, spconv.SparseConvTensor):
                return x.replace_feature(torch.relu(x.features))
            return torch.relu(x)
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
