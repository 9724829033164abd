"""Losing or hiding results: NaN and nonsense limits in compare, given weights the suite would ignore,
report names that clobber another output's, full disks and killed runs in export, the synthetic
caffemodel of deeplab-convert, and --output files replaced without --force. Each case runs the
installed command in a real process and checks the exit status, the one line, what is left on disk."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from deeplab_caffe import models

from hostile import assert_one_error, cli, command_path

SCHEMA = "deeplab-parity/1"


def _left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- compare: NaN never passes a gate


def _metric_report(path: Path, miou: float | str | None, tolerance: float | str | None = 1.0) -> str:
    """A report with one metric row; a str value is written as a bare JSON token (``NaN``, ``Infinity``)."""
    row = {"name": "shapes", "kind": "metric", "status": "pass", "tolerance": "@TOL@",
           "metrics": [{"metric": "mIoU", "reported": 84.5, "reproduced": "@MIOU@"}]}
    text = json.dumps({"schema": SCHEMA, "rows": [row]})
    for token, value in (("@TOL@", tolerance), ("@MIOU@", miou)):
        text = text.replace(f'"{token}"', value if isinstance(value, str) else json.dumps(value))
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("miou, tolerance, problem", [
    (10.0, "NaN", "'tolerance' must be a finite number >= 0, got nan"),
    (10.0, "Infinity", "'tolerance' must be a finite number >= 0, got inf"),
    (84.5, -5.0, "'tolerance' must be a finite number >= 0, got -5.0"),
    ("NaN", 1.0, "'metrics' must be a list of {'metric': name, 'reproduced': finite number or null} objects"),
    ("-Infinity", 1.0, "'metrics' must be a list"),
])
def test_a_report_holding_nan_inf_or_a_negative_tolerance_is_bad_input(tmp_path, miou, tolerance, problem):
    old = _metric_report(tmp_path / "old.json", 84.5)
    new = _metric_report(tmp_path / "new.json", miou, tolerance)
    assert_one_error(cli("deeplab-parity", "compare", old, new), 2, "new.json: rows[0] (shapes)", problem)


@pytest.mark.parametrize("value", ["nan", "-5", "inf", "-inf"])
def test_max_drop_that_is_not_a_finite_non_negative_number_is_a_usage_error(tmp_path, value):
    old = _metric_report(tmp_path / "old.json", 84.5)
    new = _metric_report(tmp_path / "new.json", 10.0)
    assert_one_error(cli("deeplab-parity", "compare", old, new, "--max-drop", value), 2,
                     "Invalid value for '--max-drop'", "finite number of percentage points >= 0")
    assert_one_error(cli("deeplab-parity", "compare", old, old, "--max-drop", value), 2, "'--max-drop'")


def test_a_metric_the_new_run_no_longer_measured_is_a_regression(tmp_path):
    """Our writer stores a NaN mIoU as null (strict JSON): that is a regression, not a skipped metric."""
    old = _metric_report(tmp_path / "old.json", 84.5)
    new = _metric_report(tmp_path / "new.json", None)
    result = cli("deeplab-parity", "compare", old, new, "--output", str(tmp_path / "cmp.md"))
    assert result.returncode == 1, result.stderr
    assert "1 regression(s)" in result.stdout
    assert "- `shapes`: mIoU 84.50 -> not measured in the new run" in (tmp_path / "cmp.md").read_text()


@pytest.mark.parametrize("max_drop, status", [([], 1), (["--max-drop", "74.4"], 1), (["--max-drop", "74.5"], 0)])
def test_a_drop_beyond_the_limit_fails_and_within_it_passes(tmp_path, max_drop, status):
    old = _metric_report(tmp_path / "old.json", 84.5)
    new = _metric_report(tmp_path / "new.json", 10.0)
    result = cli("deeplab-parity", "compare", old, new, *max_drop)
    assert result.returncode == status, result.stdout + result.stderr
    assert cli("deeplab-parity", "compare", old, old, "--max-drop", "0").returncode == 0  # identical: no regression


# ----------------------------------------------------------------------------- --output files need --force


@pytest.mark.slow
def test_compare_and_list_refuse_to_replace_an_output_without_force(tmp_path):
    report = _metric_report(tmp_path / "r.json", 84.5)
    for args in (["compare", report, report], ["list", "--format", "json"], ["list", "--format", "markdown"]):
        out = tmp_path / "out.txt"
        out.write_text("someone's notes\n")
        assert_one_error(cli("deeplab-parity", *args, "--output", str(out)), 2, str(out), "already exists", "--force")
        assert out.read_text() == "someone's notes\n"
        assert cli("deeplab-parity", *args, "--output", str(out), "--force").returncode == 0
        assert out.read_text() != "someone's notes\n"
        assert _left_over(tmp_path) == ["out.txt", "r.json"]  # no temporary left


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory) -> Path:
    """A DeepLab v2 of the shapes recipe's size (4 classes, MSC) with seeded random weights."""
    torch.manual_seed(0)
    config = models.default_config(4, n_blocks=(1, 1, 1, 1), aspp_rates=(1, 2), stem_channels=8, msc=True)
    path = tmp_path_factory.mktemp("shapes_ckpt") / "shapes.pth"
    models.save_checkpoint(path, models.build_model(config), config, {"note": "seeded random weights"})
    return path


