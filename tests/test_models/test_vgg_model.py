"""models.vgg: the DeepLab-VGG16 networks (v1 LargeFOV, v2 ASPP-L) and their config."""

from __future__ import annotations

import pytest
import torch

from deeplab_caffe.models import build_model, default_vgg_config, score_map_size, validate_config


@pytest.mark.parametrize("aspp", [False, True], ids=["largefov", "aspp-l"])
def test_official_layout_and_parameter_count(aspp):
    """VGG16's 13 convolutions (14.71 M parameters) and 1024-channel fc6/fc7: LargeFOV's one
    branch (fc6 3x3: 4.72 M, fc7 1.05 M, fc8) or ASPP-L's four."""
    model = build_model(default_vgg_config(21, aspp=aspp))
    backbone = sum(p.numel() for p in model.backbone.parameters())
    branch = sum(p.numel() for p in model.classifier.branches[0].parameters())
    assert backbone == 14_714_688
    assert branch == (512 * 9 + 1) * 1024 + (1024 + 1) * 1024 + (1024 + 1) * 21
    assert len(model.classifier.branches) == (4 if aspp else 1)
    assert [b.fc6.dilation[0] for b in model.classifier.branches] == ([6, 12, 18, 24] if aspp else [12])
    assert (model.backbone.conv5_1.dilation, model.backbone.pool4.stride, model.backbone.pool3.stride) == ((2, 2), 1, 2)
    assert hasattr(model.backbone, "pool5a") != aspp


@pytest.mark.parametrize("size", [(67, 67), (53, 43), (97, 75), (321, 321)])
def test_score_map_size_is_what_the_model_computes(size):
    for aspp in (False, True):
        config = default_vgg_config(5, aspp=aspp, width_divisor=32)
        with torch.no_grad():
            out = build_model(config).eval()(torch.zeros(1, 3, *size))
        assert tuple(out.shape[2:]) == score_map_size(config, size)
    assert score_map_size(default_vgg_config(5), (321, 321)) == (41, 41)  # output stride 8 with Caffe's ceil


def test_dropout_is_active_in_training_and_off_in_eval():
    model = build_model(default_vgg_config(3, width_divisor=32))
    x = torch.randn(1, 3, 33, 33) * 50
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        assert not torch.equal(model.train()(x), model.train()(x))


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["stages"].pop(), "config['stages'] must be a list of 5 stages"),
    (lambda c: c["stages"][0]["pool"].update(kind="min"), "config['stages'][0]['pool']['kind'] must be 'max' or 'ave'"),
    (lambda c: c["classifier"].update(dropout=1.0), "config['classifier']['dropout'] must be a probability"),
    (lambda c: c.update(msc={"scales": []}), "config['msc'] must be None for deeplab_vgg"),
    (lambda c: c.update(bn_eps=1e-5), "config['bn_eps'] is not a known key"),
])
def test_bad_configs_are_named(change, message):
    config = default_vgg_config(21)
    change(config)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(config)
