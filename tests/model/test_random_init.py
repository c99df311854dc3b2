"""`init-checkpoint`: a random-init det3d-layout checkpoint that the loaders take, deterministic per seed."""

import torch

from trt_centerpoint.cli import main
from trt_centerpoint.config import load_config
from trt_centerpoint.model.centerpoint import CenterPoint
from trt_centerpoint.model.checkpoint import load_checkpoint


def test_init_checkpoint_loads_and_is_deterministic(tmp_path, capsys):
    a, b, c = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    assert main(["init-checkpoint", "-c", "tiny", "--out", str(a)]) == 0
    assert "random init seed 0" in capsys.readouterr().out
    assert main(["init-checkpoint", "-c", "tiny", "--out", str(b)]) == 0
    assert main(["init-checkpoint", "-c", "tiny", "--out", str(c), "--seed", "1"]) == 0
    sa, sb, sc = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    model = CenterPoint(load_config("tiny"))
    meta = load_checkpoint(model, a)  # every det3d key, right shapes
    assert meta["init"]["kind"] == "random" and meta["config"]["name"] == "tiny"
    assert model.bbox_head.tasks[0].hm[-1].bias.eq(load_config("tiny").head.init_bias).all()


def test_init_checkpoint_bad_out_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["init-checkpoint", "-c", "tiny", "--out", str(tmp_path / "file" / "x.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "file" in err and "\n" not in err and "Traceback" not in err