def test_eval_refuses_to_replace_its_results_file_before_evaluating(tmp_path, shapes_checkpoint):
    out = tmp_path / "results.json"
    out.write_text("{}\n")
    args = ["eval", "--checkpoint", str(shapes_checkpoint), "--dataset", "shapes", "--device", "cpu",
            "--max-images", "2", "--no-progress", "--output", str(out)]
    assert_one_error(cli("deeplab-parity", *args), 2, str(out), "already exists", "--force")
    assert out.read_text() == "{}\n"
    assert cli("deeplab-parity", *args, "--force").returncode == 0
    assert json.loads(out.read_text())["n_images"] == 2
    assert _left_over(tmp_path) == ["results.json"]


# ----------------------------------------------------------------------------- run: given weights are used or refused


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return cli("deeplab-parity", "run", *args, "--outdir", str(tmp_path / "out"), "--device", "cpu", "--no-progress",
               cwd=tmp_path)


@pytest.mark.slow
def test_weights_given_to_a_row_that_always_trains_are_evaluated(tmp_path, shapes_checkpoint):
    """smoke-shapes trains unless given weights; given them, it evaluates them (random weights fail the pin)."""
    result = _run(tmp_path, "--rows", "smoke-shapes", "--weights", f"smoke_shapes={shapes_checkpoint}")
    assert result.returncode == 1, result.stderr
    data = json.loads((tmp_path / "out" / "parity.json").read_text())
    row = data["rows"][0]
    assert row["status"] == "fail" and "training" not in row["details"]
    assert [(w["path"], w["what"]) for w in row["weights"]] == [(str(shapes_checkpoint), "given weights")]
    assert not (tmp_path / "out" / "train").exists()


def test_retrain_over_given_row_weights_is_refused(tmp_path, shapes_checkpoint):
    result = _run(tmp_path, "--rows", "smoke-shapes", "--retrain", "--weights", f"smoke_shapes={shapes_checkpoint}")
    assert_one_error(result, 2, f"--weights smoke_shapes={shapes_checkpoint}", "with --retrain row smoke-shapes "
                     "trains its own weights and would not use it")
    assert _left_over(tmp_path) == []  # refused before anything was written


def test_a_coco_init_no_selected_row_uses_is_refused(tmp_path, shapes_checkpoint):
    result = _run(tmp_path, "--rows", "smoke-structural", "--weights", f"coco_init={shapes_checkpoint}")
    assert_one_error(result, 2, f"--weights coco_init={shapes_checkpoint}: no selected row would use it",
                     "no selected row trains from an init")
    assert _left_over(tmp_path) == []


def test_weights_for_a_row_not_selected_are_refused(tmp_path, shapes_checkpoint):
    result = _run(tmp_path, "--rows", "smoke-structural", "--weights", f"smoke_shapes={shapes_checkpoint}")
    assert_one_error(result, 2, "--weights smoke_shapes=", "no selected row is named 'smoke_shapes'",
                     "selected: smoke-structural")


