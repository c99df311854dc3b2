"""Each graphsurgeon pass on a small graph built for it."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from trt_centerpoint.export.head.passes import (
    PassError,
    cleanup_toposort,
    fold_constants,
    infer_shapes,
    name_and_order_outputs,
    run_passes,
)


def _graph_with_constant_chain() -> gs.Graph:
    """y = x + (c * 2): the Mul of two constants folds away."""
    x = gs.Variable("x", np.float32, [1, 4])
    c = gs.Constant("c", np.arange(4, dtype=np.float32).reshape(1, 4))
    two = gs.Constant("two", np.array(2.0, dtype=np.float32))
    scaled = gs.Variable("scaled", np.float32, [1, 4])
    y = gs.Variable("y", np.float32, [1, 4])
    nodes = [gs.Node("Mul", "mul", inputs=[c, two], outputs=[scaled]),
             gs.Node("Add", "add", inputs=[x, scaled], outputs=[y])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)


def _graph_with_two_outputs() -> gs.Graph:
    x = gs.Variable("x", np.float32, [1, 4])
    a, b = gs.Variable("a", np.float32, [1, 4]), gs.Variable("b", np.float32, [1, 4])
    nodes = [gs.Node("Relu", "r", inputs=[x], outputs=[a]), gs.Node("Neg", "n", inputs=[x], outputs=[b])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[a, b], opset=17)


def test_fold_constants():
    graph = _graph_with_constant_chain()
    report = fold_constants(graph)
    assert [n.op for n in graph.nodes] == ["Add"] and (report.nodes_before, report.nodes_after) == (2, 1)
    assert report.line() == "fold_constants: 2 -> 1 nodes; removed Mul x1"
    folded = graph.nodes[0].inputs[1]
    assert isinstance(folded, gs.Constant) and np.array_equal(folded.values, np.arange(4).reshape(1, 4) * 2.0)


def test_name_and_order_outputs_reorders_and_renames():
    graph = _graph_with_two_outputs()
    report = name_and_order_outputs(graph, ["b", "a"])
    assert [t.name for t in graph.outputs] == ["b", "a"] and report.detail == "2 outputs, 2 moved, 0 renamed"
    report = name_and_order_outputs(graph, ["neg_0", "relu_0"])
    assert [t.name for t in graph.outputs] == ["neg_0", "relu_0"] and report.detail.endswith("2 renamed")
    with pytest.raises(PassError, match="2 outputs, 3 names"):
        name_and_order_outputs(graph, ["a", "b", "c"])
    with pytest.raises(PassError, match="match only some"):
        name_and_order_outputs(graph, ["neg_0", "other"])


def test_cleanup_toposort():
    graph = _graph_with_two_outputs()
    graph.outputs = graph.outputs[:1]  # the Neg branch is now dead
    graph.nodes.reverse()
    extra = gs.Variable("c", np.float32, [1, 4])
    graph.nodes.insert(0, gs.Node("Sigmoid", "s", inputs=[graph.outputs[0]], outputs=[extra]))  # before its input
    graph.outputs.append(extra)
    report = cleanup_toposort(graph)
    assert [n.name for n in graph.nodes] == ["r", "s"]
    assert report.line() == "cleanup_toposort: 3 -> 2 nodes; removed Neg x1; sorted"


def test_run_passes_keeps_the_header():
    model = gs.export_onnx(_graph_with_constant_chain())
    model.ir_version, model.producer_name = 8, "me"
    out, reports = run_passes(model, [fold_constants, cleanup_toposort])
    assert out.ir_version == 8 and out.producer_name == "me"
    assert [(o.domain, o.version) for o in out.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert [r.name for r in reports] == ["fold_constants", "cleanup_toposort"]
    onnx.checker.check_model(out, full_check=True)


def test_infer_shapes_makes_symbolic_outputs_static():
    graph = _graph_with_two_outputs()
    for t in graph.outputs:
        t.shape = ["batch", 4]
    report = infer_shapes(graph)
    assert [t.shape for t in graph.outputs] == [[1, 4], [1, 4]]
    assert report.detail == "2 outputs static (2 were symbolic)"
    graph.inputs[0].shape = ["batch", 4]  # a truly dynamic input cannot give static outputs
    with pytest.raises(PassError, match="outputs without a static shape after inference: a, b"):
        infer_shapes(graph)
