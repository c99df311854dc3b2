"""`ptq`'s skip list: the default, explicit --skip patterns, and a sensitivity.json's proposal merged in order."""

import json

import pytest

from trt_centerpoint.config import config_to_dict, load_config
from trt_centerpoint.quant.quantize import DEFAULT_SKIP
from trt_centerpoint.quant.sensitivity import FORMAT, SensitivityError
from trt_centerpoint.quant.skip import resolve_skip_list


def _sensitivity_json(path, skip, config="tiny"):
    doc = {"format": FORMAT, "config": config_to_dict(load_config(config))}
    if skip is not None:
        doc["skip"] = skip
    path.write_text(json.dumps(doc))
    return path


def test_without_a_file_the_default_or_the_given_patterns():
    assert resolve_skip_list(None, None) == list(DEFAULT_SKIP)
    assert resolve_skip_list([], None) == []  # `--skip` alone: quantize everything
    assert resolve_skip_list(["a.*", "b"], None) == ["a.*", "b"]


def test_a_sensitivity_json_replaces_the_default_after_explicit_patterns(tmp_path):
    path = _sensitivity_json(tmp_path / "sensitivity.json", ["backbone.conv2.0", "a.*"])
    assert resolve_skip_list(None, path, "tiny") == ["backbone.conv2.0", "a.*"]
    assert resolve_skip_list(["a.*", "b"], path, load_config("tiny")) == ["a.*", "b", "backbone.conv2.0"]
    assert resolve_skip_list(None, str(path)) == ["backbone.conv2.0", "a.*"]  # no config: not checked


def test_a_sensitivity_json_of_another_model_or_without_a_budget_is_refused(tmp_path):
    path = _sensitivity_json(tmp_path / "sensitivity.json", ["x"])
    with pytest.raises(SensitivityError, match="another model config"):
        resolve_skip_list(None, path, "synthetic_small")
    with pytest.raises(SensitivityError, match="--budget"):
        resolve_skip_list(None, _sensitivity_json(tmp_path / "no_budget.json", None), "tiny")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SensitivityError, match="not a sensitivity.json"):
        resolve_skip_list(["a"], tmp_path / "other.json", "tiny")
