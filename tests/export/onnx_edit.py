"""Small edits of an exported scn file for the lint tests: find a node, set one attribute."""

from onnx import helper


def node_named(model, name):
    return next(n for n in model.graph.node if n.name == name)


def set_attribute(node, name, value):
    """Replace (or add) attribute `name` of `node`."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))
