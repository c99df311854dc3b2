"""`--threads`: the cores not busy with other work by default, the flag or the environment otherwise."""

import pytest
import torch

from trt_centerpoint.cli import main
from trt_centerpoint.errors import UserError
from trt_centerpoint.threads import ENV, auto_threads, set_threads


@pytest.mark.parametrize("cores, load, expected", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.7, 1), (8, 3.4, 5),
                                                   (16, 0.0, 16)])
def test_auto_takes_the_free_cores(cores, load, expected):
    assert auto_threads(cores, load) == expected


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_flag_then_environment_then_auto(monkeypatch, restore_threads):
    monkeypatch.setenv(ENV, "1")
    assert set_threads(2) == 2 and torch.get_num_threads() == 2
    assert set_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv(ENV)
    monkeypatch.setattr("trt_centerpoint.threads.auto_threads", lambda: 2)
    assert set_threads(None) == 2


def test_bad_counts_are_one_line_errors(monkeypatch, capsys, restore_threads):
    with pytest.raises(UserError, match="--threads 0: must be >= 1"):
        set_threads(0)
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(UserError, match=f"{ENV}='many': must be a positive whole number"):
        set_threads(None)
    monkeypatch.delenv(ENV)
    assert main(["synth", "--out", "never-written", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "trt-centerpoint synth: error: --threads 0: must be >= 1"
