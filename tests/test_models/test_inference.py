"""models.optimize_for_inference: the same function, faster; the unfused model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeplab_caffe import models
from deeplab_caffe.models import build_model, default_config, optimize_for_inference


def seeded(msc: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(default_config(7, n_blocks=(2, 1, 3, 1), stem_channels=16, msc=msc)).eval()
    with torch.no_grad():  # statistics and affine far from the identity, as trained nets have
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def photo_like(h: int = 97, w: int = 75) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, h, w) * 60


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("msc", [False, True], ids=["single", "msc"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_fused_model_computes_the_same_function(msc, channels_last):
    model = seeded(msc)
    x = photo_like()
    with torch.no_grad():
        reference = model(x)
        fused = optimize_for_inference(model, channels_last=channels_last)
        out = fused(x)
    assert out.shape == reference.shape and out.is_contiguous() and out.dtype == torch.float32
    assert rel(out, reference) <= 1e-5


def test_the_unfused_model_is_left_as_it_was():
    model = seeded(msc=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = optimize_for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.get_submodule("backbone.res2.a.branch2a.bn"), nn.BatchNorm2d)
    assert not model.get_submodule("backbone.res2.a").inplace
    inner = fused.model
    assert isinstance(inner.get_submodule("backbone.res2.a.branch2a.bn"), nn.Identity)
    assert inner.get_submodule("backbone.res2.a.branch2a.conv").bias is not None
    assert inner.get_submodule("backbone.res2.a").inplace and inner.get_submodule("backbone.stem").inplace


def test_inplace_fuses_the_model_itself_to_the_same_function(monkeypatch):
    model = seeded(msc=True)
    x = photo_like()
    monkeypatch.setattr(nn.init, "kaiming_uniform_", lambda *a, **k: pytest.fail("a folded conv was initialised"))
    with torch.no_grad():
        reference = model(x)
        fused = optimize_for_inference(model, inplace=True)
        out = fused(x)
    assert fused.model is model  # no copy of the weights
    assert isinstance(model.get_submodule("base.backbone.res2.a.branch2a.bn"), nn.Identity)
    assert rel(out, reference) <= 1e-5


def test_bf16_is_an_opt_in_close_to_fp32():
    model = seeded(msc=False)
    x = photo_like()
    with torch.no_grad():
        reference = model(x)
        out = optimize_for_inference(model, bf16=True)(x)
    assert out.dtype == torch.float32
    assert 1e-5 < rel(out, reference) < 0.1  # bf16 rounding is visible, and small
    assert (out.argmax(1) == reference.argmax(1)).float().mean() > 0.9


def test_load_checkpoint_builds_once_without_initialising(tmp_path, monkeypatch):
    model = seeded(msc=True)
    path = models.save_checkpoint(tmp_path / "m.pth", model, model.config, {})
    built = []
    real_build = models.checkpoint.build_model

    def counting_build(config, **kwargs):
        built.append(kwargs)
        return real_build(config, **kwargs)

    monkeypatch.setattr(models.checkpoint, "build_model", counting_build)
    monkeypatch.setattr(models.deeplab_v2, "init_weights", lambda m: pytest.fail("init_weights ran on load"))
    loaded = models.load_checkpoint(path)
    assert built == [{"init": False}]
    x = photo_like(65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
