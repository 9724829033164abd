"""The parity manifest: every reported number as data, validated, selectable by suite, name and tag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deeplab_caffe.parity.data.datasets import DATASETS
from deeplab_caffe.parity.suite.manifest import MANIFEST_PATH, METRICS, PROTOCOL_KEYS, ManifestError, load_manifest
from deeplab_caffe.parity.train.config import available_configs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


def _published(manifest) -> list:
    return [r for r in manifest.rows if r.kind == "metric" and {"official", "port"} & set(r.tags)]


def test_every_published_row_names_its_source_precisely(manifest):
    rows = _published(manifest)
    assert len(rows) >= 15
    for row in rows:
        pub = row.published
        assert pub is not None, row.name
        assert pub.by in row.tags and pub.table and pub.row, row.name
        if pub.repository:
            assert re.fullmatch(r"[0-9a-f]{40}", pub.commit) and pub.file, row.name
            date, commit = pub.appeared.split()
            assert re.fullmatch(r"20[12]\d-[01]\d-[0-3]\d", date) and re.fullmatch(r"\([0-9a-f]{7}\)", commit), row.name
            assert pub.url == f"https://github.com/{pub.repository}/blob/{pub.commit}/{pub.file}"
        else:
            assert re.fullmatch(r"\d{4}\.\d{5}", pub.arxiv), row.name
        assert row.source == pub.citation()


def test_every_reported_figure_is_a_percentage_the_source_quotes(manifest):
    for row in _published(manifest):
        assert row.reported and all(0 < v < 100 for v in row.reported.values()), row.name
        assert set(row.published.columns) == set(row.reported), row.name
        assert row.published.figures() == row.reported, row.name  # read from the quote, not a second copy
        assert row.tolerance == 1.0 and row.dataset in DATASETS, row.name


def test_every_metric_row_is_published_or_the_smoke_pin(manifest):
    unpublished = {r.name for r in manifest.rows if r.kind == "metric" and r.published is None}
    assert unpublished == {"smoke-shapes"}


def test_the_superseded_port_row_is_gone(manifest):
    """64.7/45.4/33.9/50.0 stood in the port's README only from 2018-03-25 to 2018-07-20."""
    assert "cocostuff10k-v2-port-b" not in {r.name for r in manifest.rows}
    assert [r.name for r in manifest.rows if r.reported.get("mIoU") == 33.9] == []


def test_protocols_name_known_values(manifest):
    from deeplab_caffe.parity.data.transforms import MEANS_BGR
    from deeplab_caffe.parity.evaluation.evaluate import UPSAMPLING

    for row in manifest.rows:
        protocol = row.protocol()
        if row.kind != "metric":
            assert protocol is None
            continue
        assert protocol["upsample"] in UPSAMPLING and protocol["mean"] in MEANS_BGR, row.name
        assert protocol["mean_bgr"] == list(MEANS_BGR[protocol["mean"]])
        if row.published is not None and not row.blocked:
            assert set(PROTOCOL_KEYS) <= set(row.options), row.name


def test_official_rows_use_the_caffe_test_net_and_ports_their_own(manifest):
    """DeepLab's test nets: Interp zoom 8 (corners aligned) after a 513 crop, the dataset's mean
    (COCO-Stuff prototxts 104.0/114.1/120.1, VOC's 104.008/116.669/122.675)."""
    for row in _published(manifest):
        if row.blocked:
            continue
        protocol = row.protocol()
        if row.published.by == "official":
            assert protocol["upsample"] == "caffe_interp" and protocol["pad_to"] == 513, row.name
            assert protocol["mean"] == ("coco" if row.dataset.startswith("cocostuff") else "voc"), row.name
        else:
            assert protocol["upsample"] != "caffe_interp", row.name
    assert manifest.row("cocostuff10k-v2-official").protocol()["mean_bgr"] == [104.0, 114.1, 120.1]
    assert manifest.row("voc12-v2-msc-port").protocol()["upsample"] == "align_corners_false"
    assert manifest.row("voc12-released-single-scale-tfport").protocol()["upsample"] == "tf1_resize_bilinear"


