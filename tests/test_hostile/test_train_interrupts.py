"""deeplab-train against hostile conditions: a workdir in use (an earlier run, or a run still
going), Ctrl-C (once and twice), SIGTERM, kill -9 in the middle of a checkpoint save, a full
disk, a crafted ``latest.pth``. Each asserts the exit code and that the
failure is one ``error:`` line; interrupts are real signals sent to a real training process."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hostile import command_path

import torch

from deeplab_caffe.converter.errors import EXIT_TERMINATED
from deeplab_caffe.parity.commands.errors import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED,
                                                  EXIT_OK)
from deeplab_caffe.parity.commands.train import main as train_main
from deeplab_caffe.parity.train.checkpoint import read_train_checkpoint

#: about a second per update (crop 33 = 32 + 1, as the official MSC loss needs) on a loaded 2-core CPU; 200 updates, so a run never ends by itself
TINY = ["--config", "shapes", "dataset.kwargs.n_images=16", "dataset.kwargs.size=[48, 48]",
        "input.crop_size=33", "solver.batch_size=2", "solver.iter_size=2", "solver.max_iter=200",
        "log.log_every=1", "log.tensorboard=false", "model.init_synthetic_seed=null", "--device", "cpu"]

#: runs deeplab-train; torch.save's Nth call writes half its bytes, touches MARKER, waits PAUSE
#: seconds (a slow disk; a kill or Ctrl-C lands here), then writes the rest
STALL_IN_SAVE = """
import io, sys, time, torch
from pathlib import Path
marker, stall_at, pause, args = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
real_save, calls = torch.save, []
def save(obj, f, *a, **k):
    calls.append(1)
    if len(calls) != stall_at:
        return real_save(obj, f, *a, **k)
    buffer = io.BytesIO()
    real_save(obj, buffer, *a, **k)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    marker.write_text("half written")
    time.sleep(pause)
    f.write(data[len(data) // 2 :])
torch.save = save
from deeplab_caffe.parity.commands.train import main
main(args)
"""


def _start_stalling(workdir: Path, marker: Path, stall_at: int, pause: float,
                    *args: str) -> subprocess.Popen[str]:
    """deeplab-train whose ``stall_at``-th checkpoint save stalls half-written; returns once it does."""
    proc = _start(workdir, *args, script=["-c", STALL_IN_SAVE, str(marker), str(stall_at), str(pause)])
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
        pytest.fail(f"training never reached save {stall_at}: {proc.communicate()[1][-2000:]}")
    return proc


def _cli(*args: str) -> Result:
    return CliRunner().invoke(train_main, [*TINY, *args])


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _start(workdir: Path, *args: str, script: list[str] | None = None) -> subprocess.Popen[str]:
    command = script or ["-m", "deeplab_caffe.parity.commands.train"]
    return subprocess.Popen([sys.executable, *command, *TINY, "--workdir", str(workdir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 240.0) -> list[str]:
    """stderr lines read until one starts with ``prefix`` (the process keeps running)."""
    seen, deadline = [], time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return seen
    proc.kill()
    pytest.fail(f"no stderr line starting with {prefix!r}; got {seen}")


def test_a_workdir_in_use_is_refused_unless_resume_or_force(tmp_path: Path) -> None:
    assert _cli("--workdir", str(tmp_path), "--max-iters", "1").exit_code == EXIT_OK
    latest = tmp_path / "latest.pth"
    before = (latest.read_bytes(), latest.stat().st_mtime_ns)

    again = _cli("--workdir", str(tmp_path), "--max-iters", "1")
    assert again.exit_code == EXIT_BAD_INPUT
    assert _error_lines(again.stderr) == [
        f"error: {tmp_path}: holds an earlier run (checkpoint_1.pth, latest.pth, model.pth); "
        "pass --resume to continue it or --force to start over and replace its files"]
    assert (latest.read_bytes(), latest.stat().st_mtime_ns) == before

    both = _cli("--workdir", str(tmp_path), "--resume", "--force")
    assert both.exit_code == EXIT_BAD_INPUT
    assert _error_lines(both.stderr) == ["error: give at most one of --resume, --force"]

    assert _cli("--workdir", str(tmp_path), "--max-iters", "2", "--resume").exit_code == EXIT_OK
    assert read_train_checkpoint(latest)["iteration"] == 2
    assert _cli("--workdir", str(tmp_path), "--max-iters", "1", "--force").exit_code == EXIT_OK
    assert read_train_checkpoint(latest)["iteration"] == 1


def test_ctrl_c_writes_a_checkpoint_at_the_current_iteration_and_exits_130(tmp_path: Path) -> None:
    proc = _start(tmp_path, "log.checkpoint_every=0")
    progress = _wait_for_line(proc, "train: iter 2/200")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    # not a terminal: plain progress lines with the iteration, loss, LR, it/s and ETA
    assert re.fullmatch(r"train: iter 1/200  \d+\.\d\d it/s  loss \d+\.\d{4}  lr \S+  "
                        r"ETA (\d+h)?(\d+m)?\d+s", progress[-2]), progress
    errors = _error_lines(stderr)
    assert len(errors) == 1 and stderr.rstrip("\n").endswith(errors[0])
    iteration = read_train_checkpoint(tmp_path / "latest.pth")["iteration"]
    assert iteration >= 2
    assert errors[0] == (f"error: {tmp_path / f'checkpoint_{iteration}.pth'}: interrupted at iteration "
                         f"{iteration} of 200; checkpoint written, --resume continues from it")

    resumed = _start(tmp_path, "--resume", "--max-iters", str(iteration + 1))
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == EXIT_OK, stderr
    assert f"resuming from {tmp_path / 'latest.pth'} at iteration {iteration} of 200" in stderr
    assert read_train_checkpoint(tmp_path / "latest.pth")["iteration"] == iteration + 1


def test_sigterm_writes_a_checkpoint_at_the_current_iteration_and_exits_143(tmp_path: Path) -> None:
    """Preemption (Slurm, Kubernetes, cloud) sends SIGTERM: handled like the first Ctrl-C."""
    proc = _start(tmp_path, "log.checkpoint_every=0")
    _wait_for_line(proc, "train: iter 2/200")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a repeat (scancel and torchrun both forward it) changes nothing
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_TERMINATED == 143, stderr
    iteration = read_train_checkpoint(tmp_path / "latest.pth")["iteration"]
    assert iteration >= 2
    assert _error_lines(stderr) == [
        f"error: {tmp_path / f'checkpoint_{iteration}.pth'}: terminated (SIGTERM) at iteration "
        f"{iteration} of 200; checkpoint written, --resume continues from it"]
    assert stderr.count("SIGTERM: finishing this update and writing a checkpoint") == 1


def test_a_run_still_going_holds_its_workdir_and_a_second_run_is_refused(tmp_path: Path) -> None:
    """Two runs started 0.5 s apart into one workdir: the one that takes the lock trains, the
    other exits 2 naming the workdir and the holder's pid, and touches nothing."""
    first = _start(tmp_path, "log.checkpoint_every=0")
    time.sleep(0.5)
    second = _start(tmp_path, "log.checkpoint_every=0")
    procs = {first.pid: first, second.pid: second}
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    loser = next(p for p in procs.values() if p.poll() is not None)
    winner = next(p for p in procs.values() if p is not loser)
    _, stderr = loser.communicate(timeout=60)
    assert loser.returncode == EXIT_BAD_INPUT, stderr
    assert _error_lines(stderr) == [
        f"error: {tmp_path}: in use by another deeplab-train run (pid {winner.pid}); wait for it "
        "to end or give another --workdir"]
    assert (tmp_path / ".lock").read_text() == f"{winner.pid}\n"
    _wait_for_line(winner, "train: iter 1/200")
    winner.send_signal(signal.SIGINT)
    _, stderr = winner.communicate(timeout=240)
    assert winner.returncode == EXIT_INTERRUPTED, stderr
    # the lock went with the process: --resume takes it again and continues
    iteration = read_train_checkpoint(tmp_path / "latest.pth")["iteration"]
    resumed = _cli("--workdir", str(tmp_path), "--resume", "--max-iters", str(iteration + 1))
    assert resumed.exit_code == EXIT_OK, resumed.output
    assert read_train_checkpoint(tmp_path / "latest.pth")["iteration"] == iteration + 1


def test_resume_takes_the_stored_config_and_refuses_only_a_contradicting_override(tmp_path: Path) -> None:
    """The README's ``--resume`` after a run with overrides: the stored config continues; an
    override of the log section applies, one of the recipe is refused naming the key."""
    assert _cli("--workdir", str(tmp_path), "--max-iters", "1", "solver.lr=1.0e-05").exit_code == EXIT_OK
    plain = CliRunner().invoke(train_main, ["--config", "shapes", "--workdir", str(tmp_path), "--resume",
                                            "--device", "cpu", "--max-iters", "2", "log.log_every=2"])
    assert plain.exit_code == EXIT_OK, plain.output
    payload = read_train_checkpoint(tmp_path / "latest.pth")
    assert payload["iteration"] == 2 and payload["config"]["solver"]["lr"] == 1.0e-05
    assert payload["config"]["log"]["log_every"] == 2
    same = _cli("--workdir", str(tmp_path), "--resume", "--max-iters", "3", "solver.lr=1.0e-05")
    assert same.exit_code == EXIT_OK, same.output  # repeating a stored value is no contradiction
    changed = _cli("--workdir", str(tmp_path), "--resume", "solver.lr=0.001")
    assert changed.exit_code == EXIT_BAD_INPUT
    assert _error_lines(changed.stderr) == [
        f"error: cannot resume from {tmp_path / 'latest.pth'}: the override of 'solver.lr' contradicts "
        "the checkpoint's config (only the log, loader and eval sections may change)"]
    other = CliRunner().invoke(train_main, ["--config", "voc12", "--workdir", str(tmp_path), "--resume"])
    assert other.exit_code == EXIT_BAD_INPUT
    assert _error_lines(other.stderr) == [
        f"error: cannot resume from {tmp_path / 'latest.pth'}: it is a run of recipe "
        "'deeplab_v2_shapes_smoke', --config gives 'deeplab_v2_voc12'"]


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    proc = _start(tmp_path, "log.checkpoint_every=0")
    _wait_for_line(proc, "train: iter 1/200")
    proc.send_signal(signal.SIGINT)
    _wait_for_line(proc, "interrupted: finishing this update")
    proc.send_signal(signal.SIGINT)  # the update in flight takes about a second
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert _error_lines(stderr) == [f"error: {tmp_path}: interrupted; stopped at once, no checkpoint written"]
    # nothing but the lock file (kept: deleting it would race a run taking it), not a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_kill_9_mid_save_keeps_the_previous_checkpoint_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    workdir = tmp_path / "run"
    proc = _start_stalling(workdir, marker, 2, 600, "log.checkpoint_every=2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    orphans = sorted(workdir.glob(".checkpoint_4.pth.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0  # the half-written save
    assert not (workdir / "checkpoint_4.pth").exists()
    assert read_train_checkpoint(workdir / "latest.pth")["iteration"] == 2  # intact

    resumed = _start(workdir, "--resume", "--max-iters", "3")
    _, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == EXIT_OK, stderr
    assert f"removed {orphans[0]}, left by an interrupted save" in stderr
    assert f"resuming from {workdir / 'latest.pth'} at iteration 2 of 200" in stderr
    assert not list(workdir.glob(".*.tmp"))
    assert read_train_checkpoint(workdir / "latest.pth")["iteration"] == 3


def test_ctrl_c_mid_save_lets_the_save_finish_then_exits_130(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    proc = _start_stalling(workdir, tmp_path / "marker", 2, 4, "log.checkpoint_every=2")
    proc.send_signal(signal.SIGINT)  # while checkpoint_4.pth is half written
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert _error_lines(stderr) == [f"error: {workdir / 'checkpoint_4.pth'}: interrupted at iteration 4 of "
                                    "200; checkpoint written, --resume continues from it"]
    assert read_train_checkpoint(workdir / "latest.pth")["iteration"] == 4  # the whole file
    assert not list(workdir.glob(".*.tmp"))


def test_ctrl_c_twice_mid_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    proc = _start_stalling(workdir, tmp_path / "marker", 2, 30, "log.checkpoint_every=2")
    proc.send_signal(signal.SIGINT)
    _wait_for_line(proc, "interrupted: finishing this update")
    proc.send_signal(signal.SIGINT)  # the save of checkpoint_4.pth is still stalled
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert _error_lines(stderr) == [f"error: {workdir}: interrupted; stopped at once, no checkpoint written"]
    assert read_train_checkpoint(workdir / "latest.pth")["iteration"] == 2
    assert sorted(p.name for p in workdir.glob("*.pth")) == ["checkpoint_2.pth", "latest.pth"]
    assert not list(workdir.glob(".*.tmp"))  # the half-written save was removed


def _enospc(*_args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_disk_full(result: Result, workdir: Path) -> None:
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    assert _error_lines(result.stderr) == [f"error: {workdir / 'checkpoint_1.pth'}: No space left on device"]
    assert result.stderr.rstrip("\n").endswith(_error_lines(result.stderr)[0])
    assert not [p.name for p in workdir.iterdir() if p.name.endswith(".pth") or p.name.endswith(".tmp")]


def test_a_failing_writer_on_save_exits_3_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _enospc)
    result = _cli("--workdir", str(tmp_path), "--max-iters", "1")
    monkeypatch.undo()
    _assert_disk_full(result, tmp_path)


def test_a_full_tmpfs_on_save_exits_3_in_one_line(tmp_path: Path, run_on_tmpfs) -> None:
    disk = tmp_path / "disk"
    result, left = run_on_tmpfs([command_path("deeplab-train"), *TINY, "--workdir", str(disk),
                                 "--max-iters", "1"], "16k", disk)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    assert _error_lines(result.stderr) == [f"error: {disk / 'checkpoint_1.pth'}: No space left on device"]
    assert result.stderr.rstrip("\n").endswith(_error_lines(result.stderr)[0])
    assert left == [".lock"]  # no checkpoint, no temporary file; the lock file (16 bytes at most)
