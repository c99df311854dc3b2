"""Per-layer precision of a built engine, from the engine inspector's JSON (pure functions, no TensorRT).

``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` of an engine built with
``ProfilingVerbosity.DETAILED`` gives ``{"Layers": [{...}, ...], ...}``. Each layer lists its ``Inputs`` and
``Outputs``; the tensor's type is in

* ``"Format/Datatype"`` on TensorRT 10.x, a phrase such as ``"Channel major FP16 format where channel % 8 == 0"``
  or ``"Thirty-two wide channel vectorized row major Int8 format"``;
* ``"Datatype"`` (with a separate ``"Format"``) on TensorRT 11.x, e.g. ``"Int8"``, ``"Half"``, ``"Float"``
  (``"DataType"`` is read too).

Both are read. A layer's precision is the lowest floating / quantized type among its input activations
(INT8 < FP8 < FP16 = BF16 < FP32; integer shape tensors do not count), or among its outputs when it has no
such input: an INT8 convolution that writes FP32 counts as INT8, the reformat that quantizes an FP32 tensor
counts as FP32. Without DETAILED verbosity the layers are bare names and every precision is ``UNKNOWN``.

The engine's I/O list is ``"Bindings"`` on TensorRT 10.x (names, or entries with a ``"Name"``) and
``"I/O Tensors"`` on TensorRT 11.x (entries with ``"Name"``, ``"IOMode"``, ``"Datatype"``); both are read into
``io``.

Where no engine can be inspected (a TensorRT-RTX engine deserializes only on an RTX GPU),
``summarize_network`` reads the parsed network instead: the precision of each convolution / matrix multiply
from its data input, counted INT8 when a DequantizeLinear feeds it (TensorRT fuses the Q/DQ pair into it).
That is the network before fusion and kernel choice, and says so (``"source": "network"``).
"""

from __future__ import annotations

import json
import re
from collections import Counter

# token in the inspector's text -> precision name; first recognised token wins
_TOKENS = {
    "int8": "INT8", "uint8": "UINT8", "int4": "INT4", "int32": "INT32", "int64": "INT64", "bool": "BOOL",
    "fp8": "FP8", "e4m3": "FP8", "fp4": "FP4",
    "fp16": "FP16", "half": "FP16",
    "bf16": "BF16", "bfloat16": "BF16",
    "fp32": "FP32", "float": "FP32", "float32": "FP32",
}
# activation precisions, lowest first; the others (INT32 shape tensors, BOOL) never decide a layer's precision
_RANK = {"INT4": 0, "FP4": 0, "INT8": 1, "UINT8": 1, "FP8": 1, "FP16": 2, "BF16": 2, "FP32": 3}
MAIN_PRECISIONS = ("INT8", "FP16", "FP32")


def tensor_dtype(tensor) -> str:
    """The precision of one inspector tensor entry (dict), or 'UNKNOWN'."""
    if not isinstance(tensor, dict):
        return "UNKNOWN"
    for key in ("DataType", "Datatype", "Format/Datatype", "Format"):
        text = tensor.get(key)
        if isinstance(text, str):
            for token in re.findall(r"[a-z0-9]+", text.lower()):
                if token in _TOKENS:
                    return _TOKENS[token]
    return "UNKNOWN"


def layer_precision(input_dtypes: list[str], output_dtypes: list[str]) -> str:
    for dtypes in (input_dtypes, output_dtypes):
        ranked = [d for d in dtypes if d in _RANK]
        if ranked:
            return min(ranked, key=_RANK.__getitem__)
    return "UNKNOWN"


def _layers(info) -> list:
    if isinstance(info, (str, bytes)):
        info = json.loads(info)
    if isinstance(info, dict):
        layers = info.get("Layers", [])
    elif isinstance(info, list):
        layers = info
    else:
        raise ValueError(f"engine information is neither JSON text, a dict nor a list: {type(info).__name__}")
    out = []
    for layer in layers:
        if isinstance(layer, str):  # LAYER_NAMES_ONLY verbosity: a bare name, or JSON text of one layer
            try:
                layer = json.loads(layer)
            except ValueError:
                layer = {"Name": layer}
        out.append(layer if isinstance(layer, dict) else {"Name": str(layer)})
    return out


def _is_reformat(layer: dict) -> bool:
    kind = str(layer.get("LayerType", ""))
    return kind.lower() == "reformat" or str(layer.get("Name", "")).startswith("Reformatting CopyNode")