@pytest.mark.parametrize("retrain", [[], ["--retrain"]])
def test_a_given_coco_init_replaces_the_rows_fixture_init(tmp_path, retrain):
    """The given init is the one training loads: one whose backbone does not fit the recipe is named."""
    torch.manual_seed(0)
    config = models.default_config(91, n_blocks=(1, 1, 1, 1), aspp_rates=None, stem_channels=16)
    init = tmp_path / "wide_init.pth"
    models.save_checkpoint(init, models.build_model(config), config, {"note": "16 stem channels, the recipe has 8"})
    result = _run(tmp_path, "--rows", "smoke-shapes", *retrain, "--weights", f"coco_init={init}")
    assert result.returncode == 2, result.stderr
    row = json.loads((tmp_path / "out" / "parity.json").read_text())["rows"][0]
    assert row["status"] == "error" and row["bad_input"] is True
    assert row["reason"].startswith(f"bad input: {init}: init checkpoint ")
    assert "has shape (16, 3, 7, 7), the model needs (8, 3, 7, 7)" in row["reason"]


def test_fixture_files_in_the_reports_are_named_as_temporary_not_as_a_removed_path(tmp_path):
    result = _run(tmp_path, "--rows", "smoke-structural")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "out" / "parity.json").read_text())["weights"]
    assert [r["path"] for r in records] == ["smoke_fixture.caffemodel", "smoke_fixture.prototxt"]
    assert all("temporary" in r["what"] for r in records)
    markdown = (tmp_path / "out" / "parity.md").read_text()
    assert "| `smoke_fixture.caffemodel` | fixture caffemodel (temporary: written from the manifest's " \
           "weights.fixture seed into a folder removed after the run;" in markdown
    assert "deeplab-parity-" not in markdown  # the run's temporary folder is named nowhere


# ----------------------------------------------------------------------------- convert: report names keep the output's


def _convert(tiny, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("deeplab-convert", "--caffemodel", str(tiny.caffemodel_path), "--prototxt", str(tiny.prototxt_path),
               "-o", str(out), *extra)


@pytest.mark.slow
def test_reports_keep_every_part_of_the_output_name(tiny_caffe, tmp_path):
    assert _convert(tiny_caffe, tmp_path / "model.pth").returncode == 0
    first = {name: (tmp_path / name).read_bytes() for name in _left_over(tmp_path)}
    assert _convert(tiny_caffe, tmp_path / "model.v1.pth").returncode == 0  # not refused for model.pth's reports
    assert _convert(tiny_caffe, tmp_path / "model.v2.safetensors").returncode == 0
    assert _convert(tiny_caffe, tmp_path / "model.v2.safetensors", "--force").returncode == 0
    assert _left_over(tmp_path) == ["model.pth", "model.report.json", "model.report.md",
                                    "model.v1.pth", "model.v1.report.json", "model.v1.report.md",
                                    "model.v2.report.json", "model.v2.report.md", "model.v2.safetensors"]
    assert {name: (tmp_path / name).read_bytes() for name in first} == first  # model.pth's files untouched
    assert_one_error(_convert(tiny_caffe, tmp_path / "model.v1.pth"), 2, "model.v1.pth: already exists "
                     "(and 2 of its reports)")


# ----------------------------------------------------------------------------- export: full disk, killed runs


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = models.default_config(21, n_blocks=(1, 1, 1, 1), aspp_rates=(2, 4), msc=True, stem_channels=8)
    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pth"
    models.save_checkpoint(path, models.build_model(config), config, {"note": "seeded random weights"})
    return path


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_export_onto_a_full_disk_is_an_environment_error_with_nothing_left(tiny_checkpoint, tmp_path, run_on_tmpfs,
                                                                           fmt):
    disk = tmp_path / "disk"
    result, left = run_on_tmpfs([command_path("deeplab-export"), "--checkpoint", str(tiny_checkpoint), "--format",
                                 fmt, "--output", str(disk / "x.pt"), "--check-sizes", "65x65", "--no-progress"],
                                size="64k", mount_dir=disk)
    assert_one_error(result, 3, f"{disk / 'x.pt'}: No space left on device")
    assert left == []  # no file, no temporary


@pytest.mark.parametrize("fmt, writer", [("torchscript", "jit"), ("state_dict", "torch")])
def test_a_failing_writer_in_export_is_an_environment_error(tiny_checkpoint, tmp_path, monkeypatch, fmt, writer):
    """The same full disk through a writer that fails half-way (no tmpfs needed)."""
    from click.testing import CliRunner

    from deeplab_caffe.parity.commands.export import main

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 a few bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.jit if writer == "jit" else torch, "save", failing_save)
    out = tmp_path / "x.pt"
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_checkpoint), "--format", fmt, "--output", str(out),
                                       "--check-sizes", "65x65", "--no-progress"])
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [f"error: {out}: No space left on device"]
    assert _left_over(tmp_path) == []


