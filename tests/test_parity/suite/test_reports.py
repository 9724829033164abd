"""Reports: JSON, Markdown, JUnit XML, the per-class IoU chart, and comparing two runs."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from deeplab_caffe.parity.commands.parity import main
from deeplab_caffe.parity.suite.manifest import Row, WeightsSpec
from deeplab_caffe.parity.suite.charts import class_iou_png
from deeplab_caffe.parity.suite.reports import (ReportError, compare_reports, git_info, load_report,
                                  render_comparison, render_junit, render_markdown, write_reports,
                                  write_text_atomic)
from deeplab_caffe.parity.suite.runner import RowResult, SuiteResult


def metric_row(name: str, reported: float, tolerance: float = 1.0, dataset: str = "shapes") -> Row:
    return Row(name=name, kind="metric", tags=("t",), model="tiny", weights=WeightsSpec(key="tiny"), dataset=dataset,
               split="val", reported={"mIoU": reported}, source="a paper", tolerance=tolerance)


def metric_result(row: Row, reproduced: float | None, status: str, reason: str = "") -> RowResult:
    reported = row.reported["mIoU"]
    delta = None if reproduced is None else reproduced - reported
    metrics = [] if reproduced is None else [
        {"metric": "mIoU", "reported": reported, "reproduced": reproduced, "delta": delta,
         "tolerance": row.tolerance, "ok": abs(delta) <= row.tolerance},
        {"metric": "PA", "reported": None, "reproduced": 90.0, "delta": None, "tolerance": row.tolerance, "ok": None}]
    iou = None if reproduced is None else [0.9, reproduced / 100, None, 0.1]
    return RowResult(row=row, status=status, reason=reason, metrics=metrics, class_iou=iou,
                     class_names=["background", "circle", "rectangle", "triangle"] if iou else None, duration_s=1.5)


def run_data() -> dict:
    """A run with one passing row, one regressed beyond tolerance, one not run for missing data."""
    passing = metric_row("tiny-pass", 67.8, tolerance=5.0)
    regressed = metric_row("tiny-regressed", 76.35)
    missing = metric_row("voc-missing", 76.35, dataset="voc12")
    rows = [
        metric_result(passing, 66.1, "pass"),
        metric_result(regressed, 70.0, "fail", "mIoU 70.00 vs reported 76.35 (-6.35, beyond ±1)"),
        metric_result(missing, None, "not_run", "no data for voc12: pass --data-root voc12=PATH or set DEEPLAB_DATA_VOC12"),
    ]
    result = SuiteResult(suite="test", rows=rows, seed=0, device="cpu", retrain=False, started="2026-01-01T00:00:00+00:00",
                         duration_s=3.0, environment={"python": "3.11", "torch": "2.13", "numpy": "2", "opencv": "4.14",
                                                      "platform": "linux", "cpu_count": 2, "device": "cpu"},
                         git={"commit": "abc123"},
                         weights=[{"path": "/w/tiny.pth", "what": "given weights", "bytes": 10, "sha256": "f" * 64}])
    return result.to_dict()


def test_junit_counts_pass_failure_and_skip():
    root = ET.fromstring(render_junit(run_data()))
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "0", "1")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == {"tiny-pass", "tiny-regressed", "voc-missing"}
    assert cases["tiny-pass"].find("failure") is None and cases["tiny-pass"].find("skipped") is None
    assert "beyond ±1" in cases["tiny-regressed"].find("failure").get("message")
    assert "--data-root voc12" in cases["voc-missing"].find("skipped").get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["commit"] == "abc123" and props["seed"] == "0" and props["sha256.tiny.pth"] == "f" * 64
    assert props["env.torch"] == "2.13"


def test_markdown_tabulates_reported_vs_reproduced_with_deltas_and_marks():
    text = render_markdown(run_data(), chart="class_iou.png")
    assert "**1 passed, 1 failed, 0 errors, 1 not run, 0 blocked** of 3 rows; exit status 1." in text
    assert "| `tiny-pass` | mIoU | 67.80 | 66.10 | -1.70 | ±5.0 | ✅ | a paper |" in text
    assert "| `tiny-regressed` | mIoU | 76.35 | 70.00 | -6.35 | ±1.0 | ❌ | a paper |" in text
    assert "| `voc-missing` | metric | ⏭️ not run | no data for voc12" in text
    assert "![per-class IoU](class_iou.png)" in text
    assert "`abc123`" in text and "f" * 64 in text


def _classes(n: int) -> dict:
    """A passing metric row with ``n`` classes (one absent from the data)."""
    iou = [((7 * i) % 100) / 100 for i in range(n)]
    iou[n // 2] = None
    return {"name": f"r{n}", "kind": "metric", "status": "pass", "dataset": "d", "split": "val",
            "metrics": [{"metric": "mIoU", "reported": 50.0, "reproduced": 49.0, "tolerance": 1.0}],
            "class_iou": iou, "class_names": [f"class {i}" for i in range(n)]}


def _png_size(png: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return image.shape[1], image.shape[0]


@pytest.mark.parametrize("n, size", [
    (4, (540, 240)),      # one panel: 4.4 in + 1 in wide; (4 x 0.2 in + 1.6 in) high; 100 dpi
    (21, (540, 580)),     # one panel of 21
    (182, (1860, 1080)),  # COCO-Stuff: four panels side by side (46, 46, 46, 44 classes)
])
def test_class_iou_chart_splits_many_classes_over_panels(n, size):
    assert _png_size(class_iou_png({"rows": [_classes(n)]})) == size


def test_class_iou_chart_stacks_measured_rows_and_skips_the_rest():
    assert _png_size(class_iou_png(run_data())) == (540, 480)  # two rows of 4 classes; the not-run row has none
    assert _png_size(class_iou_png({"rows": [_classes(4), _classes(182)]})) == (1860, 240 + 1080)
    assert class_iou_png({"rows": run_data()["rows"][2:]}) is None


def test_class_iou_chart_draws_reproduced_and_reported_in_their_own_colours():
    image = cv2.imdecode(np.frombuffer(class_iou_png({"rows": [_classes(21)]}), np.uint8), cv2.IMREAD_COLOR)
    reproduced = (image == (0x56, 0x57, 0xE4)).all(axis=2)  # BGR of the reproduced line's #e45756
    reported = (image == (0x22, 0x22, 0x22)).all(axis=2)    # the reported dashed line's #222222
    assert reproduced.sum() > 100 and reported.sum() > 100


def test_history_chart_of_a_series_of_reports(tmp_path):
    paths = []
    for i, miou in enumerate([66.1, 66.3, 40.0]):
        data = run_data()
        data["git"] = {"commit": f"{i}" * 40}
        data["rows"][0]["metrics"][0]["reproduced"] = miou
        paths.append(tmp_path / f"r{i}" / "parity.json")
        write_reports(data, paths[-1].parent)
    out = tmp_path / "history.png"
    res = CliRunner().invoke(main, ["history", *map(str, paths), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{out}: 3 reports, 0000000 .. 2222222" in res.output
    assert _png_size(out.read_bytes()) == (600, 400)  # 6 in wide (the minimum), one panel: no forward rows
    again = CliRunner().invoke(main, ["history", *map(str, paths), "--output", str(out)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert CliRunner().invoke(main, ["history", *map(str, paths), "--output", str(out), "--force"]).exit_code == 0
    (tmp_path / "bad.json").write_text("{}")
    bad = CliRunner().invoke(main, ["history", str(paths[0]), str(tmp_path / "bad.json"), "--output",
                                    str(tmp_path / "h2.png")])
    assert bad.exit_code == 2 and not (tmp_path / "h2.png").exists()


def test_write_reports_writes_every_file_atomically(tmp_path):
    written = write_reports(run_data(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_iou.png", "junit.xml", "parity.json", "parity.md"]
    assert set(written) == {"json", "markdown", "junit", "chart"}
    assert load_report(tmp_path / "parity.json")["summary"] == {"pass": 1, "fail": 1, "error": 0, "not_run": 1, "blocked": 0,
                                                                  "total": 3}
    assert (tmp_path / "class_iou.png").read_bytes() == class_iou_png(run_data())
    ET.parse(tmp_path / "junit.xml")


def test_json_is_strict_even_with_nan(tmp_path):
    data = run_data()
    data["rows"][0]["details"] = {"max_rel": float("nan")}
    write_reports(data, tmp_path)
    assert json.loads((tmp_path / "parity.json").read_text())["rows"][0]["details"]["max_rel"] is None


def test_compare_flags_an_injected_regression():
    old = run_data()
    new = copy.deepcopy(old)
    new["rows"][0]["metrics"][0]["reproduced"] -= 6.0  # tiny-pass: 66.1 -> 60.1, beyond its 5-point tolerance
    comparison = compare_reports(old, new)
    assert [(r["row"], r["metric"]) for r in comparison["regressions"]] == [("tiny-pass", "mIoU")]
    assert "66.10 -> 60.10" in comparison["regressions"][0]["what"]
    assert compare_reports(old, old)["regressions"] == []
    assert compare_reports(old, new, max_drop=10.0)["regressions"] == []
    assert "Regressions (1)" in render_comparison(comparison, "old.json", "new.json")


def test_compare_flags_a_status_regression_and_lost_rows():
    old = run_data()
    new = copy.deepcopy(old)
    new["rows"][0]["status"], new["rows"][0]["reason"] = "error", "RuntimeError: boom"
    new["rows"] = new["rows"][:1]
    comparison = compare_reports(old, new)
    assert comparison["regressions"][0]["what"] == "status pass -> error: RuntimeError: boom"
    assert {r["row"] for r in comparison["missing"]} == {"tiny-regressed", "voc-missing"}


def test_compare_command_exit_status(tmp_path):
    old = run_data()
    new = copy.deepcopy(old)
    new["rows"][0]["metrics"][0]["reproduced"] = 50.0
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    runner = CliRunner()
    same = runner.invoke(main, ["compare", str(tmp_path / "old.json"), str(tmp_path / "old.json")])
    assert same.exit_code == 0, same.output
    worse = runner.invoke(main, ["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                                 "--output", str(tmp_path / "cmp.md")])
    assert worse.exit_code == 1
    assert "tiny-pass" in worse.output and "regression" in worse.output
    assert "66.10 -> 50.00" in (tmp_path / "cmp.md").read_text()
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(main, ["compare", str(tmp_path / "bad.json"), str(tmp_path / "old.json")])
    assert bad.exit_code == 2


def test_load_report_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(ReportError, match="not a deeplab-parity report"):
        load_report(tmp_path / "x.json")
    with pytest.raises(ReportError, match="cannot read"):
        load_report(tmp_path / "missing.json")


def test_git_commit_is_read_from_the_git_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "1" * 40 + " refs/heads/main\n")
    (tmp_path / "repo" / "pkg").mkdir()
    assert git_info(tmp_path / "repo" / "pkg")["commit"] == "1" * 40
    (git / "refs" / "heads" / "main").write_text("2" * 40 + "\n")
    assert git_info(tmp_path / "repo")["commit"] == "2" * 40
    monkeypatch.setenv("GITHUB_SHA", "3" * 40)
    assert git_info(tmp_path / "repo")["commit"] == "3" * 40
    monkeypatch.delenv("GITHUB_SHA")
    assert git_info(tmp_path)["commit"] is None  # no .git above a pytest tmp folder


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]
