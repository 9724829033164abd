"""deeplab-demo against hostile input: folders mixing good and bad images, overwrite attempts,
a full disk. Each asserts the exit code and one-line errors naming the file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from hostile import command_path

from deeplab_caffe.models import build_model, default_config, save_checkpoint
from deeplab_caffe.parity.commands.demo import main
from deeplab_caffe.parity.commands.errors import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED,
                                                  EXIT_OK)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = default_config(3, n_blocks=(1, 1, 1, 1), aspp_rates=(1, 2), stem_channels=8)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, build_model(config), config, {})
    return path


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> Path:
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def _demo(checkpoint: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--checkpoint", str(checkpoint), "--device", "cpu", *args])


def _mixed_folder(folder: Path) -> dict[str, str]:
    """Three good images (two sharing a stem) and four bad ones; returns bad name -> problem."""
    folder.mkdir()
    _photo(folder / "a.jpg", 0)
    _photo(folder / "a.png", 1)
    _photo(folder / "z.bmp", 2)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not a png")
    good_png = cv2.imencode(".png", np.zeros((30, 30, 3), np.uint8))[1].tobytes()
    (folder / "truncated.png").write_bytes(good_png[:40])
    (folder / "dir.jpg").mkdir()  # a folder with an image suffix is not an input
    (folder / "broken_link.jpg").symlink_to(folder / "nowhere.jpg")
    return {"broken_link.jpg": "image not found", "empty.jpg": "cannot decode image",
            "text.png": "cannot decode image", "truncated.png": "cannot decode image"}


def test_a_folder_with_bad_images_goes_on_and_exits_2_with_a_summary(tmp_path: Path,
                                                                     checkpoint: Path) -> None:
    bad = _mixed_folder(tmp_path / "photos")
    out = tmp_path / "out"
    result = _demo(checkpoint, "--folder", str(tmp_path / "photos"), "--output", str(out))
    assert result.exit_code == EXIT_BAD_INPUT
    lines = result.stderr.splitlines()
    assert lines[:-1] == [f"error: {tmp_path / 'photos' / name}: {problem}"
                          for name, problem in sorted(bad.items())]
    assert lines[-1] == f"error: 4 of 7 images could not be read (listed above); 3 written to {out}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}_{kind}.png" for name in ("a.jpg", "a.png", "z.bmp") for kind in ("mask", "overlay"))
    masks = [cv2.imread(str(out / f"{n}_mask.png"), cv2.IMREAD_UNCHANGED) for n in ("a.jpg", "a.png")]
    assert all(m.shape == (40, 56) and m.dtype == np.uint8 and m.max() < 3 for m in masks)


def test_a_second_run_is_refused_in_one_line_and_force_overwrites(tmp_path: Path,
                                                                  checkpoint: Path) -> None:
    image = _photo(tmp_path / "p.jpg", 3)
    out = tmp_path / "out"
    assert _demo(checkpoint, "--image", str(image), "--output", str(out)).exit_code == EXIT_OK
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    _photo(image, 4)  # a different photo under the same name

    again = _demo(checkpoint, "--image", str(image), "--output", str(out))
    assert again.exit_code == EXIT_BAD_INPUT
    assert again.stderr == (f"error: {out / 'p.jpg_overlay.png'}: output exists (and 1 more); "
                            "pass --force to overwrite\n")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    forced = _demo(checkpoint, "--image", str(image), "--output", str(out), "--force")
    assert forced.exit_code == EXIT_OK, forced.output
    assert (out / "p.jpg_overlay.png").read_bytes() != before["p.jpg_overlay.png"][0]


def test_one_existing_output_in_a_folder_run_refuses_the_whole_run(tmp_path: Path,
                                                                   checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("a.jpg", "b.jpg")):
        _photo(folder / name, i)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.jpg_mask.png").write_bytes(b"someone's file")
    result = _demo(checkpoint, "--folder", str(folder), "--output", str(out))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"error: {out / 'b.jpg_mask.png'}: output exists; pass --force to overwrite\n"
    assert sorted(p.name for p in out.iterdir()) == ["b.jpg_mask.png"]  # nothing written


def _enospc(*_args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_disk_full(result: Result, out: Path) -> None:
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    assert result.stderr == f"error: {out / 'p.jpg_overlay.png'}: No space left on device\n"
    assert "Traceback" not in result.output
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []  # no half-written file


def test_a_failing_writer_is_an_environment_error_in_one_line(tmp_path: Path, checkpoint: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    image = _photo(tmp_path / "p.jpg", 5)
    monkeypatch.setattr(os, "fsync", _enospc)
    result = _demo(checkpoint, "--image", str(image), "--output", str(tmp_path / "out"))
    monkeypatch.undo()
    _assert_disk_full(result, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_tmpfs_is_an_environment_error_in_one_line(tmp_path: Path, checkpoint: Path,
                                                          run_on_tmpfs) -> None:
    image = _photo(tmp_path / "p.jpg", 6, size=(200, 300))  # its overlay PNG is over 100 kB
    disk = tmp_path / "disk"
    result, left = run_on_tmpfs([command_path("deeplab-demo"), "--checkpoint", str(checkpoint), "--image",
                                 str(image), "--output", str(disk), "--device", "cpu"], "16k", disk)
    assert result.returncode == EXIT_ENVIRONMENT
    assert result.stderr == f"error: {disk / 'p.jpg_overlay.png'}: No space left on device\n"
    assert left == []  # no half-written PNG, no temporary file


def test_a_rerun_into_the_input_folder_does_not_segment_its_own_outputs(tmp_path: Path,
                                                                       checkpoint: Path) -> None:
    _photo(tmp_path / "a.jpg", 7)
    assert _demo(checkpoint, "--folder", str(tmp_path), "--output", str(tmp_path)).exit_code == EXIT_OK
    again = _demo(checkpoint, "--folder", str(tmp_path), "--output", str(tmp_path), "--force")
    assert again.exit_code == EXIT_OK, again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.jpg_mask.png", "a.jpg_overlay.png"]


def test_ctrl_c_in_a_folder_run_exits_130_and_leaves_only_complete_outputs(tmp_path: Path,
                                                                         checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        _photo(folder / f"{i:02d}.jpg", i, size=(300, 400))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "deeplab_caffe.parity.commands.demo", "--checkpoint",
                             str(checkpoint), "--folder", str(folder), "--output", str(out),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "00.jpg_mask.png").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first image's outputs are written
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stderr == f"error: {out}: interrupted; the outputs listed above are complete\n"
    listed = {Path(p).name for p in stdout.split()}
    written = {p.name for p in out.iterdir()}
    assert 2 <= len(listed) < 80 and listed <= written
    assert len(written - listed) <= 1  # at most the overlay of the image in flight, its mask not yet
    assert all(cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED) is not None for name in written)
