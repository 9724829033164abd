"""The training init: a named checkpoint, or the synthetic stand-in a recipe makes itself."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter import convert
from deeplab_caffe.models import CheckpointError, read_checkpoint
from deeplab_caffe.parity.commands.train import main as train_main
from deeplab_caffe.parity.suite.manifest import load_manifest
from deeplab_caffe.parity.suite.runner import RunContext, resolve_weights
from deeplab_caffe.parity.train.config import load_config, model_config_from
from deeplab_caffe.parity.train.init import load_init_weights, resolve_init, synthetic_init


def test_shapes_recipe_makes_its_own_converted_init_once(tmp_path):
    config = resolve_init(load_config("shapes"), tmp_path / "init")
    path = tmp_path / "init" / "synthetic_init_b1-1-1-1_s8_seed0.pth"
    assert config["model"]["init_checkpoint"] == str(path)
    _, ckpt_config, metadata = read_checkpoint(path)
    assert ckpt_config["n_classes"] == 91 and "seed 0" in metadata["source_file"]
    report = load_init_weights(models.build_model(model_config_from(config)), path)
    assert len(report.loaded) == 102 and len(report.reinitialised) == 4  # the 4-class, 2-branch head is new
    stamp = path.stat().st_mtime_ns
    assert resolve_init(load_config("shapes"), tmp_path / "init") == config and path.stat().st_mtime_ns == stamp


def test_the_synthetic_init_is_the_smoke_rows_fixture_converted(tmp_path):
    """deeplab-train --config shapes and the smoke-shapes row start from the same weights: the
    manifest's fixture spec and shapes.yaml's backbone and seed must not drift apart."""
    row = next(r for r in load_manifest().rows if r.name == "smoke-shapes")
    ctx = RunContext(data_roots={}, weights={}, outdir=tmp_path / "out", workdir=tmp_path / "work", seed=0, device="cpu")
    fixture = resolve_weights(row, ctx)
    expected = convert(fixture.path, fixture.prototxt, n_classes=91).state_dict
    made, _, _ = read_checkpoint(synthetic_init(load_config("shapes"), tmp_path / "init"))
    assert sorted(made) == sorted(expected)
    assert all(torch.equal(made[k], expected[k]) for k in made)


def test_a_named_init_checkpoint_wins_and_a_missing_one_says_how_to_make_it(tmp_path):
    given = resolve_init(load_config("shapes"), tmp_path / "a")
    named = load_config("shapes", [f"model.init_checkpoint={given['model']['init_checkpoint']}"])
    assert resolve_init(named, tmp_path / "b") == named and not (tmp_path / "b").exists()
    with pytest.raises(CheckpointError, match=r"nope\.pth: init checkpoint not found .*deeplab-convert --dataset coco_init"):
        resolve_init(load_config("voc12", [f"model.init_checkpoint={tmp_path / 'nope.pth'}"]), tmp_path / "c")


def test_without_any_init_the_config_is_unchanged(tmp_path):
    config = load_config("shapes", ["model.init_synthetic_seed=null"])
    assert resolve_init(config, tmp_path / "init") == config and not (tmp_path / "init").exists()


def test_deeplab_train_shapes_starts_from_the_synthetic_init(tmp_path):
    res = CliRunner().invoke(train_main, ["--config", "shapes", "--workdir", str(tmp_path / "run"),
                                          "--max-iters", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "init" / "synthetic_init_b1-1-1-1_s8_seed0.pth").is_file()
    assert "2/200 iterations" in res.output


def test_a_run_from_scratch_that_diverges_says_the_init_is_missing(tmp_path):
    res = CliRunner().invoke(train_main, ["--config", "shapes", "--workdir", str(tmp_path / "run"), "--max-iters", "5",
                                          "--no-progress", "model.init_synthetic_seed=null", "solver.lr=10"])
    assert res.exit_code == 1
    assert "training diverged" in res.output and "started from scratch" in res.output
    assert "model.init_checkpoint=PATH" in res.output