def _io_tensors(info) -> list[dict]:
    """The inspector's I/O list, "I/O Tensors" (11.x) or "Bindings" (10.x), as [{"name", "mode", "dtype"}]."""
    if isinstance(info, (str, bytes)):
        info = json.loads(info)
    if not isinstance(info, dict):
        return []
    entries = info.get("I/O Tensors", info.get("Bindings")) or []
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            mode = str(entry.get("IOMode", entry.get("Mode", ""))).lower()
            out.append({"name": str(entry.get("Name", "")), "mode": mode if mode in ("input", "output") else "",
                        "dtype": tensor_dtype(entry)})
        else:
            out.append({"name": str(entry), "mode": "", "dtype": "UNKNOWN"})
    return out


def _ordered_counts(precisions) -> dict:
    counts = Counter(precisions)
    ordered = {p: counts.pop(p, 0) for p in MAIN_PRECISIONS}
    ordered.update(sorted(counts.items()))
    return ordered


def summarize_layers(info) -> dict:
    """Per-layer precision summary of inspector JSON (text or parsed).

    Returns ``{"num_layers", "counts": {"INT8": n, "FP16": n, "FP32": n, ...}, "reformat_layers",
    "detailed", "layers": [{"name", "type", "precision", "inputs", "outputs", "tactic"}]}``; ``counts``
    always has the three main keys.
    """
    rows = []
    for layer in _layers(info):
        inputs = [tensor_dtype(t) for t in layer.get("Inputs", []) or []]
        outputs = [tensor_dtype(t) for t in layer.get("Outputs", []) or []]
        rows.append({
            "name": str(layer.get("Name", "")),
            "type": str(layer.get("LayerType", layer.get("ParameterType", ""))),
            "precision": layer_precision(inputs, outputs),
            "inputs": inputs,
            "outputs": outputs,
            "tactic": layer.get("TacticName", layer.get("Tactic")),
            "reformat": _is_reformat(layer),
        })
    return {
        "source": "engine inspector",
        "num_layers": len(rows),
        "counts": _ordered_counts(r["precision"] for r in rows),
        "reformat_layers": sum(r["reformat"] for r in rows),
        "detailed": any(r["inputs"] or r["outputs"] for r in rows),
        "io": _io_tensors(info),
        "layers": rows,
    }


_WEIGHTED = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "FULLY_CONNECTED")  # where Q/DQ decides INT8


def _enum_name(value) -> str:
    """'LayerType.CONVOLUTION' / 'DataType.HALF' -> 'CONVOLUTION' / 'HALF'."""
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1].upper()


def summarize_network(network, note: str = "") -> dict:
    """Per-layer input precision of a parsed TensorRT network (``INetworkDefinition``), before fusion.

    Counted: the convolutions and matrix multiplies, each by its data input (input 0): INT8 when a
    DEQUANTIZE layer produces it, else that tensor's type. ``layers`` lists every layer with its type.
    """
    producers = {}
    layers = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = _enum_name(layer.type)
        for j in range(layer.num_outputs):
            producers[layer.get_output(j).name] = kind
        layers.append(layer)
    rows = []
    for layer in layers:
        kind = _enum_name(layer.type)
        data = layer.get_input(0) if layer.num_inputs else None
        precision = ""
        if kind in _WEIGHTED and data is not None:
            dequantized = producers.get(data.name) == "DEQUANTIZE"
            precision = "INT8" if dequantized else tensor_dtype({"DataType": _enum_name(data.dtype)})
        rows.append({"name": str(layer.name), "type": kind, "precision": precision})
    io = [{"name": t.name, "mode": mode, "dtype": tensor_dtype({"DataType": _enum_name(t.dtype)})}
          for mode, count, get in (("input", network.num_inputs, network.get_input),
                                   ("output", network.num_outputs, network.get_output))
          for t in (get(i) for i in range(count))]
    weighted = [r for r in rows if r["precision"]]
    return {
        "source": "network",
        "note": note,
        "num_layers": len(weighted),
        "network_layers": len(rows),
        "counts": _ordered_counts(r["precision"] for r in weighted),
        "types": dict(sorted(Counter(r["type"] for r in rows).items())),
        "reformat_layers": 0,
        "detailed": False,
        "io": io,
        "layers": rows,
    }


def format_counts(summary: dict) -> str:
    """'42 layers: 30 INT8, 8 FP16, 4 FP32' (other precisions appended when present); from a network
    summary: '3 conv/matmul layers of the network (before fusion): 3 INT8 (Q/DQ input), 0 FP16, 0 FP32'."""
    counts = summary.get("counts", {})
    parts = [f"{n} {p}" for p, n in counts.items() if n or p in MAIN_PRECISIONS]
    if summary.get("source") == "network":
        parts = [part + " (Q/DQ input)" if part.endswith(" INT8") else part for part in parts]
        return f"{summary.get('num_layers', 0)} conv/matmul layers of the network (before fusion): " + ", ".join(parts)
    return f"{summary.get('num_layers', 0)} layers: " + ", ".join(parts)