def test_rows_that_cannot_run_are_blocked_and_foreign_rows_have_an_importer(manifest):
    """VOC test labels are withheld; the v3 / Cityscapes rows run only from another port's
    checkpoint, so each runnable one needs that port's importer (converter.foreign.FORMATS)."""
    from deeplab_caffe.converter.foreign import FORMATS

    importer = {"chenxi116/DeepLabv3.pytorch": "deeplabv3-pytorch", "facebookresearch/detectron2": "detectron2"}
    for row in manifest.rows:
        if row.split == "test" and row.dataset == "voc12":
            assert row.blocked and row.status == "blocked", row.name
        if {"cityscapes", "v3"} & set(row.tags) and not row.blocked:
            assert importer[row.published.repository] in FORMATS, row.name
            assert row.options["mean"] == "imagenet", row.name  # the mean those ports subtract
    assert all(r.status == "runnable" for r in manifest.select(suite="smoke"))


def test_the_reported_numbers_page_is_generated_from_the_manifest(manifest):
    from deeplab_caffe.parity.suite.reported_numbers import DOC_PATH, REGENERATE, render_reported_numbers

    page = (ROOT / DOC_PATH).read_text(encoding="utf-8")
    assert page == render_reported_numbers(manifest), f"{DOC_PATH} is stale: run `{REGENERATE}`"
    for row in _published(manifest):
        assert f"`{row.name}`" in page and row.published.url in page


def test_the_manifest_and_this_test_cite_only_files_in_the_repository():
    for path in (MANIFEST_PATH, Path(__file__)):
        for cited in re.findall(r"(?<![\w/.])((?:docs|parity|scripts|tests|converter|models)/[\w./-]*\w)", path.read_text()):
            if "<" in cited or "*" in cited:
                continue
            assert (ROOT / cited).exists() or (ROOT / (cited + ".yaml")).exists(), f"{path.name} cites {cited}"


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
    assert set(blocked) >= {"voc12-test-single-scale-tfport", "voc12-test-msc-coco-crf-paper",
                            "cityscapes-v3-r101-dc5", "cityscapes-v3plus-r101-dc5", "voc12-v3-mg124-paper"}
    assert "evaluation server" in blocked["voc12-test-single-scale-tfport"]
    assert all(len(reason) > 20 for reason in blocked.values())


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
    (lambda d: _row(d, "voc12-v2-msc-port").pop("source"), "row 'voc12-v2-msc-port': key 'source' of a metric row tagged official or port"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(quote="94.64 | 86.50 | 76.56 | 90.41"), "key 'source.quote' reads 94.64, 86.50, 76.56, 90.41"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(columns=["MA", "PA", "mIoU", "FWIoU"]), "key 'source.quote' reads"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(columns=["PA", "MA", "mIoU"]), "key 'source.columns' must list each reported metric"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(commit="4219467"), "key 'source.commit' must be 40 hex digits"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].pop("appeared"), "key 'source.appeared' must be 'YYYY-MM-DD (commit)'"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(by="official"), "key 'source.by' is 'official' but the row is tagged 'port'"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].pop("file"), "key 'source' needs repository + commit + file, or arxiv"),
    (lambda d: _row(d, "voc12-v2-msc-port")["source"].update(arxiv="1606.00915"), "key 'source.arxiv' must be an arXiv id"),
    (lambda d: _row(d, "voc12-v2-msc-port")["options"].pop("upsample"), "key 'options.upsample' is required: a published row"),
    (lambda d: _row(d, "voc12-v2-msc-port")["options"].update(upsample="nearest"), "key 'options.upsample' must be one of caffe_interp"),
    (lambda d: _row(d, "voc12-v2-msc-port")["options"].update(mean="imagenet-rgb"), "key 'options.mean' must be one of voc, coco"),
    (lambda d: _row(d, "smoke-shapes").update(source={"by": "port"}), "row 'smoke-shapes': key 'source' is a published-numbers record"),
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