def test_the_next_export_removes_what_a_killed_one_left(tiny_checkpoint, tmp_path):
    out = tmp_path / "x.pt"
    args = ["--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--output", str(out),
            "--check-sizes", "65x65"]
    proc = subprocess.Popen([command_path("deeplab-export"), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".x.pt.*.tmp")):  # the hidden temporary exists from the start of the write
        assert proc.poll() is None and time.monotonic() < deadline, "the export ended before its temporary appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    stale = [p.name for p in tmp_path.glob(".x.pt.*.tmp")]
    assert len(stale) == 1 and not out.exists()

    assert cli("deeplab-export", *args).returncode == 0
    assert _left_over(tmp_path) == ["x.pt"]


# ----------------------------------------------------------------------------- convert --dataset synthetic

#: deeplab-convert whose synthetic caffemodel write waits before its rename (the file is on disk,
#: not yet in place) so that a test can interrupt or kill it there once ``flag`` exists
STALLED_CAFFEMODEL = textwrap.dedent("""
    import os, sys, time
    flag = sys.argv.pop(1)
    fsync = os.fsync

    def stalled_fsync(fd):
        fsync(fd)
        if ".caffemodel." in os.readlink(f"/proc/self/fd/{fd}"):
            open(flag, "w").close()
            time.sleep(120)

    os.fsync = stalled_fsync
    from deeplab_caffe.converter.cli import main
    sys.argv[0] = "deeplab-convert"
    main()
""")


def _start_stalled_synthetic(cwd: Path, flag: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STALLED_CAFFEMODEL, str(flag), "--dataset", "synthetic",
                             "-o", "m.pth"], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"deeplab-convert did not reach its caffemodel write: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    return proc


@pytest.mark.slow
def test_synthetic_caffemodel_is_temporary_and_the_report_says_so(tmp_path):
    """177 MB written, converted and removed: the folder holds the checkpoint and its reports only,
    and the report names the caffemodel as temporary, with the sha256 its seed reproduces."""
    result = cli("deeplab-convert", "--dataset", "synthetic", "-o", "m.pth", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _left_over(tmp_path) == ["m.pth", "m.report.json", "m.report.md"]
    source = json.loads((tmp_path / "m.report.json").read_text())["source"]
    assert source["caffemodel"] == "deeplab_resnet101_msc.caffemodel" and source["caffemodel_bytes"] > 170_000_000
    assert "removed after the conversion; the same seed writes the same bytes" in source["note"]
    assert f"- note: {source['note']}" in (tmp_path / "m.report.md").read_text()
    assert models.read_checkpoint(tmp_path / "m.pth")[2]["source_sha256"] == source["caffemodel_sha256"]


@pytest.mark.slow
def test_ctrl_c_while_the_synthetic_caffemodel_is_written_leaves_nothing(tmp_path):
    proc = _start_stalled_synthetic(tmp_path, tmp_path / "writing")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["error: interrupted (Ctrl-C)"]
    assert _left_over(tmp_path) == ["writing"]  # no caffemodel (0-byte or whole), no folder, no checkpoint


@pytest.mark.slow
def test_kill_9_while_the_synthetic_caffemodel_is_written_is_cleaned_by_the_next_run(tiny_caffe, tmp_path):
    proc = _start_stalled_synthetic(tmp_path, tmp_path / "writing")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".m.pth.") and p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].is_dir() and not (tmp_path / "m.pth").exists()

    (tmp_path / "writing").unlink()
    assert _convert(tiny_caffe, tmp_path / "m.pth").returncode == 0
    assert _left_over(tmp_path) == ["m.pth", "m.report.json", "m.report.md"]
