"""The parity manifest: every reported number as data, validated, selectable by suite, name and tag."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deeplab_caffe.parity.data.datasets import DATASETS
from deeplab_caffe.parity.suite.manifest import MANIFEST_PATH, METRICS, ManifestError, load_manifest
from deeplab_caffe.parity.train.config import available_configs

# docs/caffe-format.md, "Reported numbers": (row, metric, value)
REPORTED = [
    ("cocostuff164k-v2-msc-port", {"PA": 66.8, "MA": 51.2, "mIoU": 39.1, "FWIoU": 51.5}),
    ("cocostuff164k-v2-msc-crf-port", {"PA": 67.6, "MA": 51.5, "mIoU": 39.7, "FWIoU": 52.3}),
    ("cocostuff10k-v2-official", {"PA": 65.1, "MA": 45.5, "mIoU": 34.4, "FWIoU": 50.4}),
    ("cocostuff10k-v2-port", {"PA": 65.8, "MA": 45.7, "mIoU": 34.8, "FWIoU": 51.2}),
    ("cocostuff10k-v2-port-b", {"PA": 64.7, "MA": 45.4, "mIoU": 33.9, "FWIoU": 50.0}),
    ("cocostuff10k-v2-crf-port", {"PA": 67.1, "MA": 46.4, "mIoU": 35.6, "FWIoU": 52.5}),
    ("voc12-v2-msc-official", {"mIoU": 76.35}),
    ("voc12-v2-msc-crf-official", {"mIoU": 77.69}),
    ("voc12-v2-msc-port", {"PA": 94.64, "MA": 86.50, "mIoU": 76.65, "FWIoU": 90.41}),
    ("voc12-v2-msc-crf-port", {"PA": 95.04, "MA": 86.64, "mIoU": 77.93, "FWIoU": 91.06}),
    ("voc12-released-single-scale-tfport", {"mIoU": 86.9}),
    ("voc12-test-single-scale-tfport", {"mIoU": 75.8}),
    ("voc12-test-msc-coco-crf-paper", {"mIoU": 79.7}),
    ("voc12-v3-mg124-paper", {"mIoU": 77.21}),
    ("voc12-v3-mg111-port", {"mIoU": 76.49}),
    ("voc12-v3-gnws-port", {"mIoU": 77.20}),
    ("cityscapes-v3-r101-dc5", {"mIoU": 76.7}),
    ("cityscapes-v3-r103-dc5", {"mIoU": 78.5}),
    ("cityscapes-v3plus-r101-dc5", {"mIoU": 78.1}),
    ("cityscapes-v3plus-r103-dc5", {"mIoU": 80.0}),
]


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.mark.parametrize("name, reported", REPORTED, ids=[name for name, _ in REPORTED])
def test_every_reported_number_is_a_row(manifest, name, reported):
    row = manifest.row(name)
    assert row.kind == "metric"
    assert row.reported == reported
    assert row.source and row.tolerance == 1.0
    assert row.dataset in DATASETS


def test_every_metric_row_is_a_reported_number_or_the_smoke_pin(manifest):
    metric_rows = {r.name for r in manifest.rows if r.kind == "metric"}
    assert metric_rows == {name for name, _ in REPORTED} | {"smoke-shapes"}


def test_smoke_suite_is_the_embedded_default(manifest):
    rows = manifest.select()
    assert [(r.name, r.kind) for r in rows] == [
        ("smoke-structural", "structural"), ("smoke-forward", "forward"), ("smoke-shapes", "metric")]
    fixture = rows[0].weights.fixture
    assert fixture["msc"] is True and fixture["n_classes"] == 21 and "n_blocks" not in fixture  # ResNet-101
    shapes = rows[2]
    assert shapes.weights.train_config == "shapes" and shapes.weights.train_always
    assert shapes.reported["mIoU"] > 0 and shapes.tolerance > 0


def test_training_recipes_and_datasets_exist(manifest):
    configs = set(available_configs())
    for row in manifest.rows:
        if row.weights.train_config:
            assert row.weights.train_config in configs, row.name
        if row.dataset:
            assert row.dataset in DATASETS, row.name


def test_rows_that_can_never_run_here_say_why(manifest):
    blocked = {r.name: r.blocked for r in manifest.rows if r.blocked}
    assert set(blocked) == {"voc12-test-single-scale-tfport", "voc12-test-msc-coco-crf-paper", "voc12-v3-gnws-port",
                            "cityscapes-v3-r103-dc5", "cityscapes-v3plus-r103-dc5"}
    assert "evaluation server" in blocked["voc12-test-single-scale-tfport"]


def test_release_rows_name_the_official_files(manifest):
    releases = {r.weights.key: r.weights.release for r in manifest.rows if r.weights.release}
    assert releases == {"coco_init": "init.caffemodel", "voc12_train": "train_iter_20000.caffemodel",
                        "voc12_trainval": "train2_iter_20000.caffemodel"}
    assert manifest.row("coco-init-structural").weights.n_classes == 91


def test_selection_by_suite_rows_and_tags(manifest):
    assert len(manifest.select(suite="all")) == len(manifest.rows)
    assert {r.name for r in manifest.select(suite="voc12", tags=["crf"])} == {
        "voc12-v2-msc-crf-official", "voc12-v2-msc-crf-port", "voc12-test-msc-coco-crf-paper"}
    assert [r.name for r in manifest.select(rows=["voc12-v2-msc-port", "smoke-forward"])] == [
        "smoke-forward", "voc12-v2-msc-port"]  # manifest order
    assert all("release" in r.tags for r in manifest.select(suite="release"))
    assert [r.name for r in manifest.select(suite="smoke-shapes")] == ["smoke-shapes"]  # a row name as a suite
    assert {r.name for r in manifest.select(tags=["cocostuff10k", "crf"])} == {"cocostuff10k-v2-crf-port"}
    with pytest.raises(ManifestError, match="no row named 'nope'"):
        manifest.select(rows=["nope"])
    with pytest.raises(ManifestError, match="unknown suite 'nope'"):
        manifest.select(suite="nope")
    with pytest.raises(ManifestError, match="unknown tag 'nope'"):
        manifest.select(tags=["nope"])


def test_cost_estimates_are_given_for_every_metric_row(manifest):
    for row in manifest.rows:
        if row.kind == "metric" and row.name != "smoke-shapes":
            assert row.cost_gpu_hours.get("eval", 0) > 0, row.name


def _good() -> dict:
    return yaml.safe_load(MANIFEST_PATH.read_text())


def _broken(tmp_path: Path, change) -> Path:
    data = _good()
    change(data)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _row(data: dict, name: str) -> dict:
    return next(r for r in data["rows"] if r["name"] == name)


@pytest.mark.parametrize("change, message", [
    (lambda d: _row(d, "voc12-v2-msc-port").update(tolerance=-1), "row 'voc12-v2-msc-port': key 'tolerance' must be a positive"),
    (lambda d: _row(d, "voc12-v2-msc-port")["reported"].update(mAP=3), "row 'voc12-v2-msc-port': key 'reported.mAP' is not a known"),
    (lambda d: _row(d, "voc12-v2-msc-port")["reported"].update(mIoU=176.0), "key 'reported.mIoU' must be a percentage"),
    (lambda d: _row(d, "voc12-v2-msc-port").pop("source"), "row 'voc12-v2-msc-port': key 'source' is required"),
    (lambda d: _row(d, "voc12-v2-msc-port").pop("dataset"), "key 'dataset' is required for a metric row"),
    (lambda d: _row(d, "voc12-v2-msc-port")["options"].update(sclaes=[1.0]), "key 'options.sclaes' is not an option"),
    (lambda d: _row(d, "voc12-v2-msc-port")["options"].update(crf="yes"), "key 'options.crf' must be bool"),
    (lambda d: _row(d, "smoke-forward")["options"].update(crf=True), "row 'smoke-forward': key 'options.crf' is not an option of a forward row"),
    (lambda d: _row(d, "smoke-forward").update(kind="speed"), "row 'smoke-forward': key 'kind' must be one of"),
    (lambda d: _row(d, "smoke-forward").update(colour="red"), "row 'smoke-forward': key 'colour' is unknown"),
    (lambda d: _row(d, "smoke-forward")["weights"].pop("key"), "row 'smoke-forward': key 'weights.key' must be"),
    (lambda d: _row(d, "smoke-forward")["weights"].pop("fixture"), "row 'smoke-forward': key 'weights' of a forward row needs"),
    (lambda d: _row(d, "smoke-shapes")["weights"].pop("train_config"), "key 'weights.train_always' needs weights.train_config"),
    (lambda d: _row(d, "smoke-forward").update(name="Smoke Forward"), "key 'name' must be lowercase"),
    (lambda d: d["rows"].append(dict(_row(d, "smoke-forward"))), "row 'smoke-forward': key 'name' is used twice"),
    (lambda d: _row(d, "voc12-v2-msc-port")["weights"].update(key="voc12_train"), "key 'weights.key' 'voc12_train' names other weights"),
    (lambda d: d["suites"]["smoke"].update(tags=["nosuchtag"]), "suite 'smoke': key 'tags' names 'nosuchtag'"),
    (lambda d: d.update(version=2), "key 'version' must be 1"),
])
def test_malformed_manifest_names_row_and_key(tmp_path, change, message):
    path = _broken(tmp_path, change)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rows: [\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "bad.yaml")


def test_metric_names_match_the_evaluation_scores():
    from deeplab_caffe.parity.evaluation.metrics import SCORE_KEYS

    assert set(METRICS.values()) <= set(SCORE_KEYS)


def test_ci_doc_prices_every_row_and_its_workflow_parses(manifest):
    import re

    text = (Path(__file__).resolve().parents[3] / "docs" / "ci.md").read_text()
    wildcards = re.findall(r"`([a-z0-9-]+)-\*`", text)
    for row in manifest.rows:
        assert f"`{row.name}`" in text or any(row.name.startswith(prefix + "-") for prefix in wildcards), row.name
    workflow = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    jobs = yaml.safe_load(workflow)["jobs"]
    assert "deeplab-parity run --outdir out/ci" in " ".join(step.get("run", "") for step in jobs["smoke"]["steps"])


def test_smoke_shapes_row_evaluates_what_the_shapes_recipe_evaluates(manifest):
    from deeplab_caffe.parity.train.config import load_config

    row = manifest.row("smoke-shapes")
    recipe = load_config(row.weights.train_config)
    assert row.dataset == recipe["dataset"]["name"] and row.split == recipe["eval"]["split"]
    assert row.options["dataset_kwargs"] == recipe["eval"]["kwargs"]
    assert row.options.get("pad_to") == recipe["eval"]["pad_to"]
    assert row.options.get("scales", [1.0]) == recipe["eval"]["scales"]


def test_smoke_pin_belongs_to_the_current_shapes_recipe(manifest):
    from deeplab_caffe.parity.suite.runner import recipe_fingerprint
    from deeplab_caffe.parity.train.config import load_config

    row = manifest.row("smoke-shapes")
    current = recipe_fingerprint(load_config(row.weights.train_config))
    assert current == row.weights.recipe_sha256, (
        f"parity/train/configs/{row.weights.train_config}.yaml changed: run `deeplab-parity run --rows smoke-shapes`, then "
        f"set smoke-shapes reported.mIoU to the reproduced value and weights.recipe_sha256 to {current}")
