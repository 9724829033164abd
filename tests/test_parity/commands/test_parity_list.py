"""``deeplab-parity list`` where it is printed: a pipe or a CI log gets one Markdown line per
row (never columns wrapped to the log's 80 characters); status words say what is missing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deeplab_caffe.parity.commands.parity import main
from deeplab_caffe.parity.suite.manifest import load_manifest


@pytest.fixture
def nothing_here(monkeypatch, tmp_path):
    """No dataset and no release weights: no DEEPLAB_* variables, an empty working folder."""
    for name in ("VOC12", "COCOSTUFF10K", "COCOSTUFF164K", "CITYSCAPES", "VOC12_TRAIN"):
        monkeypatch.delenv(f"DEEPLAB_DATA_{name}", raising=False)
        monkeypatch.delenv(f"DEEPLAB_WEIGHTS_{name}", raising=False)
    monkeypatch.delenv("DEEPLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def _rows(output: str) -> dict[str, list[str]]:
    cells = [line.strip("|").split(" | ") for line in output.splitlines() if line.startswith("| ")]
    return {c[0].strip(): [x.strip() for x in c] for c in cells[2:]}  # after the header and its rule


def test_list_piped_is_one_markdown_line_per_row(nothing_here):
    res = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["list"])
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    assert set(rows) == {row.name for row in load_manifest().rows}
    assert "| row | kind | tags | data | reported (%) | status | weights key | GPU h est. (eval/train) |" in res.output
    assert rows["smoke-shapes"] == ["smoke-shapes", "metric", "smoke", "shapes val", "mIoU 83.37 ±4", "ready",
                                    "smoke_shapes", "0 / 0"]
    assert len(res.output.splitlines()) == len(rows) + 7  # title, blank, header, rule, the rows, blank, suites, tags


def test_list_status_says_what_is_missing_and_what_is_blocked(nothing_here, tmp_path, monkeypatch):
    rows = _rows(CliRunner().invoke(main, ["list"]).output)
    assert rows["voc12-v2-msc-official"][5] == "no data, weights"
    assert rows["voc12-release-structural"][5] == "no weights"
    assert rows["cityscapes-v3-r101-dc5"][5] == "blocked"
    (tmp_path / "voc").mkdir()
    (tmp_path / "caffe").mkdir()
    (tmp_path / "caffe" / "train_iter_20000.caffemodel").write_bytes(b"")
    monkeypatch.setenv("DEEPLAB_DATA_VOC12", str(tmp_path / "voc"))
    monkeypatch.setenv("DEEPLAB_WEIGHTS_DIR", str(tmp_path / "caffe"))
    res = CliRunner().invoke(main, ["list"])
    assert _rows(res.output)["voc12-v2-msc-official"][5] == "ready"
    listed = json.loads(CliRunner().invoke(main, ["list", "--format", "json"]).output)["rows"]
    missing = {row["name"]: row["missing"] for row in listed}
    assert missing["voc12-v2-msc-official"] == [] and missing["cocostuff10k-v2-official"] == ["data", "weights"]
