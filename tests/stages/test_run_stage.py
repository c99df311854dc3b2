"""The build's stage runner and the export's typed result, without running a build (fast)."""

import json

import pytest

from trt_centerpoint.artifacts import RPN_HEAD_FP32, SCN_FP16
from trt_centerpoint.errors import UserError
from trt_centerpoint.export.scn.output_bound import LayerBound
from trt_centerpoint.manifest import file_sha256
from trt_centerpoint.stages.build import BuildOptions, StageOutcome, _Build
from trt_centerpoint.stages.export import ExportedFile, ExportResult, record_export


@pytest.fixture
def build(tmp_path):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"weights")  # never read: only the stage runner is exercised
    return _Build(BuildOptions(config="tiny", checkpoint=checkpoint, out=tmp_path / "out"), log=lambda _: None)


def test_a_stage_runs_once_then_is_skipped_until_its_output_goes(build):
    calls = []

    def work():
        calls.append(1)
        (build.out / "a.bin").write_bytes(b"a")
        return StageOutcome(["a.bin"], "one file", {"figure": 1.5})

    assert build._run_stage("make", {"x": "1"}, {"n": 2}, work)
    assert not build._run_stage("make", {"x": "1"}, {"n": 2}, work)
    assert len(calls) == 1 and build.stages.as_dict()["make"]["status"] == "skipped"
    assert "one file" in build.stages.as_dict()["make"]["detail"]
    record = json.loads((build.out / "manifest.json").read_text())["stages"]["make"]
    assert record["outputs"] == {"a.bin": file_sha256(build.out / "a.bin")}
    assert record["extra"] == {"figure": 1.5, "detail": "one file"}
    assert build._run_stage("make", {"x": "1"}, {"n": 3}, work)  # other parameters
    (build.out / "a.bin").unlink()
    assert build._run_stage("make", {"x": "1"}, {"n": 3}, work)  # output gone
    assert not build._run_stage("make", {"x": "1"}, {"n": 3}, work)
    assert build._run_stage("make", {"x": "1"}, {"n": 3}, work, still_valid=lambda extra: extra["figure"] > 2)
    assert len(calls) == 4 and build.stages.as_dict()["make"]["status"] == "ran"


def test_a_failing_stage_is_not_recorded(build):
    def fail():
        raise UserError("broken")

    with pytest.raises(UserError):
        build._run_stage("fail", {}, {}, fail)
    assert "fail" not in build.manifest.stages and "fail" not in build.stages.as_dict()


def _result(tmp_path) -> ExportResult:
    bound = LayerBound(path="conv2.0", bound=40, observed=20, safe=64, source="observed")
    files = [ExportedFile(SCN_FP16, b"scn", "libspconv-scn", "fp16", {"min_cosine": 0.99999}, ["fused"],
                          info={"node_paths": {"conv1": "conv1.0"}}),
             ExportedFile(RPN_HEAD_FP32, b"head", "onnx", "fp32", {"max_abs_error": 1e-6}, [],
                          info={"outputs": ["hm_0"]})]
    return ExportResult(checkpoint=tmp_path / "model.pth", quantized=False, files=files,
                        bound_plan={"conv2.0": bound}, bound_margin=2.0, bounds_observed=True,
                        calib_data={"path": "calib", "frames": []})


def test_export_result_becomes_the_manifest_record(tmp_path):
    result = _result(tmp_path)
    record = record_export(tmp_path / "out", result, {"checkpoint": "abc"}, {"max_frames": 4}, seconds=1.0)
    assert record["outputs"] == {SCN_FP16: file_sha256(tmp_path / "out" / SCN_FP16),
                                 RPN_HEAD_FP32: file_sha256(tmp_path / "out" / RPN_HEAD_FP32)}
    assert (tmp_path / "out" / RPN_HEAD_FP32).read_bytes() == b"head" and record["versions"]["torch"]
    extra = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["export"]["extra"]
    assert extra["artifacts"][SCN_FP16] == {"format": "libspconv-scn", "opset": 11, "precision": "fp16",
                                            "node_paths": {"conv1": "conv1.0"}}
    assert extra["artifacts"][RPN_HEAD_FP32]["opset"] == 17
    assert extra["passes"] == {SCN_FP16: ["fused"], RPN_HEAD_FP32: []}
    assert extra["validation"][SCN_FP16] == {"min_cosine": 0.99999}
    bounds = extra["output_bounds"]
    assert bounds["source"] == "calib_data" and bounds["margin"] == 2.0 and bounds["layers"]["conv2.0"]["bound"] == 40
    assert extra["quantized"] is False and extra["calib_data"] == {"path": "calib", "frames": []}
    assert "rpn_head.fp32 max abs error" in result.summary()
