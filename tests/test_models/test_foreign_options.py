"""The config options that express other ports' networks (models.config): validation, module
layout, semantics checked against torch's own layers, and the inference copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplab_caffe.models import build_model, default_v3_config, optimize_for_inference, validate_config
from deeplab_caffe.models.resnet import WSConv2d


def small_v3(plus: bool = True, **options) -> dict:
    config = default_v3_config(4, plus=plus, n_blocks=(1, 1, 2, 3), stem_channels=8, head_channels=8)
    for key, value in options.items():
        section, _, name = key.partition("__")
        (config[section] if name else config)[name or section] = value
    validate_config(config)
    return config


def test_defaults_leave_the_caffe_model_unchanged():
    model = build_model(small_v3())
    assert type(model.backbone.res3.a.branch2a.conv) is nn.Conv2d
    assert model.backbone.res3.a.branch2a.conv.stride == (2, 2) and model.backbone.res3.a.branch2b.conv.stride == (1, 1)
    assert model.backbone.stem.pool1.ceil_mode and not hasattr(model.backbone.stem, "conv2")


def test_port_options_build_the_port_layout():
    config = small_v3(norm="gn", gn_groups=2, weight_std=True, stride_in_1x1=False, stem__deep_channels=4,
                      stem__pool_ceil=False, head__pooling_norm=False, decoder__separable=True)
    model = build_model(config)
    block = model.backbone.res3.a
    assert block.branch2a.conv.stride == (1, 1) and block.branch2b.conv.stride == (2, 2)
    assert isinstance(block.branch2b.conv, WSConv2d) and isinstance(block.branch2b.bn, nn.GroupNorm)
    assert model.backbone.stem.conv1.conv.out_channels == 4 and model.backbone.stem.conv3.conv.out_channels == 8
    assert not model.backbone.stem.pool1.ceil_mode
    assert isinstance(model.aspp.pooling, WSConv2d) and model.aspp.pooling.bias is not None
    assert len(model.decoder.fuse) == 1 and model.decoder.fuse[0].depthwise.conv.groups == 8 + 48


def test_ws_conv_standardises_each_filter():
    conv = WSConv2d(3, 5, 3, bias=False)
    w = conv.standardized_weight()
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-6)
    std = conv.weight.flatten(1).std(dim=1)  # unbiased; eps added to the std
    assert torch.allclose(w.flatten(1).std(dim=1), std / (std + 1e-5), atol=1e-6)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(conv(x), F.conv2d(x, w), atol=1e-6)


def test_input_std_and_rgb():
    config = small_v3(plus=False, input_std=[2.0, 4.0, 8.0], input_rgb=True)
    plain = small_v3(plus=False)
    model, reference = build_model(config).eval(), build_model(plain).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    scaled = (x / torch.tensor([2.0, 4.0, 8.0]).view(1, 3, 1, 1)).flip(1)
    with torch.no_grad():
        assert torch.equal(model(x), reference(scaled))


@pytest.mark.parametrize("bad, message", [
    ({"norm": "ln"}, "config['norm'] must be 'bn' or 'gn'"),
    ({"input_std": [1.0, 0.0, 1.0]}, "config['input_std'] must be a list of 3 positive numbers"),
    ({"head__pooling_kernel": [4]}, "config['head']['pooling_kernel'] must be [height, width]"),
    ({"decoder__low_level_first": 1}, "config['decoder']['low_level_first'] must be true or false"),
    ({"stem__deep_channels": 0}, "config['stem']['deep_channels'] must be >= 1"),
])
def test_bad_options_are_named(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        small_v3(**bad)


def test_inference_copy_keeps_group_norm_and_ws():
    config = small_v3(norm="gn", gn_groups=2, weight_std=True, stride_in_1x1=False, align_corners=False,
                      head__pooling_kernel=[2, 2])
    model = build_model(config).eval()
    fused = optimize_for_inference(model, channels_last=False)
    x = torch.randn(1, 3, 48, 48)  # 4 x 4 features: tiled by the 2 x 2 window
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= 1e-5


def test_smallest_input_size_is_the_smallest_the_pooling_window_tiles():
    """Detectron2's rule: the window must divide the features. With Caffe's stem (ceil-mode pool)
    and stride 16, the smallest input with 3 x 5 features is 31 x 63 (measured on the backbone:
    30 gives 2, 31 to 46 give 3); a side one smaller, or with 4 features, is refused."""
    from deeplab_caffe.models import DEFAULT_MSC_SCALES, accepts_input_size, smallest_input_size

    assert smallest_input_size(small_v3()) == (1, 1)  # global pooling: any size
    config = small_v3(plus=False, head__pooling_kernel=[3, 5])
    h, w = smallest_input_size(config)
    assert (h, w) == (31, 63)
    model = build_model(config).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, h, w)).shape[-2:]) == (3, 5)  # v3 logits: the features' size
        assert tuple(model(torch.randn(1, 3, h + 48, w + 80)).shape[-2:]) == (6, 10)
        for bad in ((h - 1, w), (h + 16, w)):
            assert not accepts_input_size(config, bad)
            with pytest.raises(ValueError, match="image-pooling window"):
                model(torch.randn(1, 3, *bad))
    assert accepts_input_size(config, (h, w)) and accepts_input_size(config, (h + 48, w + 80))
    with pytest.raises(ValueError, match="pooling_kernel.*needs msc null"):
        small_v3(head__pooling_kernel=[3, 5], msc={"scales": [dict(s) for s in DEFAULT_MSC_SCALES]})
