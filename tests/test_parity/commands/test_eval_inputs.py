"""``deeplab-parity eval`` / ``deeplab-demo`` inputs: the dataset's options, and a hint at the
right file when given a training checkpoint or another port's bare state_dict."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe.models import build_model, read_checkpoint
from deeplab_caffe.parity.commands.demo import main as demo_main
from deeplab_caffe.parity.commands.parity import main as parity_main
from deeplab_caffe.parity.commands.train import main as train_main


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    """A workdir of deeplab-train --config shapes after 2 updates (latest.pth, model.pth)."""
    workdir = tmp_path_factory.mktemp("shapes") / "run"
    res = CliRunner().invoke(train_main, ["--config", "shapes", "--workdir", str(workdir), "--max-iters", "2",
                                          "--no-progress"])
    assert res.exit_code == 0, res.output
    return workdir


def test_eval_takes_the_recipes_dataset_options(shapes_run, tmp_path):
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(parity_main, [
        "eval", "--checkpoint", str(shapes_run / "model.pth"), "--dataset", "shapes", "--no-progress",
        "--dataset-option", "size=[96,96]", "--dataset-option", "n_images=3", "--output", str(out)])
    assert res.exit_code == 0, res.output
    scores = json.loads(out.read_text())
    assert scores["dataset_options"] == {"size": [96, 96], "n_images": 3}
    assert scores["n_images"] == 3


@pytest.mark.parametrize("item", ["size", "=3", "nonsense_key=1"])
def test_a_bad_dataset_option_is_one_line_exit_2(shapes_run, item):
    res = CliRunner().invoke(parity_main, ["eval", "--checkpoint", str(shapes_run / "model.pth"), "--dataset",
                                           "shapes", "--dataset-option", item])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith("error:")


def test_a_training_checkpoint_points_at_model_pth(shapes_run, tmp_path):
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.png"), np.zeros((40, 40, 3), np.uint8))
    for command, args in ((parity_main, ["eval", "--dataset", "shapes"]),
                          (demo_main, ["--folder", str(tmp_path / "photos"), "--output", str(tmp_path / "o")])):
        res = CliRunner().invoke(command, [*args, "--checkpoint", str(shapes_run / "latest.pth")])
        assert res.exit_code == 2, res.output
        assert "not a checkpoint (no 'state_dict' entry)" in res.output
        assert "deeplab-train training checkpoint" in res.output and "model.pth" in res.output


def test_a_bare_state_dict_points_at_deeplab_convert_from(shapes_run, tmp_path):
    _, config, _ = read_checkpoint(shapes_run / "model.pth")
    bare = tmp_path / "port.pth"
    torch.save(build_model(config).state_dict(), bare)  # what another port's .pth holds: names -> tensors
    res = CliRunner().invoke(parity_main, ["eval", "--dataset", "shapes", "--checkpoint", str(bare)])
    assert res.exit_code == 2 and "bare state_dict" in res.output and "deeplab-convert --from" in res.output
