"""An scn file against the PyTorch backbone layer by layer, each file layer fed PyTorch's own input ("forced").

Why: a free-running comparison of an INT8 network cannot tell a wrong file from rounding noise. Two
executors that agree to the last float bit almost everywhere still put a rare value on the other side of
an INT8 rounding boundary (the file quantizes with x / scale, pytorch-quantization with x * (127 / amax));
that element moves by a whole step, the next conv spreads it over its neighbours, and later layers flip
more values: the free-running cosine drops by an amount that depends on the weights and the frame, not on
the file. Forced, every layer of the file runs on exactly the tensor PyTorch gave the same layer, so its
error is its own arithmetic and nothing inherited: float32 noise plus the rare one-step flips of its own
quantizers. A wrong scale, weight or attribute in one layer moves that layer's output everywhere.

The file's layers are found through the node's `doc_string` (the module path `export_scn` writes there);
the PyTorch layers through forward hooks on the same module paths, so the reference runs once and its
output is the free-running reference as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerDiff", "forced_layer_diffs"]


@dataclass
class LayerDiff:
    """One file layer run on PyTorch's input, against PyTorch's output of that layer (float64 arithmetic)."""

    node: str
    path: str
    elements: int
    cosine: float
    max_abs_error: float
    ref_max_abs: float
    relative_error: float  # |file - PyTorch| / |PyTorch| (L2 norms over the layer's output)
    differing: int  # elements with |file - PyTorch| > 1e-3 of the layer's largest |output|

    @property
    def differing_fraction(self) -> float:
        return self.differing / self.elements if self.elements else 0.0

    def as_dict(self) -> dict:
        return {"node": self.node, "path": self.path, "elements": self.elements, "cosine": self.cosine,
                "max_abs_error": self.max_abs_error, "ref_max_abs": self.ref_max_abs,
                "relative_error": self.relative_error,                "differing_fraction": self.differing_fraction}


def _diff(node: str, path: str, got: torch.Tensor, ref: torch.Tensor) -> LayerDiff:
    a, b = got.detach().double().flatten(), ref.detach().double().flatten()
    norm = float(a.norm() * b.norm())
    cosine = float(a @ b) / norm if norm > 0 else float(torch.equal(a, b))
    d = (a - b).abs()
    ref_max = float(b.abs().max()) if b.numel() else 0.0
    ref_norm = float(b.norm())
    relative = float(d.norm()) / ref_norm if ref_norm > 0 else float(d.norm() > 0)
    return LayerDiff(node, path, int(b.numel()), cosine, float(d.max()) if d.numel() else 0.0, ref_max, relative,
                     int((d > 1e-3 * ref_max).sum()) if d.numel() else 0)


def _detached_input(x, subm: bool, key: str | None):
    """A shallow copy of a sparse tensor for a second conv: a non-subm conv may not find its own rulebook key
    (PyTorch's conv just stored it; spconv asserts a fresh key), a subm conv reuses it as libspconv does."""
    copy = x.shadow_copy()
    copy.indice_dict = {k: v for k, v in x.indice_dict.items() if subm or k != key}
    return copy


def _quantizer(module: nn.Module):
    quantizer = getattr(module, "_input_quantizer", None)
    return quantizer if quantizer is not None and not quantizer._disabled else None


@torch.no_grad()
def forced_layer_diffs(runner, reference: nn.Module, features: torch.Tensor, coords: torch.Tensor,
                       free: dict | None = None) -> tuple[torch.Tensor, list[LayerDiff], dict[str, float]]:
    """(PyTorch's output, one LayerDiff per file conv / add in file order, {path: free-running cosine}).

    `runner`: a ScnRunner of the file; `reference`: the PyTorch backbone as `reference(features, coords, 1)`,
    whose modules (or those of its `.backbone`) carry the file's module paths. An INT8 layer of the file is fed
    the values PyTorch's input quantizer produced (already on PyTorch's grid: the file's own quantization of
    them is exact when its range is PyTorch's), so no rounding boundary is in play and a correct layer agrees
    to float32 noise. `free`: the file's tensors of a free run on the same frame (`ScnRunner.run(keep=True)`);
    each layer's free-running cosine against PyTorch is then measured too.
    """
    modules = dict(getattr(reference, "backbone", reference).named_modules())
    nodes = [n for n in runner.model.graph.node if n.op_type in ("SparseConvolution", "Add") and n.doc_string]
    diffs: dict[str, LayerDiff] = {}
    free_cosines: dict[str, float] = {}
    quantized: dict[str, list[torch.Tensor]] = {}
    handles, last_sparse = [], {}

    def record_free(path, output):
        if free is not None and path in free:
            ref = output.features if hasattr(output, "features") else output
            got = free[path].features if hasattr(free[path], "features") else free[path]
            if got.shape == ref.shape:
                free_cosines[path] = _diff("", path, got, ref).cosine

    def quantizer_hook(path):
        def hook(_module, _args, output):
            quantized.setdefault(path, []).append(output)
        return hook

    def conv_hook(node, module):
        def hook(_module, args, output):
            x = args[0]
            if quantized.get(node.doc_string):
                x = x.replace_feature(quantized.pop(node.doc_string)[0])
            got = runner.run_node(node.name, [_detached_input(x, bool(module.subm), module.indice_key)])
            diffs[node.name] = _diff(node.name, node.doc_string, got.features, output.features)
            record_free(node.doc_string, output)
            last_sparse["tensor"] = output
        return hook

    def add_hook(node):
        def hook(_module, args, output):
            inputs = quantized.pop(node.doc_string, None) or list(args)
            carrier = last_sparse["tensor"]  # the block's conv2 output: the sites both added tensors live on
            got = runner.run_node(node.name, [carrier.replace_feature(inputs[0]), carrier.replace_feature(inputs[1])])
            diffs[node.name] = _diff(node.name, node.doc_string, got.features, output)
            record_free(node.doc_string, output)
        return hook

    try:
        for node in nodes:
            module = modules.get(node.doc_string)
            if module is None:
                continue
            quantizer = _quantizer(module)
            if quantizer is not None:
                handles.append(quantizer.register_forward_hook(quantizer_hook(node.doc_string)))
            hook = conv_hook(node, module) if node.op_type == "SparseConvolution" else add_hook(node)
            handles.append(module.register_forward_hook(hook))
        output = reference(features, coords, 1)
    finally:
        for handle in handles:
            handle.remove()
    return output, [diffs[n.name] for n in nodes if n.name in diffs], free_cosines
