"""deeplab-convert against a hostile user: overwrites, full and read-only disks, kill -9 and Ctrl-C mid-save."""

from __future__ import annotations

import errno
import signal

import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter.cli import main

from hostile import assert_one_error, cli, command_path, start_stalled_save


def _convert_args(tiny, out) -> list[str]:
    return ["--caffemodel", str(tiny.caffemodel_path), "--prototxt", str(tiny.prototxt_path), "-o", str(out)]


def _left_over(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_existing_checkpoint_is_refused_unless_force(tiny_caffe, tmp_path):
    out = tmp_path / "m.pth"
    assert cli("deeplab-convert", *_convert_args(tiny_caffe, out)).returncode == 0
    before = out.read_bytes()
    assert_one_error(cli("deeplab-convert", *_convert_args(tiny_caffe, out)), 2,
                     str(out), "already exists (and 2 of its reports)", "--force")
    assert out.read_bytes() == before
    assert cli("deeplab-convert", *_convert_args(tiny_caffe, out), "--force").returncode == 0
    assert _left_over(tmp_path) == ["m.pth", "m.report.json", "m.report.md"]


def test_an_existing_report_alone_is_refused_too(tiny_caffe, tmp_path):
    (tmp_path / "m.report.md").write_text("someone's notes\n")
    assert_one_error(cli("deeplab-convert", *_convert_args(tiny_caffe, tmp_path / "m.pth")), 2,
                     "m.report.md: already exists", "--force")
    assert (tmp_path / "m.report.md").read_text() == "someone's notes\n"
    assert not (tmp_path / "m.pth").exists()


def test_full_disk_is_an_environment_error_with_nothing_left(tiny_caffe, tmp_path, run_on_tmpfs):
    disk = tmp_path / "disk"
    result, left = run_on_tmpfs([command_path("deeplab-convert"), *_convert_args(tiny_caffe, disk / "m.pth")],
                                size="64k", mount_dir=disk)
    assert_one_error(result, 3, str(disk / "m.pth"), "No space left on device")
    assert left == []  # neither the checkpoint, nor a half-written temporary, nor a report


def test_read_only_output_folder_is_an_environment_error(tiny_caffe, tmp_path, run_on_tmpfs):
    disk = tmp_path / "ro"
    result, left = run_on_tmpfs([command_path("deeplab-convert"), *_convert_args(tiny_caffe, disk / "m.pth")],
                                size="1m", mount_dir=disk, read_only=True)
    assert_one_error(result, 3, "Read-only file system")
    assert left == []


def test_failing_writer_is_an_environment_error(tiny_caffe, tmp_path, monkeypatch):
    """The same full disk through a writer that fails half-way (no tmpfs needed)."""
    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 a few bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    result = CliRunner().invoke(main, _convert_args(tiny_caffe, tmp_path / "m.pth"))
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.pth'}: cannot write checkpoint (OSError: [Errno 28] No space left on device)"]
    assert _left_over(tmp_path) == []


def test_kill_9_mid_save_leaves_no_output_and_the_next_run_cleans_up(tiny_caffe, tmp_path):
    out = tmp_path / "m.pth"
    proc = start_stalled_save(tmp_path, _convert_args(tiny_caffe, out), tmp_path / "saving")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.pth.") and p.name.endswith(".tmp")]
    assert len(stale) == 1 and not out.exists()  # killed mid-save: only the hidden temporary

    (tmp_path / "saving").unlink()
    assert cli("deeplab-convert", *_convert_args(tiny_caffe, out)).returncode == 0
    assert _left_over(tmp_path) == ["m.pth", "m.report.json", "m.report.md"]
    assert models.load_checkpoint(out).metadata["source_file"] == tiny_caffe.caffemodel_path.name


def test_ctrl_c_mid_save_exits_130_in_one_line_and_leaves_nothing(tiny_caffe, tmp_path):
    out = tmp_path / "m.pth"
    proc = start_stalled_save(tmp_path, _convert_args(tiny_caffe, out), tmp_path / "saving")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["error: interrupted (Ctrl-C)"]
    assert _left_over(tmp_path) == ["saving"]  # no checkpoint, no temporary, no report


def test_coco_gets_a_hint_to_coco_init():
    assert_one_error(cli("deeplab-convert", "--dataset", "coco"), 2, "--dataset coco_init")


def test_missing_release_file_is_named_before_the_output_folder(tmp_path):
    line = assert_one_error(cli("deeplab-convert", "--dataset", "voc12", cwd=tmp_path), 2,
                            "train2_iter_20000.caffemodel: no such file", "prototxt_and_model.zip")
    assert "output folder" not in line
    assert _left_over(tmp_path) == []  # no out/ made for a run that cannot start


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"\x0a\x05hello\xff\xff", "not a valid caffemodel"),
])
def test_corrupt_caffemodel_is_bad_input(tmp_path, content, problem):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(content)
    assert_one_error(cli("deeplab-convert", "--caffemodel", str(bad), "-o", str(tmp_path / "m.pth")), 2,
                     str(bad), problem)
    assert _left_over(tmp_path) == ["bad.caffemodel"]
