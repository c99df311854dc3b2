"""Output folders checked before work, a full disk as one line, files that appear together or not at all."""

import errno
from pathlib import Path

import pytest

from trt_centerpoint.cli import main
from trt_centerpoint.errors import UserError
from trt_centerpoint.fileio import atomic_write_bytes, ensure_dir, write_files_together


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_an_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "hostname").write_text("x")
    with pytest.raises(UserError, match=rf"{tmp_path}/hostname/x: cannot create the output folder: "
                                        rf"{tmp_path}/hostname is a file, not a folder"):
        ensure_dir(tmp_path / "hostname" / "x")
    with pytest.raises(UserError, match="the output folder is a file, not a folder"):
        ensure_dir(tmp_path / "hostname")


@pytest.mark.parametrize("command", [
    ["export", "--checkpoint", "never-read.pth"],
    ["build", "--checkpoint", "never-read.pth"],
    ["infer", "--checkpoint", "never-read.pth", "--points", "never-read.bin"],
])
def test_commands_refuse_an_impossible_out_before_any_work(tmp_path, capsys, command):
    (tmp_path / "hostname").write_text("x")
    out = tmp_path / "hostname" / ("dets.json" if command[0] == "infer" else "x")
    assert main([*command, "--config", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0], err


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", enospc)
    with pytest.raises(UserError, match=rf"{tmp_path}: no space left on the device while writing a\.onnx "
                                        r"\(1,000 bytes to write\)"):
        atomic_write_bytes(tmp_path / "a.onnx", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_files_written_together_appear_all_or_none(tmp_path, monkeypatch):
    real, written = Path.write_bytes, []

    def second_fails(self, data):
        if written:
            enospc()
        written.append(self.name)
        return real(self, data)

    files = {"scn.int8.onnx": b"a" * 10, "rpn_head.int8.onnx": b"b" * 20}
    monkeypatch.setattr(Path, "write_bytes", second_fails)
    with pytest.raises(UserError, match=rf"{tmp_path}: no space left on the device for 2 files \(30 bytes\).*"
                                        "nothing was written"):
        write_files_together(tmp_path, files)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "write_bytes", real)
    assert [p.name for p in write_files_together(tmp_path, files)] == list(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert (tmp_path / "rpn_head.int8.onnx").read_bytes() == b"b" * 20
