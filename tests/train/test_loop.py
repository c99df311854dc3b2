"""Training on generated frames: the loss goes down, runs are seeded, an interrupted run resumes exactly."""

import pytest
import torch

from trt_centerpoint.config import load_config
from trt_centerpoint.data.synth.dataset import write_dataset
from trt_centerpoint.data.synth.sensor import SensorConfig
from trt_centerpoint.errors import UserError
from trt_centerpoint.train import loop as training
from trt_centerpoint.train.loop import TrainOptions, state_path, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    write_dataset(out, frames=4, seed=11, config=load_config("tiny"), progress=False,
                  sensor=SensorConfig(beams=16, num_sweeps=1))
    return out


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_train_resume_is_exact(tmp_path, data, monkeypatch):
    cfg = load_config("tiny")
    opts = TrainOptions(epochs=3, batch_size=2, lr=3e-3, seed=5)  # 2 epochs (4 steps): too noisy a trend
    meta = train(cfg, data, tmp_path / "full.pth", opts, progress=False)
    losses = [h["loss"] for h in meta["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not state_path(tmp_path / "full.pth").exists()

    # interrupt after the first epoch's state is saved, then rerun the same command
    real_save = training.atomic_torch_save
    calls = []

    def save_then_stop(obj, path):
        real_save(obj, path)
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "atomic_torch_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "resumed.pth", opts, progress=False)
    assert not (tmp_path / "resumed.pth").exists() and state_path(tmp_path / "resumed.pth").exists()
    monkeypatch.setattr(training, "atomic_torch_save", real_save)
    train(cfg, data, tmp_path / "resumed.pth", opts, progress=False)

    full, resumed = _weights(tmp_path / "full.pth"), _weights(tmp_path / "resumed.pth")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_with_other_options_is_refused(tmp_path, data):
    cfg = load_config("tiny")
    out = tmp_path / "m.pth"
    torch.save({"options": {"epochs": 99}, "frames": 4}, state_path(out))
    with pytest.raises(UserError, match="saved training state is for other options"):
        train(cfg, data, out, TrainOptions(epochs=1), progress=False)
