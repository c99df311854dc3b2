"""What the real TensorRT bindings do, for the fakes (imported by conftest.py and the tests; pytest puts this
folder on sys.path)."""

# the same engine as TensorRT 11.x writes it: each tensor's "Format" and "Datatype" apart, "I/O Tensors" for the
# engine's I/O (entries with "Name", "IOMode", "Datatype")
ENGINE_INFO_11 = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to conv1", "LayerType": "Reformat",
         "Inputs": [{"Name": "input", "Format": "Row major linear", "Datatype": "Float"}],
         "Outputs": [{"Name": "input_q", "Format": "Thirty-two wide channel vectorized row major",
                      "Datatype": "Int8"}]},
        {"Name": "conv1 + relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "input_q", "Format": "Thirty-two wide channel vectorized row major", "Datatype": "Int8"}],
         "Outputs": [{"Name": "r1", "Format": "Thirty-two wide channel vectorized row major", "Datatype": "Int8"}],
         "TacticName": "sm90_xmma_fprop_implicit_gemm_interleaved_i8i8"},
        {"Name": "conv_hm", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "r1", "Format": "Thirty-two wide channel vectorized row major", "Datatype": "Int8"}],
         "Outputs": [{"Name": "hm", "Format": "Row major linear", "Datatype": "Float"}]},
        {"Name": "conv_reg", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "r1h", "Format": "Channel major format where channel % 8 == 0", "Datatype": "Half"}],
         "Outputs": [{"Name": "reg", "Format": "Row major linear", "Datatype": "Float"}]},
    ],
    "I/O Tensors": [{"Name": "input", "IOMode": "Input", "Datatype": "Float"},
                    {"Name": "hm", "IOMode": "Output", "Datatype": "Float"},
                    {"Name": "reg", "IOMode": "Output", "Datatype": "Float"}],
}
# what the real bindings (10.x and 11.x) raise when a Builder or Runtime cannot be made: no usable GPU / driver
NO_GPU_ERROR = "pybind11::init(): factory function returned nullptr"
