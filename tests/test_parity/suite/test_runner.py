"""The suite end to end on tiny inputs: pass, regression beyond tolerance, not run, error; CLI and exit status."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.parity.commands.parity import main
from deeplab_caffe.parity.data.datasets import build_dataset
from deeplab_caffe.parity.evaluation.evaluate import evaluate
from deeplab_caffe.parity.suite.manifest import load_manifest
from deeplab_caffe.parity.suite.runner import RowResult, SuiteResult, run_suite

ROOT = Path(__file__).resolve().parents[3]
SHAPES = {"n_images": 6, "size": [64, 64], "n_classes": 4, "seed": 0}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small DeepLab v2 with seeded random weights, saved like any checkpoint."""
    torch.manual_seed(0)
    config = models.default_config(4, n_blocks=(1, 1, 1, 1), aspp_rates=(1, 2), stem_channels=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    models.save_checkpoint(path, models.build_model(config), config, {"note": "test"})
    return path


@pytest.fixture(scope="module")
def tiny_miou(tiny_checkpoint) -> float:
    """The mIoU (percent) the tiny model really gets on the 6 shapes images."""
    dataset = build_dataset("shapes", None, "val", **SHAPES)
    result = evaluate(models.load_checkpoint(tiny_checkpoint), dataset, device="cpu", progress=False)
    return 100 * result.scores["Mean IoU"]


def write_manifest(path: Path, rows: str) -> Path:
    path.write_text("version: 1\nsuites:\n  smoke: {tags: [t]}\n  all: {}\nrows:\n" + rows)
    return path


def metric_row(name: str, reported: float, *, dataset: str = "shapes", extra: str = "") -> str:
    return f"""
  - name: {name}
    kind: metric
    tags: [t]
    model: tiny
    dataset: {dataset}
    split: val
    weights: {{key: tiny}}
    options: {{dataset_kwargs: {json.dumps(SHAPES) if dataset == "shapes" else "{}"}, pad_to: null}}
    reported: {{mIoU: {reported:.4f}}}
    source: a test
    tolerance: 1.0
{extra}"""


@pytest.fixture
def manifest_file(tmp_path, tiny_miou) -> Path:
    """One row that passes, one regressed beyond tolerance, one without data, one blocked."""
    rows = (metric_row("tiny-pass", tiny_miou + 0.4) + metric_row("tiny-regressed", tiny_miou + 5.0)
            + metric_row("voc-missing", 76.35, dataset="voc12")
            + metric_row("voc-test-blocked", 75.8, dataset="voc12", extra="    blocked: test labels are withheld\n"))
    return write_manifest(tmp_path / "manifest.yaml", rows)


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No dataset on this 'machine': no env vars, no data/datasets under the working folder."""
    for name in ("VOC12", "COCOSTUFF10K", "COCOSTUFF164K", "CITYSCAPES"):
        monkeypatch.delenv(f"DEEPLAB_DATA_{name}", raising=False)
    monkeypatch.chdir(tmp_path)


def test_pass_regression_not_run_and_blocked(manifest_file, tiny_checkpoint, tiny_miou, tmp_path, no_data):
    rows = load_manifest(manifest_file).select(suite="smoke")
    result = run_suite(rows, weights={"tiny": tiny_checkpoint}, outdir=tmp_path / "out", device="cpu")
    status = {r.row.name: r for r in result.rows}
    assert {name: r.status for name, r in status.items()} == {
        "tiny-pass": "pass", "tiny-regressed": "fail", "voc-missing": "not_run", "voc-test-blocked": "blocked"}
    miou = next(m for m in status["tiny-pass"].metrics if m["metric"] == "mIoU")
    assert miou["reproduced"] == pytest.approx(tiny_miou) and miou["delta"] == pytest.approx(-0.4, abs=1e-3) and miou["ok"]
    assert "beyond ±1" in status["tiny-regressed"].reason
    assert status["voc-missing"].reason == "no data for voc12: pass --data-root voc12=PATH or set DEEPLAB_DATA_VOC12"
    assert status["voc-test-blocked"].reason == "blocked: test labels are withheld"
    assert status["tiny-pass"].class_names == ["background", "circle", "rectangle", "triangle"]
    assert len(status["tiny-pass"].class_iou) == 4
    assert result.weights[0]["sha256"] == status["tiny-pass"].weights[0]["sha256"]
    assert result.exit_status() == 1


def test_missing_data_is_never_a_pass(manifest_file, tiny_checkpoint, tmp_path, no_data):
    rows = load_manifest(manifest_file).select(rows=["tiny-pass", "voc-missing"])
    result = run_suite(rows, weights={"tiny": tiny_checkpoint}, outdir=tmp_path / "out", device="cpu")
    assert [r.status for r in result.rows] == ["pass", "not_run"]
    assert result.exit_status() == 2  # input missing
    assert result.exit_status(allow_not_run=True) == 0
    blocked_only = run_suite(load_manifest(manifest_file).select(rows=["tiny-pass", "voc-test-blocked"]),
                             weights={"tiny": tiny_checkpoint}, outdir=tmp_path / "out2", device="cpu")
    assert blocked_only.exit_status() == 0  # a blocked row can never run: not an input error


def test_missing_weights_say_how_to_give_them(manifest_file, tmp_path, no_data):
    result = run_suite(load_manifest(manifest_file).select(rows=["tiny-pass"]), outdir=tmp_path, device="cpu")
    assert result.rows[0].status == "not_run"
    assert result.rows[0].reason == "weights missing: pass --weights tiny=PATH (a .pth/.safetensors checkpoint)"


def test_data_root_given_but_absent(manifest_file, tiny_checkpoint, tmp_path, no_data):
    rows = load_manifest(manifest_file).select(rows=["voc-missing"])
    result = run_suite(rows, data_roots={"voc12": tmp_path / "nowhere"}, weights={"tiny": tiny_checkpoint},
                       outdir=tmp_path, device="cpu")
    assert result.rows[0].status == "not_run" and "not found" in result.rows[0].reason


def test_a_crashing_step_is_an_error_not_a_crash(manifest_file, tiny_checkpoint, tmp_path, monkeypatch, no_data):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("deeplab_caffe.parity.suite.runner.evaluate", boom)
    result = run_suite(load_manifest(manifest_file).select(rows=["tiny-pass"]), weights={"tiny": tiny_checkpoint},
                       outdir=tmp_path, device="cpu")
    row = result.rows[0]
    assert (row.status, row.reason) == ("error", "RuntimeError: boom")
    assert "boom" in row.traceback
    assert result.exit_status() == 1


def test_cli_run_writes_reports_and_junit_counts(manifest_file, tiny_checkpoint, tmp_path, no_data):
    out = tmp_path / "reports"
    runner = CliRunner()
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    res = CliRunner(env={"GITHUB_STEP_SUMMARY": str(summary)}).invoke(
        main, ["run", "--manifest", str(manifest_file), "--weights", f"tiny={tiny_checkpoint}",
               "--outdir", str(out), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 1, res.output
    # in GitHub Actions the Markdown report is appended to the job's summary page, chart link left out
    assert summary.read_text() == "earlier step\n" + (out / "parity.md").read_text().replace(
        "\n## Per-class IoU\n\n![per-class IoU](class_iou.png)\n", "") + "\n"
    assert sorted(p.name for p in out.iterdir()) == ["class_iou.png", "junit.xml", "parity.json", "parity.md"]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "0", "2")
    data = json.loads((out / "parity.json").read_text())
    assert data["exit_status"] == 1 and data["seed"] == 0 and data["environment"]["torch"] == torch.__version__
    assert data["weights"][0]["path"] == str(tiny_checkpoint)

    # the same run judged only on what could run, then compared with itself and with a worse copy
    again = runner.invoke(main, ["run", "--manifest", str(manifest_file), "--rows", "tiny-pass,voc-missing",
                                 "--weights", f"tiny={tiny_checkpoint}", "--outdir", str(tmp_path / "r2"),
                                 "--device", "cpu", "--no-progress", "--allow-not-run"])
    assert again.exit_code == 0, again.output
    fewer = runner.invoke(main, ["compare", str(out / "parity.json"), str(tmp_path / "r2" / "parity.json")])
    assert fewer.exit_code == 1 and "missing now" in fewer.output  # 2 of the 4 rows vanished: flagged, a failure
    same = tmp_path / "r2" / "parity.json"
    assert runner.invoke(main, ["compare", str(same), str(same)]).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--rows", "nope"], "no row named 'nope'"),
    (["--tag", "nope"], "unknown tag 'nope'"),
    (["--data-root", "voc12"], "--data-root expects NAME=PATH"),
    (["--data-root", "imagenet=/tmp"], "unknown dataset 'imagenet'"),
    (["--weights", "nothing=/tmp/x.pth"], "neither a row name nor a weights key"),
    (["--weights", "tiny=/does/not/exist.pth"], "file not found"),
    (["--reference", "/does/not/exist.npz"], "blob dump not found"),
    (["--device", "tpu"], "Invalid value for '--device'"),
])
def test_cli_usage_errors_exit_2_with_one_line(manifest_file, args, message):
    res = CliRunner().invoke(main, ["run", "--manifest", str(manifest_file), *args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_list_shows_rows_suites_and_tags():
    res = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["list"])
    assert res.exit_code == 0, res.output
    assert "smoke-shapes" in res.output and "voc12-v2-msc-official" in res.output and "suites: smoke" in res.output


def test_list_json_prints_every_row_with_source_protocol_and_status():
    res = CliRunner().invoke(main, ["list", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {row["name"]: row for row in json.loads(res.output)["rows"]}
    assert set(rows) == {row.name for row in load_manifest().rows}
    official = rows["cocostuff10k-v2-official"]
    assert official["status"] == "runnable" and official["published"]["repository"] == "nightrome/cocostuff"
    assert official["protocol"]["upsample"] == "caffe_interp" and official["protocol"]["mean_bgr"] == [104.0, 114.1, 120.1]
    assert rows["cityscapes-v3-r101-dc5"]["status"] == "blocked" and rows["cityscapes-v3-r101-dc5"]["blocked"]
    assert rows["smoke-forward"]["protocol"] is None and rows["smoke-forward"]["published"] is None


def test_list_markdown_writes_the_reported_numbers_page(tmp_path):
    from deeplab_caffe.parity.suite.reported_numbers import render_reported_numbers

    out = tmp_path / "page.md"
    res = CliRunner().invoke(main, ["list", "--format", "markdown", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == render_reported_numbers(load_manifest())
    bad = CliRunner().invoke(main, ["list", "--output", str(out)])
    assert bad.exit_code == 2 and "--output needs --format json or markdown" in bad.output


def test_a_run_of_blocked_rows_reports_them_blocked_and_exits_0(tmp_path, no_data):
    """VOC test labels are withheld and Detectron2 published no R101 weights: blocked, and the run passes."""
    blocked = "voc12-test-single-scale-tfport,voc12-test-msc-coco-crf-paper,cityscapes-v3-r101-dc5,cityscapes-v3plus-r101-dc5"
    res = CliRunner().invoke(main, ["run", "--rows", blocked, "--outdir", str(tmp_path / "out"), "--no-progress",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert data["summary"]["blocked"] == 4 == data["summary"]["total"]
    assert all(row["status"] == "blocked" and row["reason"].startswith("blocked: ") for row in data["rows"])


def test_a_metric_row_is_evaluated_with_its_protocol(tmp_path, tiny_checkpoint, no_data):
    """Caffe's Interp (pad 65 = 8*8 + 1) and COCO-Stuff's mean, as the row names them, reach the evaluation."""
    row = metric_row("tiny-caffe", 50.0).replace(
        "pad_to: null}", "pad_to: 65, upsample: caffe_interp, mean: coco}").replace("tolerance: 1.0", "tolerance: 60.0")
    rows = load_manifest(write_manifest(tmp_path / "m.yaml", row)).select(rows=["tiny-caffe"])
    result = run_suite(rows, weights={"tiny": tiny_checkpoint}, outdir=tmp_path / "out", device="cpu").rows[0]
    assert result.status == "pass", result.reason
    assert result.details["protocol"]["upsample"] == "caffe_interp" and result.details["protocol"]["pad_to"] == 65
    expected = evaluate(models.load_checkpoint(tiny_checkpoint), build_dataset("shapes", None, "val", **SHAPES),
                        device="cpu", pad_to=65, upsample="caffe_interp", mean_bgr=(104.0, 114.1, 120.1),
                        progress=False)
    miou = next(m for m in result.metrics if m["metric"] == "mIoU")
    assert miou["reproduced"] == pytest.approx(100 * expected.scores["Mean IoU"])


def test_eval_is_registered():
    assert "eval" in main.commands


def test_structural_row_on_a_fixture_and_on_a_broken_file(tmp_path):
    fixture = "{n_classes: 5, msc: true, seed: 1, n_blocks: [1, 1, 2, 1], stem_channels: 8, aspp_rates: [2, 4]}"
    manifest = write_manifest(tmp_path / "m.yaml", f"""
  - name: fixture-structural
    kind: structural
    tags: [t]
    model: tiny msc
    weights: {{key: fixture, fixture: {fixture}}}
  - name: broken-structural
    kind: structural
    tags: [t]
    model: tiny
    weights: {{key: broken, release: broken.caffemodel}}
""")
    (tmp_path / "broken.caffemodel").write_bytes(b"\x0a\x05hello\xff\xff")
    result = run_suite(load_manifest(manifest).rows, weights_dir=tmp_path, outdir=tmp_path / "out", device="cpu")
    ok, broken = result.rows
    assert ok.status == "pass", ok.reason
    assert ok.details["accounting"]["unaccounted"] == 0 and ok.details["checks"] == ok.details["checks_passed"] > 50
    assert ok.details["msc"] is True and ok.details["n_classes"] == 5
    # a corrupt release file is bad input (exit 2), not a failed port (1)
    assert broken.status == "error" and broken.bad_input and broken.reason.startswith("bad input: ")
    assert "broken.caffemodel" in broken.reason and "not a valid caffemodel" in broken.reason
    assert result.exit_status() == 2
    assert {w["what"].split(" (")[0] for w in result.weights} >= {"fixture caffemodel", "Caffe release file"}


def test_release_rows_without_the_file_are_not_run(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("DEEPLAB_WEIGHTS_VOC12_TRAIN", raising=False)
    rows = load_manifest().select(rows=["voc12-release-structural", "voc12-release-forward", "voc12-v2-msc-official"])
    result = run_suite(rows, outdir=tmp_path, device="cpu", weights_dir=tmp_path)
    assert [r.status for r in result.rows] == ["not_run", "not_run", "not_run"]
    assert "train_iter_20000.caffemodel not in" in result.rows[0].reason
    assert "--weights voc12_train=PATH" in result.rows[0].reason


def tiny_shapes_config(folder: Path, n_images: int, max_iter: int) -> Path:
    """``shapes.yaml`` at 32 x 32 with ``n_images`` images and ``max_iter`` updates of 4 images."""
    config = folder / "tiny_shapes.yaml"
    config.write_text(f"""_base_: {ROOT / 'parity' / 'train' / 'configs' / 'shapes.yaml'}
name: tiny_shapes
dataset:
  kwargs: {{n_images: {n_images}, size: [32, 32], n_classes: 4, seed: 0}}
solver:
  max_iter: {max_iter}
  batch_size: 4
log:
  tensorboard: false
  checkpoint_every: 0
""")
    return config


def test_retrain_trains_with_the_rows_recipe_then_evaluates(tmp_path):
    config = tiny_shapes_config(tmp_path, n_images=8, max_iter=3)
    manifest = write_manifest(tmp_path / "m.yaml", f"""
  - name: tiny-trained
    kind: metric
    tags: [t]
    model: tiny trained
    dataset: shapes
    split: val
    weights: {{key: tiny_trained, train_config: {config}, train_always: true, recipe_sha256: "{'0' * 64}"}}
    options: {{dataset_kwargs: {{n_images: 4, size: [32, 32], n_classes: 4, seed: 0}}, pad_to: null}}
    reported: {{mIoU: 50.0}}
    source: a test
    tolerance: 50.0
""")
    result = run_suite(load_manifest(manifest).rows, outdir=tmp_path / "out", device="cpu", seed=3)
    row = result.rows[0]
    assert row.status == "pass", (row.reason, row.traceback)
    assert row.details["training"]["iterations"] == 3
    assert row.details["recipe_changed"] is True  # the pin's fingerprint is not this recipe's
    assert (tmp_path / "out" / "train" / "tiny_shapes" / "model.pth").is_file()
    assert row.weights[-1]["what"] == "trained checkpoint"


def test_a_fixture_row_trains_from_its_converted_caffemodel(tmp_path):
    """smoke-shapes' init: the row's fixture (official topology, 91 classes, single classifier)
    is written, converted, and loaded as the recipe's init checkpoint (classifier re-initialised)."""
    config = tiny_shapes_config(tmp_path, n_images=4, max_iter=2)
    manifest = write_manifest(tmp_path / "m.yaml", f"""
  - name: tiny-init
    kind: metric
    tags: [t]
    model: tiny trained from a converted fixture
    dataset: shapes
    split: val
    weights:
      key: tiny_init
      train_config: {config}
      train_always: true
      fixture: {{n_classes: 91, n_blocks: [1, 1, 1, 1], stem_channels: 8, aspp_rates: null, seed: 0}}
    options: {{dataset_kwargs: {{n_images: 2, size: [32, 32], n_classes: 4, seed: 0}}, pad_to: null}}
    reported: {{mIoU: 50.0}}
    source: a test
    tolerance: 50.0
""")
    result = run_suite(load_manifest(manifest).rows, outdir=tmp_path / "out", device="cpu")
    row = result.rows[0]
    assert row.status in ("pass", "fail"), (row.reason, row.traceback)
    init = tmp_path / "out" / "train" / "tiny_init_init.pth"
    assert [w["what"] for w in row.weights][-2:] == ["training init checkpoint", "trained checkpoint"]
    meta = models.read_checkpoint(tmp_path / "out" / "train" / "tiny_shapes" / "model.pth")[2]
    assert meta["init_checkpoint"] == str(init)
    assert meta["init"]["loaded"] > 0 and all(k.startswith("classifier.") for k in meta["init"]["reinitialised"])


def test_exit_status_rules():
    from deeplab_caffe.parity.suite.manifest import Row, WeightsSpec

    def result(*statuses: str, blocked: bool = False) -> SuiteResult:
        row = Row(name="r", kind="metric", tags=(), model="m", weights=WeightsSpec(key="k"),
                  blocked="server" if blocked else None)
        return SuiteResult(suite="s", rows=[RowResult(row=row, status=s) for s in statuses], seed=0, device="cpu",
                           retrain=False, started="", duration_s=0.0, environment={}, git={}, weights=[])

    assert result("pass", "pass").exit_status() == 0
    assert result("pass", "fail").exit_status() == 1
    assert result("pass", "error", "not_run").exit_status() == 1
    assert result("pass", "not_run").exit_status() == 2
    assert result("pass", "not_run").exit_status(allow_not_run=True) == 0
    assert result("pass", "blocked", blocked=True).exit_status() == 0
    assert result("blocked", blocked=True).exit_status() == 0
    assert result().exit_status() == 2


def test_retrain_without_the_coco_init_is_not_run(tmp_path, no_data, monkeypatch):
    import cv2
    import numpy as np

    monkeypatch.delenv("DEEPLAB_WEIGHTS_COCO_INIT", raising=False)
    monkeypatch.delenv("DEEPLAB_WEIGHTS_DIR", raising=False)
    voc = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/SegmentationAug"):
        (voc / folder).mkdir(parents=True)
    cv2.imwrite(str(voc / "JPEGImages" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(voc / "SegmentationClassAug" / "a.png"), np.zeros((8, 8), np.uint8))
    (voc / "ImageSets" / "SegmentationAug" / "val.txt").write_text("a\n")
    rows = load_manifest().select(rows=["voc12-v2-msc-port", "voc12-released-single-scale-tfport"])
    result = run_suite(rows, data_roots={"voc12": voc}, outdir=tmp_path / "out", device="cpu", retrain=True)
    port, released = result.rows
    assert port.status == "not_run" and "--weights coco_init=PATH" in port.reason
    assert released.status == "not_run" and "no training recipe" in released.reason


def test_cli_rejects_a_malformed_blob_dump_before_running(manifest_file, tmp_path):
    import numpy as np

    np.savez(tmp_path / "dump.npz", conv1=np.zeros((1, 2, 2, 2)))
    res = CliRunner().invoke(main, ["run", "--manifest", str(manifest_file), "--reference", str(tmp_path / "dump.npz")])
    assert res.exit_code == 2
    assert "no 'data' blob" in res.output
