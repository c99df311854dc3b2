"""The build manifest decides what reruns: unchanged inputs and intact outputs mean a stage is skipped."""

import json

import pytest

from trt_centerpoint.errors import UserError
from trt_centerpoint.manifest import Manifest, file_sha256, json_sha256, tree_sha256


def test_stage_is_up_to_date_until_something_changes(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("weights")
    (tmp_path / "out.onnx").write_bytes(b"graph")
    m = Manifest(tmp_path)
    inputs = {"checkpoint": file_sha256(src)}
    assert not m.up_to_date("export", inputs, {"opset": 17})
    m.record("export", inputs, {"opset": 17}, ["out.onnx"], seconds=1.5, extra={"passes": ["fold"]})

    again = Manifest(tmp_path)  # reloaded from disk
    assert again.up_to_date("export", inputs, {"opset": 17})
    assert not again.up_to_date("export", inputs, {"opset": 13})  # other parameters
    src.write_text("other weights")
    assert not again.up_to_date("export", {"checkpoint": file_sha256(src)}, {"opset": 17})
    (tmp_path / "out.onnx").write_bytes(b"edited")
    assert not again.up_to_date("export", inputs, {"opset": 17})
    (tmp_path / "out.onnx").unlink()
    assert not again.up_to_date("export", inputs, {"opset": 17})
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["stages"]["export"]["extra"] == {"passes": ["fold"]} and data["versions"]["torch"]


def test_tree_hash_sees_any_file(tmp_path):
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.bin").write_bytes(b"1")
    h1 = tree_sha256(tmp_path)
    (tmp_path / "points" / "b.bin").write_bytes(b"2")
    h2 = tree_sha256(tmp_path)
    (tmp_path / "points" / "a.bin").write_bytes(b"3")
    assert len({h1, h2, tree_sha256(tmp_path)}) == 3


def test_json_hash_ignores_key_order_only():
    assert json_sha256({"a": 1, "b": [1, 2]}) == json_sha256({"b": [1, 2], "a": 1})
    assert json_sha256({"a": 1, "b": [1, 2]}) != json_sha256({"a": 1, "b": [2, 1]})


def test_broken_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json: unreadable manifest"):
        Manifest(tmp_path)
