"""deeplab-parity against a hostile user: malformed and shrinking reports, corrupt weights, malicious pickles."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from hostile import assert_one_error, cli, command_path

SCHEMA = "deeplab-parity/1"


def _row(name: str, status: str = "pass", **extra) -> dict:
    return {"name": name, "kind": "structural", "status": status, **extra}


def _report(path, rows: list) -> str:
    path.write_text(json.dumps({"schema": SCHEMA, "rows": rows}))
    return str(path)


@pytest.mark.parametrize("row, problem", [
    ({"name": "a", "kind": "structural"}, "rows[0] (a) has no 'status' str field"),
    ({"kind": "structural", "status": "pass"}, "rows[0] (unnamed) has no 'name' str field"),
    ({"name": "a", "kind": "structural", "status": "passed"}, "status 'passed' is not one of pass, fail, error, not_run"),
    ({"name": "a", "kind": "metric", "status": "pass", "metrics": [{"metric": "mIoU", "reproduced": "76%"}]},
     "'metrics' must be a list"),
    ({"name": "a", "kind": "forward", "status": "pass", "details": {"max_rel": "small"}}, "'details' must be"),
    ("a", "rows[0] is a str, not an object"),
])
def test_report_row_without_usable_fields_is_bad_input(tmp_path, row, problem):
    good = _report(tmp_path / "good.json", [_row("a")])
    bad = _report(tmp_path / "bad.json", [row])
    assert_one_error(cli("deeplab-parity", "compare", good, bad), 2, "bad.json", problem)
    assert_one_error(cli("deeplab-parity", "compare", bad, good), 2, "bad.json", problem)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": "other/1", "rows": []}), "not a deeplab-parity report"),
    (json.dumps({"schema": SCHEMA, "rows": [_row("a"), _row("a")]}), "row 'a' appears twice"),
])
def test_malformed_report_is_bad_input(tmp_path, text, problem):
    (tmp_path / "bad.json").write_text(text)
    good = _report(tmp_path / "good.json", [_row("a")])
    assert_one_error(cli("deeplab-parity", "compare", good, str(tmp_path / "bad.json")), 2, problem)


def test_missing_report_file_is_bad_input(tmp_path):
    good = _report(tmp_path / "good.json", [_row("a")])
    assert_one_error(cli("deeplab-parity", "compare", good, str(tmp_path / "nope.json")), 2,
                     "nope.json: cannot read (No such file or directory)")


def test_rows_missing_from_the_new_report_are_flagged_and_fail(tmp_path):
    old = _report(tmp_path / "old.json", [_row("a"), _row("b", "not_run")])
    new = _report(tmp_path / "new.json", [_row("a")])
    result = cli("deeplab-parity", "compare", old, new, "--output", str(tmp_path / "cmp.md"))
    assert result.returncode == 1, result.stderr
    assert "missing now" in result.stdout and "1 row(s) missing from the new run" in result.stdout
    assert "- `b`: in the old run (not_run), missing from the new" in (tmp_path / "cmp.md").read_text()
    # the other way round a row only gained is no failure
    assert cli("deeplab-parity", "compare", new, old).returncode == 0


def test_compare_output_on_a_read_only_disk_is_an_environment_error(tmp_path, run_on_tmpfs):
    old = _report(tmp_path / "old.json", [_row("a")])
    disk = tmp_path / "ro"
    result, left = run_on_tmpfs([command_path("deeplab-parity"), "compare", old, old, "--output", str(disk / "c.md")],
                                size="1m", mount_dir=disk, read_only=True)
    assert_one_error(result, 3, str(disk / "c.md"), "Read-only file system")
    assert left == []


def test_corrupt_release_caffemodel_in_a_run_is_bad_input_not_a_failed_port(tmp_path):
    (tmp_path / "broken.caffemodel").write_bytes(b"\x0a\x05hello\xff\xff")
    (tmp_path / "m.yaml").write_text(
        "version: 1\nsuites:\n  smoke: {tags: [t]}\nrows:\n"
        "  - name: broken-structural\n    kind: structural\n    tags: [t]\n    model: tiny\n"
        "    weights: {key: broken, release: broken.caffemodel}\n")
    result = cli("deeplab-parity", "run", "--manifest", str(tmp_path / "m.yaml"), "--rows", "broken-structural",
                 "--weights-dir", str(tmp_path), "--outdir", str(tmp_path / "out"), "--device", "cpu", "--no-progress")
    assert result.returncode == 2, result.stderr
    row = json.loads((tmp_path / "out" / "parity.json").read_text())["rows"][0]
    assert row["status"] == "error" and row["bad_input"] is True
    assert row["reason"].startswith("bad input: ") and "broken.caffemodel: not a valid caffemodel" in row["reason"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_checkpoint_is_refused_in_one_line_without_torch_advice(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": _RunsCode(), "metadata": {}}, evil)
    line = assert_one_error(cli("deeplab-parity", "eval", "--checkpoint", str(evil), "--dataset", "shapes"), 2,
                            str(evil), "refused: the pickle would import code", "posix.system")
    assert "weights_only" not in line and "pwned" not in line


def test_raw_pickle_is_not_a_checkpoint(tmp_path):
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    line = assert_one_error(cli("deeplab-parity", "eval", "--checkpoint", str(raw), "--dataset", "shapes"), 2,
                            str(raw), "not a readable PyTorch checkpoint")
    assert "weights_only" not in line
