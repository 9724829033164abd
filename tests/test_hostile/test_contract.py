"""The exit-code contract itself: -h everywhere, one-line usage errors, --debug, Ctrl-C, progress in logs."""

from __future__ import annotations

import errno
import io

import click
import pytest
from click.testing import CliRunner

from deeplab_caffe.converter.errors import (EXIT_STATUS_HELP, ContractCommand, ContractGroup, ConversionError,
                                            exit_status_of, one_line)
from deeplab_caffe.converter.progress import StepProgress, format_seconds

from hostile import assert_one_error, cli

COMMANDS = [("deeplab-convert",), ("deeplab-parity",), ("deeplab-parity", "run"), ("deeplab-parity", "compare"),
            ("deeplab-parity", "list"), ("deeplab-parity", "eval"), ("deeplab-parity", "history")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_dash_h_shows_the_exit_status_contract(command):
    result = cli(*command, "-h")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Exit status: 0 ok; 1 a check or regression failed; 2 bad input or usage;" in text
    assert "3 environment (disk full, permission denied, read-only file system); 130 interrupted (Ctrl-C)." in text
    assert "--debug" in result.stdout


@pytest.mark.parametrize("args, problem", [
    (("deeplab-convert", "--bogus"), "No such option '--bogus'"),
    (("deeplab-convert", "--verify-size", "big"), "'big' is not a valid integer"),
    (("deeplab-parity", "--bogus"), "No such option '--bogus'"),
    (("deeplab-parity", "nocmd"), "No such command 'nocmd'"),
    (("deeplab-parity", "run", "--bogus"), "No such option '--bogus'"),
    (("deeplab-parity", "compare"), "Missing argument 'OLD'"),
    (("deeplab-parity", "history"), "Missing argument 'REPORTS...'"),
    (("deeplab-parity", "eval", "--dataset", "shapes"), "Missing option '--checkpoint'"),
])
def test_usage_errors_are_one_line_for_groups_and_subcommands(args, problem):
    assert_one_error(cli(*args), 2, problem)


def test_debug_adds_the_traceback_before_the_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    result = cli("deeplab-parity", "compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json"), "--debug")
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback") and "ReportError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'bad.json'}: not valid JSON")


@click.command(cls=ContractCommand)
@click.option("--fail", type=click.Choice(["bad-input", "disk-full", "wrapped-disk-full", "read-only", "no-file",
                                           "ctrl-c", "bug", "none"]))
def _probe(fail: str) -> int:
    """A command whose failure is chosen on the command line."""
    if fail == "bad-input":
        raise ConversionError("w.caffemodel", "truncated")
    if fail == "disk-full":
        raise OSError(errno.ENOSPC, "No space left on device", "out/m.pth")
    if fail == "wrapped-disk-full":
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as err:
            raise ConversionError("out/m.pth", "cannot write (Disk quota exceeded)") from err
    if fail == "read-only":
        raise OSError(errno.EROFS, "Read-only file system", "out/m.pth")
    if fail == "no-file":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "in.pth")
    if fail == "ctrl-c":
        raise KeyboardInterrupt
    if fail == "bug":
        raise KeyError("status")
    return 0


@pytest.mark.parametrize("fail, status, line", [
    ("bad-input", 2, "error: w.caffemodel: truncated"),
    ("disk-full", 3, "error: out/m.pth: No space left on device"),
    ("wrapped-disk-full", 3, "error: out/m.pth: cannot write (Disk quota exceeded)"),
    ("read-only", 3, "error: out/m.pth: Read-only file system"),
    ("no-file", 2, "error: in.pth: No such file or directory"),
    ("ctrl-c", 130, "error: interrupted (Ctrl-C)"),
    ("bug", 1, "error: internal error (KeyError: 'status'); --debug shows the traceback"),
    ("none", 0, None),
])
def test_the_wrapper_maps_each_failure_to_its_status_and_one_line(fail, status, line):
    result = CliRunner().invoke(_probe, ["--fail", fail])
    assert result.exit_code == status
    assert result.stderr.strip().splitlines() == ([line] if line else [])


def test_a_group_passes_its_subcommand_status_through():
    @click.group(cls=ContractGroup)
    def group() -> None:
        """A group."""

    group.add_command(_probe, "probe")
    assert CliRunner().invoke(group, ["probe", "--fail", "disk-full"]).exit_code == 3
    debug = CliRunner().invoke(group, ["--debug", "probe", "--fail", "bug"])
    assert debug.stderr.startswith("Traceback") and debug.stderr.splitlines()[-1] == "error: internal error (KeyError: 'status')"
    assert exit_status_of(ValueError("x")) == 1 and one_line(ValueError("")).startswith("internal error (ValueError)")
    assert EXIT_STATUS_HELP in group.epilog


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_in_a_log_and_a_bar_on_a_terminal():
    log = io.StringIO()
    with StepProgress("eval", 4, interval_s=0, stream=log) as bar:
        for _ in range(4):
            bar.advance()
    lines = log.getvalue().splitlines()
    assert [line.split(", elapsed")[0] for line in lines] == [f"eval: step {i}/4" for i in (1, 2, 3, 4, 4)]
    assert all(", ETA " in line for line in lines[:3]) and ", ETA" not in lines[-1]

    quiet = io.StringIO()
    with StepProgress("eval", 4, interval_s=3600, stream=quiet) as bar:
        bar.advance(4)
    assert quiet.getvalue().splitlines() == [quiet.getvalue().strip()] and "step 4/4" in quiet.getvalue()

    terminal = _FakeTerminal()
    with StepProgress("eval", 4, interval_s=0, stream=terminal) as bar:
        bar.advance(4)
    assert "eval: step" not in terminal.getvalue()  # rich drew its bar instead


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 42, 65.2, 3725)] == ["0s", "42s", "1m05s", "1h02m05s"]


def test_convert_verify_prints_progress_lines_in_a_log(tiny_caffe, tmp_path):
    result = cli("deeplab-convert", "--caffemodel", str(tiny_caffe.caffemodel_path), "--prototxt",
                 str(tiny_caffe.prototxt_path), "-o", str(tmp_path / "m.pth"), "--verify", "--verify-size", "65",
                 env={"DEEPLAB_PROGRESS_INTERVAL": "0"})
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("verify: step ")]
    assert len(steps) > 2 and ", ETA " in steps[0]
    done, total = steps[-1].split("step ")[1].split(",")[0].split("/")
    assert done == total


def test_parity_run_prints_row_and_step_lines_in_a_log(tmp_path):
    fixture = "{n_classes: 5, msc: true, seed: 1, n_blocks: [1, 1, 2, 1], stem_channels: 8, aspp_rates: [2, 4]}"
    (tmp_path / "m.yaml").write_text(
        "version: 1\nsuites:\n  smoke: {tags: [t]}\nrows:\n"
        f"  - name: tiny-forward\n    kind: forward\n    tags: [t]\n    model: tiny\n"
        f"    weights: {{key: tiny, fixture: {fixture}}}\n    options: {{images: [astronaut], size: 65}}\n")
    result = cli("deeplab-parity", "run", "--manifest", str(tmp_path / "m.yaml"), "--outdir", str(tmp_path / "out"),
                 "--device", "cpu", env={"DEEPLAB_PROGRESS_INTERVAL": "0"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("▶ tiny-forward (forward): row 1/1, elapsed ") for line in lines)
    steps = [line for line in lines if line.startswith("verify: step ")]
    assert len(steps) > 2 and ", ETA " in steps[0] and steps[-1].startswith("verify: step ")
