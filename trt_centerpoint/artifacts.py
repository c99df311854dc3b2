"""The build folder's file names and the ONNX opset of each exported file, in one place.

Every stage reads and writes the build folder by these names, so a stage can run alone on a folder another
stage made, and `build` can tell which files each stage owns.
"""

from __future__ import annotations

MANIFEST = "manifest.json"

# quantized checkpoints
PTQ_CHECKPOINT = "ptq.pth"
QAT_CHECKPOINT = "qat.pth"

# exported files (`export`)
SCN_FP16 = "scn.fp16.onnx"  # sparse backbone, libspconv dialect, FP16 weights
SCN_INT8 = "scn.int8.onnx"  # the same with INT8 dynamic ranges as attributes
SCN_INT8_QDQ = "scn.int8.qdq.onnx"  # the same INT8 graph with QuantizeLinear / DequantizeLinear nodes
RPN_HEAD_FP32 = "rpn_head.fp32.onnx"  # RPN + CenterHead, standard ONNX
RPN_HEAD_INT8 = "rpn_head.int8.onnx"  # explicit Q/DQ
RPN_HEAD_INT8_FP16 = "rpn_head.int8.fp16.onnx"  # explicit Q/DQ, FP16 float parts (`export --fp16`)

# ai.onnx opset each file declares: libspconv's parser reads opset 11; per-channel Q/DQ `axis` needs 13;
# the head's exporter writes 17; FP16 Q/DQ scales need 19.
OPSETS = {SCN_FP16: 11, SCN_INT8: 11, SCN_INT8_QDQ: 13, RPN_HEAD_FP32: 17, RPN_HEAD_INT8: 17, RPN_HEAD_INT8_FP16: 19}

PRECISIONS = ("fp32", "int8")
BACKBONE_FILES = {"fp32": SCN_FP16, "int8": SCN_INT8}  # by the pipeline's precision
HEAD_FILES = {"fp32": RPN_HEAD_FP32, "int8": RPN_HEAD_INT8}

# engines (`engine`): named after their ONNX and the builder that made them, because the two are not
# interchangeable: a TensorRT engine runs with TensorRT on the GPU it was built on, a TensorRT-RTX one only
# with the TensorRT-RTX runtime on RTX GPUs.
ENGINE_SUFFIX = {"tensorrt": ".plan", "tensorrt-rtx": ".rtx.plan"}
ENGINE_SOURCES = (RPN_HEAD_FP32, RPN_HEAD_INT8, RPN_HEAD_INT8_FP16)  # what `build` turns into engines


def engine_file(onnx_name: str, builder: str = "tensorrt") -> str:
    """'rpn_head.int8.onnx' -> 'rpn_head.int8.plan' (TensorRT) or 'rpn_head.int8.rtx.plan' (TensorRT-RTX)."""
    stem = onnx_name[: -len(".onnx")] if onnx_name.endswith(".onnx") else onnx_name
    return stem + ENGINE_SUFFIX[builder]


ENGINE_FILES = {p: engine_file(HEAD_FILES[p]) for p in PRECISIONS}  # TensorRT engines: what `--backend trt` runs
COMPARE_ENGINES_DIR = "compare_trt"  # `build`'s comparison of the TensorRT engines (compare.json etc. inside)
TIMING_CACHE = "timing.cache"

# evaluation and report
COMPARE_JSON = "compare.json"
RUN_RESULTS = "compare.run_results.json"  # Polygraphy RunResults
DETECTIONS = {"fp32": "detections.fp32.json", "int8": "detections.int8.json"}
BENCH_JSON = "bench.json"
BENCH_PNG = "bench.png"
SENSITIVITY_PNG = "sensitivity.png"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
ERRORS_PNG = "errors.png"
REPORT_FILES = (REPORT_MD, REPORT_JSON, ERRORS_PNG)
# bird's-eye views of the frames where INT8 and FP32 disagree most, worst first (compare writes them)
BEV_PNGS = ("bev_1.png", "bev_2.png", "bev_3.png")
