"""Training configs: _base_ extension, deep merge, KEY=VALUE overrides, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from deeplab_caffe.parity.train.config import ConfigError, available_configs, deep_merge, load_config, parse_override


def test_shipped_configs_are_the_recipes_and_the_seed_ports() -> None:
    assert available_configs() == ["cityscapes", "cocostuff10k", "cocostuff10k_port", "cocostuff164k",
                                   "cocostuff164k_port", "shapes", "voc12", "voc12_port"]


@pytest.mark.parametrize(
    ("name", "dataset", "n_classes", "max_iter"),
    [
        ("voc12", "voc12", 21, 20000),
        ("cocostuff10k", "cocostuff10k", 182, 20000),
        ("cocostuff164k", "cocostuff164k", 182, 100000),
        ("cityscapes", "cityscapes", 19, 40000),
    ],
)
def test_dataset_configs_extend_the_caffe_recipe(name: str, dataset: str, n_classes: int,
                                                 max_iter: int) -> None:
    cfg = load_config(name)
    assert cfg["dataset"]["name"] == dataset
    assert cfg["model"]["n_classes"] == n_classes
    assert cfg["solver"]["max_iter"] == max_iter
    # inherited from base.yaml: the official train net and solver
    assert cfg["solver"]["update"] == "caffe"
    assert cfg["loss"]["label_resize"] == "caffe_interp"
    assert cfg["solver"]["lr"] == 2.5e-4
    assert cfg["solver"]["momentum"] == 0.9
    assert cfg["solver"]["weight_decay"] == 5e-4
    assert cfg["solver"]["poly_power"] == 0.9
    assert (cfg["solver"]["batch_size"], cfg["solver"]["iter_size"]) == (1, 10)
    assert (cfg["solver"]["lr_mult_classifier_weight"], cfg["solver"]["lr_mult_classifier_bias"]) == (10, 20)
    assert cfg["input"]["crop_size"] == 321
    assert cfg["input"]["scale_choices"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert cfg["input"]["mean_bgr"] == ([104.0, 114.1, 120.1] if dataset.startswith("cocostuff")
                                        else [104.008, 116.669, 122.675])
    assert cfg["input"]["flip"] is True
    assert cfg["input"]["ignore_label"] == 255
    assert cfg["model"]["freeze_bn"] is True
    assert cfg["model"]["msc"] is True
    assert cfg["model"]["n_blocks"] == [3, 4, 23, 3]
    assert cfg["model"]["aspp_rates"] == [6, 12, 18, 24]
    assert cfg["model"]["init_checkpoint"] == "data/models/coco_init.pth"
    assert "_base_" not in cfg


@pytest.mark.parametrize("name", ["voc12", "cocostuff10k", "cocostuff164k"])
def test_port_configs_are_the_seed_ports_recipe(name: str) -> None:
    cfg, official = load_config(f"{name}_port"), load_config(name)
    assert cfg["loss"]["label_resize"] == "nearest" and cfg["solver"]["update"] == "pytorch"
    assert (cfg["solver"]["batch_size"], cfg["solver"]["iter_size"]) == (5, 2)
    assert (cfg["solver"]["lr_step"], official["solver"]["lr_step"]) == (10, 1)  # LR_DECAY 10; Caffe's poly: 1
    assert cfg["input"]["mean_bgr"] == [104.008, 116.669, 122.675]
    assert cfg["model"]["msc_resize"] == "deeplab-pytorch-pre1.6" and official["model"]["msc_resize"] == "caffe"
    differ = {k for k in ("dataset", "model", "eval") if cfg[k] != official[k]}
    assert differ == {"model"} and {k for k in cfg["model"] if cfg["model"][k] != official["model"][k]} == {"msc_resize"}
    assert cfg["solver"]["max_iter"] == official["solver"]["max_iter"]


def test_deep_merge_merges_dicts_and_replaces_the_rest() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    merged = deep_merge(base, {"a": {"y": [3]}, "c": 4})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # untouched


def test_base_extension_from_a_user_file(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "_base_: %s\nsolver:\n  max_iter: 7\ndataset:\n  kwargs: {n_images: 3}\n"
        % (Path(__file__).resolve().parents[3] / "parity" / "train" / "configs" / "shapes.yaml")
    )
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg["solver"]["max_iter"] == 7
    assert cfg["solver"]["lr"] == 2e-5  # from shapes.yaml
    assert cfg["solver"]["momentum"] == 0.9  # from base.yaml
    assert cfg["dataset"]["kwargs"] == {"n_images": 3, "size": [96, 96], "n_classes": 4, "seed": 0}


def test_overrides_with_dotted_keys_are_parsed_as_yaml() -> None:
    cfg = load_config("voc12", [
        "solver.lr=0.001", "solver.weight_decay=1e-4", "model.msc=false",
        "input.scale_range=[0.75, 1.25]", "solver.max_iter=10", "dataset.root=/data/voc",
        "model.init_checkpoint=null", "dataset.kwargs.extra=3",
    ])
    assert cfg["solver"]["lr"] == 0.001
    assert cfg["solver"]["weight_decay"] == 1e-4 and isinstance(cfg["solver"]["weight_decay"], float)
    assert cfg["model"]["msc"] is False
    assert cfg["input"]["scale_range"] == [0.75, 1.25]
    assert cfg["solver"]["max_iter"] == 10
    assert cfg["dataset"]["root"] == "/data/voc"
    assert cfg["model"]["init_checkpoint"] is None
    assert cfg["dataset"]["kwargs"] == {"extra": 3}


def test_int_given_for_a_float_key_becomes_a_float() -> None:
    assert load_config("voc12", ["solver.lr=1"])["solver"]["lr"] == 1.0
    assert isinstance(load_config("voc12", ["solver.lr=1"])["solver"]["lr"], float)


@pytest.mark.parametrize(("text", "expected"), [
    ("a.b=1e-3", ("a.b", 0.001)),
    ("a=1e10", ("a", 1e10)),
    ("a=2.5e-4", ("a", 2.5e-4)),
    ("a=true", ("a", True)),
    ("a=abc", ("a", "abc")),
    ("a=x=y", ("a", "x=y")),
])
def test_parse_override(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize(("override", "message"), [
    ("solver.lrr=0.1", "unknown config key 'solver.lrr'"),
    ("solvr.lr=0.1", "unknown config key 'solvr'"),
    ("nosuchkey=1", "unknown config key 'nosuchkey'"),
    ("solver.lr.x=1", "'solver.lr' is not a section"),
    ("solver.lr=fast", "solver.lr expects a float"),
    ("model.msc=3", "model.msc expects a bool"),
    ("solver.lr", "must look like KEY=VALUE"),
    ("solver.iter_size=0", "config key 'solver.iter_size' must be an integer >= 1, got 0"),
    ("input.scale_range=[2, 1]", "config key 'input.scale_range' must be [low, high]"),
    ("solver.lr=-1", "config key 'solver.lr' must be a number > 0.0"),
])
def test_bad_overrides_raise_config_error_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("voc12", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_a_file_is_an_error(tmp_path: Path) -> None:
    base = Path(__file__).resolve().parents[3] / "parity" / "train" / "configs" / "base.yaml"
    (tmp_path / "bad.yaml").write_text(f"_base_: {base}\nsolver:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'solver.learning_rate'"):
        load_config(tmp_path / "bad.yaml")


def test_missing_config_and_base_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config 'voc13'"):
        load_config("voc13")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match="_base_ file not found"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "broken.yaml").write_text("solver: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
