"""Per-layer precision summary from engine-inspector JSON (TensorRT 10.x and 11.x schemas), no TensorRT."""

import json

from trt_centerpoint.runtime.trt.inspect import (
    format_counts,
    layer_precision,
    summarize_layers,
    summarize_network,
    tensor_dtype,
)


def test_tensor_dtype_from_10x_phrases_and_11x_fields():
    assert tensor_dtype({"Format/Datatype": "Row major linear FP32"}) == "FP32"
    assert tensor_dtype({"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}) == "FP16"
    assert tensor_dtype({"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}) == "INT8"
    assert tensor_dtype({"Format/Datatype": "Row major linear Int32"}) == "INT32"
    assert tensor_dtype({"Format/Datatype": "Row major linear BFloat16 format"}) == "BF16"
    assert tensor_dtype({"Format": "Row major linear format (kLINEAR)", "DataType": "Half"}) == "FP16"
    assert tensor_dtype({"DataType": "Float"}) == "FP32"
    assert tensor_dtype({"DataType": "Int8"}) == "INT8"
    assert tensor_dtype({"Name": "x"}) == "UNKNOWN" and tensor_dtype("x") == "UNKNOWN"


def test_layer_precision_rule():
    assert layer_precision(["INT8"], ["FP32"]) == "INT8"          # int8 conv writing float
    assert layer_precision(["FP32"], ["INT8"]) == "FP32"          # the quantizing reformat
    assert layer_precision(["INT32", "FP16"], ["FP16"]) == "FP16"  # shape tensors do not count
    assert layer_precision([], ["FP16"]) == "FP16"                # no input: a constant
    assert layer_precision(["INT32"], ["INT32"]) == "UNKNOWN"


def test_summary_of_10x_engine(engine_info_10):
    summary = summarize_layers(json.dumps(engine_info_10))
    assert summary["num_layers"] == 4 and summary["detailed"]
    assert summary["counts"] == {"INT8": 2, "FP16": 1, "FP32": 1}
    assert summary["reformat_layers"] == 1
    conv = summary["layers"][1]
    assert conv["name"] == "conv1 + relu" and conv["type"] == "CaskConvolution" and conv["precision"] == "INT8"
    assert conv["tactic"].startswith("sm80_xmma")
    assert format_counts(summary) == "4 layers: 2 INT8, 1 FP16, 1 FP32"
    assert [t["name"] for t in summary["io"]] == ["input", "hm", "reg"]  # 10.x: "Bindings", names only


def test_summary_of_11x_engine():
    info = {
        "Layers": [
            {"Name": "conv1", "LayerType": "CaskConvolution",
             "Inputs": [{"Name": "x", "Format": "Thirty-two wide channel vectorized row major", "Datatype": "Int8"}],
             "Outputs": [{"Name": "y", "Format": "Row major linear", "Datatype": "Half"}]},
            {"Name": "head", "LayerType": "CaskConvolution",
             "Inputs": [{"Name": "y", "Datatype": "Half"}], "Outputs": [{"Name": "z", "Datatype": "Float"}]},
            {"Name": "shape", "LayerType": "Shuffle",
             "Inputs": [{"Name": "s", "Datatype": "Int64"}], "Outputs": [{"Name": "t", "Datatype": "Int64"}]},
        ],
        "I/O Tensors": [{"Name": "x", "IOMode": "Input", "Datatype": "Float"}],
    }
    summary = summarize_layers(info)
    assert summary["io"] == [{"name": "x", "mode": "input", "dtype": "FP32"}]  # 11.x: "I/O Tensors"
    assert summary["counts"] == {"INT8": 1, "FP16": 1, "FP32": 0, "UNKNOWN": 1}
    assert format_counts(summary) == "3 layers: 1 INT8, 1 FP16, 0 FP32, 1 UNKNOWN"


def test_summary_without_detailed_verbosity():
    summary = summarize_layers({"Layers": ["conv1 + relu", "conv_hm"], "Bindings": ["input", "hm"]})
    assert summary["num_layers"] == 2 and not summary["detailed"]
    assert summary["counts"] == {"INT8": 0, "FP16": 0, "FP32": 0, "UNKNOWN": 2}
    assert summarize_layers('{"Layers": []}')["num_layers"] == 0


def test_io_list_of_both_schemas():
    ten = summarize_layers({"Layers": [], "Bindings": ["input", {"Name": "hm", "Format/Datatype": "Half"}]})
    assert ten["io"] == [{"name": "input", "mode": "", "dtype": "UNKNOWN"}, {"name": "hm", "mode": "", "dtype": "FP16"}]
    eleven = summarize_layers(json.dumps({"Layers": [], "I/O Tensors": [  # 11.x spells it "Datatype"
        {"Name": "input", "IOMode": "Input", "Datatype": "Float"},
        {"Name": "hm", "IOMode": "Output", "Datatype": "Half"}]}))
    assert eleven["io"] == [{"name": "input", "mode": "input", "dtype": "FP32"},
                            {"name": "hm", "mode": "output", "dtype": "FP16"}]
    assert summarize_layers({"Layers": []})["io"] == []


def test_network_summary_counts_qdq_convolutions():
    from types import SimpleNamespace as NS

    def tensor(name, dtype="DataType.FLOAT"):
        return NS(name=name, dtype=dtype)

    def layer(name, kind, inputs, outputs):
        return NS(name=name, type=f"LayerType.{kind}", num_inputs=len(inputs), num_outputs=len(outputs),
                  get_input=lambda i: inputs[i], get_output=lambda i: outputs[i])

    x, xq, xdq, c1, h = tensor("x"), tensor("xq", "DataType.INT8"), tensor("xdq"), tensor("c1"), tensor("h", "HALF")
    layers = [layer("q", "QUANTIZE", [x], [xq]), layer("dq", "DEQUANTIZE", [xq], [xdq]),
              layer("conv1", "CONVOLUTION", [xdq], [c1]), layer("relu", "ACTIVATION", [c1], [c1]),
              layer("conv2", "CONVOLUTION", [c1], [tensor("y")]), layer("mm", "MATRIX_MULTIPLY", [h], [tensor("z")])]
    network = NS(num_layers=len(layers), get_layer=layers.__getitem__, num_inputs=1, get_input=lambda i: x,
                 num_outputs=1, get_output=lambda i: tensor("y"))
    summary = summarize_network(network, note="why")
    assert summary["counts"] == {"INT8": 1, "FP16": 1, "FP32": 1} and summary["num_layers"] == 3
    assert summary["network_layers"] == 6 and summary["types"]["QUANTIZE"] == 1 and summary["note"] == "why"
    assert summary["io"] == [{"name": "x", "mode": "input", "dtype": "FP32"}, {"name": "y", "mode": "output",
                                                                                "dtype": "FP32"}]
    assert format_counts(summary) == ("3 conv/matmul layers of the network (before fusion): 1 INT8 (Q/DQ input), "
                                      "1 FP16, 1 FP32")
