"""DeepLabv3.pytorch (chenxi116) checkpoints, GroupNorm + Weight Standardization included, onto
our v3 model: every key accounted for, and the converted model equals an independent
re-implementation of the repo's forward (tests/foreign_deeplabv3_pytorch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import foreign_deeplabv3_pytorch as cx
from deeplab_caffe import models
from deeplab_caffe.converter.cli import main
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign import FORMATS
from deeplab_caffe.converter.foreign.deeplabv3_pytorch import (DeepLabV3PytorchOptions, deeplabv3_pytorch_format,
                                                             deeplabv3_pytorch_mapping)
from deeplab_caffe.converter.foreign.rules import export_state_dict, import_checkpoint
from deeplab_caffe.models import caffe_interp


def image(h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (1, 3, h, w)))


def our_logits(model: torch.nn.Module, image_rgb: torch.Tensor) -> torch.Tensor:
    """BGR minus the ImageNet mean (x 255, reversed) in, float64, logits at stride 16."""
    mean_bgr = torch.tensor([255 * m for m in cx.MEAN[::-1]], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.double()(image_rgb.flip(1) - mean_bgr)


@pytest.mark.parametrize("group_norm", [True, False])
def test_converted_model_matches_reference(tmp_path, group_norm):
    state = cx.random_state(7, group_norm=group_norm)
    path = cx.write_checkpoint(tmp_path / "deeplab_resnet101_pascal_v3_gn_ws_lr7e-3_epoch50.pth", state)
    result = import_checkpoint(path, deeplabv3_pytorch_format(DeepLabV3PytorchOptions(groups=4)))
    assert result.config["norm"] == ("gn" if group_norm else "bn")
    assert result.config["weight_std"] is group_norm
    statuses = {r.key: r.status for r in result.records}
    assert statuses.pop("epoch") == statuses.pop("optimizer") == "outside"
    assert set(statuses) == set(state) and set(statuses.values()) == {"mapped"}
    x = image(96, 112)
    ref = cx.Reference(state, groups=4 if group_norm else None, weight_std=group_norm)
    with torch.no_grad():
        want = ref.forward(x)
        want_full = ref.forward(x, upsample=True)
    got = our_logits(result.model, x)
    assert got.shape == want.shape == (1, 3, 6, 7)
    assert (got - want).abs().max().item() <= 1e-5
    # the repo's final resize is align_corners=True: our caffe_interp to the input size
    assert (caffe_interp(got, (96, 112)) - want_full).abs().max().item() <= 1e-5


def test_weight_standardisation_matters(tmp_path):
    """The comparison can fail: the same GN file imported without WS is far off."""
    state = cx.random_state(8)
    path = cx.write_checkpoint(tmp_path / "m.pth", state)
    wrong = import_checkpoint(path, deeplabv3_pytorch_format(DeepLabV3PytorchOptions(groups=4, weight_std=False)))
    x = image(64, 64)
    with torch.no_grad():
        want = cx.Reference(state, groups=4, weight_std=True).forward(x)
    assert (our_logits(wrong.model, x) - want).abs().max().item() > 1e-2


def test_full_resnet101_gn_ws_layout_every_key_accounted_for(tmp_path):
    """The published GN+WS model's layout: ResNet-101, 64-channel stem, ASPP depth 256, 21 classes."""
    state = cx.random_state(0, blocks=(3, 4, 23, 3), inplanes=64, planes=64, depth=256, n_classes=21, zeros=True)
    path = cx.write_checkpoint(tmp_path / "deeplab_resnet101_pascal_v3_gn_ws_lr7e-3_epoch50.pth", state)
    result = import_checkpoint(path, FORMATS["deeplabv3-pytorch"])
    assert len(result.records) == len(state) + 2
    assert sum(r.status == "mapped" for r in result.records) == len(state)
    assert set(result.filled) == set(result.model.state_dict()) and len(result.filled) == len(state)
    config = result.config
    assert config["norm"] == "gn" and config["gn_groups"] == 32 and config["weight_std"] is True
    assert [len(s["blocks"]) for s in config["stages"]] == [3, 4, 23, 3]
    assert config["stages"][3]["multi_grid"] == [1, 2, 2] and config["stages"][2]["stride"] == 2
    assert sum(p.numel() for p in result.model.parameters()) == sum(v.numel() for v in state.values())


def test_state_dict_without_module_prefix_and_bare(tmp_path):
    state = {k.removeprefix("module."): v for k, v in cx.random_state(9).items()}
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    result = import_checkpoint(path, deeplabv3_pytorch_format(DeepLabV3PytorchOptions(groups=4)))
    assert {r.status for r in result.records} == {"mapped"}


def test_groups_that_do_not_divide_are_one_line_error(tmp_path):
    path = cx.write_checkpoint(tmp_path / "m.pth", cx.random_state(9))
    with pytest.raises(ConversionError, match=r"m\.pth: .*channels do not split into 32 GroupNorm groups"):
        import_checkpoint(path, FORMATS["deeplabv3-pytorch"])


def test_beta_stem_is_refused(tmp_path):
    state = cx.random_state(9)
    state["module.conv1.0.weight"] = state.pop("module.conv1.weight")
    with pytest.raises(ConversionError, match=r"m\.pth: the --beta stem"):
        import_checkpoint(cx.write_checkpoint(tmp_path / "m.pth", state), FORMATS["deeplabv3-pytorch"])


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        import_checkpoint(path, FORMATS["deeplabv3-pytorch"])


def test_cli_converts_gn_ws_and_the_checkpoint_matches_the_reference(tmp_path):
    state = cx.random_state(11, blocks=(1, 1, 1, 2), inplanes=32, planes=32, depth=64)  # 2 channels per group
    path = cx.write_checkpoint(tmp_path / "gn_ws.pth", state)
    out = tmp_path / "ours.pth"
    result = CliRunner().invoke(main, ["--from", "deeplabv3-pytorch", str(path), "--output", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ours.report.json").read_text())
    assert report["accounting"]["mapped"] == len(state) and report["accounting"]["outside_the_model"] == 2
    model = models.load_checkpoint(out)
    assert model.config["weight_std"] is True and model.config["gn_groups"] == 32
    assert model.metadata["mean_bgr"] == pytest.approx([255 * m for m in cx.MEAN[::-1]])
    x = image(48, 64)
    with torch.no_grad():
        want = cx.Reference(state, groups=32, weight_std=True).forward(x)
    assert (our_logits(model, x) - want).abs().max().item() <= 1e-5


def test_rules_invert_to_the_repo_layout(tmp_path):
    state = cx.random_state(12, group_norm=False)
    result = import_checkpoint(cx.write_checkpoint(tmp_path / "m.pth", state), FORMATS["deeplabv3-pytorch"])
    back = export_state_dict(result.state_dict, deeplabv3_pytorch_mapping(), result.model)
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())
