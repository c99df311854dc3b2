"""What every lint rule shares: the `Finding` record and attribute reading."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

__all__ = ["QDQ_OPS", "Finding", "attributes", "text"]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Finding:
    """One problem: `where` is a node name, "initializer X", "graph", ...; `message` says what and why."""

    where: str
    message: str

    def line(self, source: str) -> str:
        return f"{source}: {self.where}: {self.message}"


def attributes(node: onnx.NodeProto) -> dict:
    """Attribute values by name (ints, floats, bytes, lists), as onnx.helper decodes them."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def text(value) -> str:
    """A STRING attribute (bytes) as str; anything else through str()."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
