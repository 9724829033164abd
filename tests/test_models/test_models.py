"""DeepLab v2 models: shapes, names, MSC fusion, frozen BatchNorm, config checks, checkpoints."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from deeplab_caffe import models
from deeplab_caffe.models import (
    ASPP,
    MSC,
    CheckpointError,
    DeepLabV2,
    build_model,
    caffe_interp,
    caffe_interp_size,
    default_config,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    validate_config,
)

TINY = {"stem_channels": 8, "n_blocks": (1, 1, 4, 1)}  # res4 keeps Caffe's a, b1, b2, b3 ids


def tiny_config(**overrides) -> dict:
    kwargs = {"n_classes": 5, **TINY, **overrides}
    return default_config(**kwargs)


def build_seeded(config: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(config)
    # give BatchNorm non-trivial statistics so that every parameter influences the output
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_msc() -> MSC:
    return build_seeded(tiny_config(msc=True))


# ---------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("size", "score"), [(513, 65), (321, 41), (100, 13), ((353, 500), (45, 63))])
def test_score_map_has_output_stride_eight_with_caffe_rounding(size, score):
    h, w = (size, size) if isinstance(size, int) else size
    sh, sw = (score, score) if isinstance(score, int) else score
    model = build_model(tiny_config()).eval()  # sizes depend on strides only, not on depth
    with torch.no_grad():
        y = model(torch.randn(1, 3, h, w))
    assert y.shape == (1, 5, sh, sw)


def test_msc_outputs_have_the_caffe_scale_sizes_at_513(tiny_msc):
    with torch.no_grad():
        out = tiny_msc.forward_msc(torch.randn(1, 3, 513, 513))
    assert list(out) == ["1x", "0.5x", "0.75x", "fused"]  # the official graph's pyramid order
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "1x": (1, 5, 65, 65), "0.75x": (1, 5, 49, 49), "0.5x": (1, 5, 33, 33), "fused": (1, 5, 65, 65),
    }


# ------------------------------------------------------------------- size and names of R101


@pytest.mark.parametrize(
    ("kwargs", "n_params"),
    [
        # ResNet-101 without fc (= torchvision's 44,549,160 minus 2,049,000) + 4 x (3*3*2048*21 + 21)
        ({"n_classes": 21}, 42_500_160 + 1_548_372),
        # init.caffemodel layout: single 1x1 classifier, 91 COCO classes (2048*91 + 91)
        ({"n_classes": 91, "aspp_rates": None}, 42_500_160 + 186_459),
    ],
)
def test_resnet101_parameter_count_is_exact(kwargs, n_params):
    with torch.device("meta"):
        model = build_model(default_config(**kwargs))
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert sum(p.numel() for p in model.backbone.parameters()) == 42_500_160


def test_resnet101_state_dict_names_follow_the_caffe_graph():
    with torch.device("meta"):
        model = build_model(default_config(21))
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["backbone.stem.conv1.conv.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.stem.conv1.bn.running_mean"] == (64,)
    assert shapes["backbone.res2.a.branch1.conv.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.res3.a.branch2a.conv.weight"] == (128, 256, 1, 1)
    assert shapes["backbone.res3.b3.branch2b.conv.weight"] == (128, 128, 3, 3)
    assert shapes["backbone.res4.b22.branch2b.bn.running_var"] == (256,)
    assert shapes["backbone.res5.c.branch2c.bn.bias"] == (2048,)
    assert shapes["classifier.branches.3.weight"] == (21, 2048, 3, 3)
    assert shapes["classifier.branches.3.bias"] == (21,)
    assert "backbone.res4.b23.branch2a.conv.weight" not in sd
    assert "backbone.res2.b.branch1.conv.weight" not in sd  # projection only in the first block
    assert not any(k.endswith("conv.bias") for k in sd)  # Caffe's ResNet convs have no bias
    assert list(model.backbone.res4.keys()) == ["a"] + [f"b{i}" for i in range(1, 23)]
    assert list(model.backbone.res2.keys()) == ["a", "b", "c"]
    # 104 BatchNorms x 5 entries + 104 conv weights + 4 x (weight, bias)
    assert len(sd) == 104 * 6 + 8


def test_stride_dilation_and_pooling_match_deeplab_resnet():
    with torch.device("meta"):
        bb = build_model(default_config(21)).backbone
    assert bb.stem.pool1.ceil_mode and bb.stem.pool1.kernel_size == 3 and bb.stem.pool1.padding == 1
    assert bb.res3.a.branch2a.conv.stride == (2, 2) and bb.res3.a.branch1.conv.stride == (2, 2)
    assert bb.res3.a.branch2b.conv.stride == (1, 1)
    for stage, d in (("res2", 1), ("res3", 1), ("res4", 2), ("res5", 4)):
        for block in getattr(bb, stage).values():
            assert block.branch2b.conv.dilation == (d, d) and block.branch2b.conv.padding == (d, d)
    assert bb.res4.a.branch2a.conv.stride == (1, 1) and bb.res5.a.branch1.conv.stride == (1, 1)
    assert bb.stem.conv1.bn.eps == 1e-5


# --------------------------------------------------------------------------------- classifier


def test_aspp_sums_its_branches_in_order():
    aspp = ASPP(16, 3, [{"kernel": 3, "dilation": r, "pad": r, "bias": True} for r in (1, 2, 3)])
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        y = aspp(x)
        expected = (aspp.branches[0](x) + aspp.branches[1](x)) + aspp.branches[2](x)
    assert torch.equal(y, expected)


def test_single_classifier_config_is_a_1x1_conv_with_bias():
    cfg = default_config(91, aspp_rates=None)
    assert cfg["classifier"]["branches"] == [{"kernel": 1, "dilation": 1, "pad": 0, "bias": True}]
    with torch.device("meta"):
        conv = build_model(cfg).classifier.branches[0]
    assert conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.bias is not None


def test_from_scratch_init_follows_the_recipe():
    torch.manual_seed(0)
    model = build_model(default_config(21, stem_channels=8))
    for conv in model.classifier.branches:
        assert torch.count_nonzero(conv.bias) == 0
        assert abs(conv.weight.std().item() - 0.01) < 0.001
    bn = model.backbone.res2.a.branch2b.bn
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    w = model.backbone.res2.a.branch2b.conv.weight  # He normal, fan-in 8 * 3 * 3
    assert abs(w.std().item() - (2 / 72) ** 0.5) < 0.03


# ----------------------------------------------------------------------------------- hooks


def test_relus_never_modify_a_tensor_a_hook_holds():
    model = build_seeded(tiny_config())
    held = {}

    def keep(name):
        def hook(_module, _inputs, output):
            held[name] = (output, output.clone())
        return hook

    for name in ("backbone.stem.conv1", "backbone.res2.a.branch2c", "backbone.res3.a.branch2a",
                 "backbone.res3.a", "classifier.branches.0"):
        model.get_submodule(name).register_forward_hook(keep(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 33, 33))
    for name, (output, copy_at_hook) in held.items():
        assert torch.equal(output, copy_at_hook), name
    assert (held["backbone.stem.conv1"][0] < 0).any()  # BN output, before the ReLU
    assert (held["backbone.res3.a"][0] >= 0).all()  # block output, after the ReLU


# ------------------------------------------------------------------------------------- MSC


def test_msc_state_dict_keys_equal_the_base_models(tiny_msc):
    base = DeepLabV2(tiny_config())
    assert list(tiny_msc.state_dict().keys()) == list(base.state_dict().keys())
    assert list(tiny_msc.state_dict().keys()) == list(tiny_msc.base.state_dict().keys())
    for (k1, p1), (k2, p2) in zip(tiny_msc.named_parameters(), tiny_msc.base.named_parameters()):
        assert k1 == k2 and p1 is p2  # weights shared, not copied


def test_msc_fused_output_is_the_max_of_the_resized_score_maps(tiny_msc):
    x = torch.randn(2, 3, 97, 81)
    with torch.no_grad():
        out = tiny_msc.forward_msc(x)
        base = tiny_msc.base
        s1 = base(x)
        s075 = base(caffe_interp(x, caffe_interp_size(97, 81, shrink=4, zoom=3)))
        s05 = base(caffe_interp(x, caffe_interp_size(97, 81, shrink=2)))
        fused = tiny_msc(x)
    size = s1.shape[-2:]
    expected = torch.stack([s1, caffe_interp(s075, size), caffe_interp(s05, size)]).amax(dim=0)
    assert torch.equal(out["1x"], s1) and torch.equal(out["0.75x"], s075) and torch.equal(out["0.5x"], s05)
    assert torch.equal(out["fused"], expected)
    assert torch.equal(fused, expected)


@pytest.mark.parametrize(("scales", "names"), [
    ([{"shrink": 4, "zoom": 3}, {"shrink": 2, "zoom": 1}], ["1x", "0.75x", "0.5x", "fused"]),
    ([{"shrink": 2, "zoom": 3}], ["1x", "1.5x", "fused"]),
])
def test_msc_output_names_come_from_the_scales(scales, names):
    msc = MSC(build_seeded(tiny_config()), scales)
    with torch.no_grad():
        assert list(msc.forward_msc(torch.randn(1, 3, 33, 33))) == names


def test_build_model_wraps_in_msc_only_when_configured():
    assert type(build_model(tiny_config())) is DeepLabV2
    msc = build_model(tiny_config(msc=True))
    assert type(msc) is MSC
    assert msc.config["msc"] == {"scales": [{"shrink": 2, "zoom": 1}, {"shrink": 4, "zoom": 3}]}
    assert msc.base.config["msc"] is None


# ------------------------------------------------------------------------------ frozen BN


@pytest.mark.parametrize("msc", [False, True])
def test_batchnorm_stays_frozen_under_train(msc):
    model = build_seeded(tiny_config(msc=msc))
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert model.training and model.backbone.res2.a.training and model.classifier.training
    assert all(p.requires_grad for n, p in model.named_parameters() if ".bn." not in n)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.randn(2, 3, 33, 33)).square().mean()
    loss.backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # stats untouched
    assert all(bn.weight.grad is None for bn in bns)


def test_unfrozen_batchnorm_trains_and_converts_to_syncbn():
    cfg = tiny_config()
    cfg["freeze_bn"] = False
    model = build_model(cfg).train()
    bn = model.backbone.stem.conv1.bn
    assert bn.training and bn.weight.requires_grad
    mean = bn.running_mean.clone()
    model(torch.randn(2, 3, 33, 33))
    assert not torch.equal(mean, bn.running_mean)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(sync.backbone.stem.conv1.bn, nn.SyncBatchNorm)
    assert list(sync.state_dict()) == list(model.state_dict())


# --------------------------------------------------------------------------------- config


def test_default_config_is_the_documented_deeplab_resnet101():
    cfg = default_config(21, msc=True)
    assert [s["name"] for s in cfg["stages"]] == ["res2", "res3", "res4", "res5"]
    assert [s["blocks"][-1] for s in cfg["stages"]] == ["c", "b3", "b22", "c"]
    assert [(s["mid_channels"], s["out_channels"], s["stride"], s["dilation"]) for s in cfg["stages"]] == [
        (64, 256, 1, 1), (128, 512, 2, 1), (256, 1024, 1, 2), (512, 2048, 1, 4)]
    assert cfg["stem"] == {"channels": 64, "conv_kernel": 7, "conv_stride": 2, "conv_pad": 3,
                           "pool_kernel": 3, "pool_stride": 2, "pool_pad": 1}
    assert [b["dilation"] for b in cfg["classifier"]["branches"]] == [6, 12, 18, 24]
    # the official MSC graph's pyramid order: data_res05 (shrink 2), then data_res075 (shrink 4, zoom 3)
    assert cfg["msc"] == {"scales": [{"shrink": 2, "zoom": 1}, {"shrink": 4, "zoom": 3}]}
    assert cfg["arch"] == "deeplab_v2" and cfg["bn_eps"] == 1e-5 and cfg["in_channels"] == 3
    assert default_config(21)["msc"] is None
    assert [s["mid_channels"] for s in default_config(21, widths=(4, 8, 8, 16))["stages"]] == [4, 8, 8, 16]


def _set(cfg: dict, path: tuple, value) -> dict:
    cfg = copy.deepcopy(cfg)
    target = cfg
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("arch",), "deeplab_v9", r"config\['arch'\]"),
        (("n_classes",), 0, r"config\['n_classes'\] must be >= 1"),
        (("bn_eps",), -1.0, r"config\['bn_eps'\]"),
        (("stem",), KeyError, r"config\['stem'\] is missing"),
        (("stem", "pool_pad"), "1", r"config\['stem'\]\['pool_pad'\] must be an int"),
        (("stages", 2, "dilation"), 0, r"config\['stages'\]\[2\]\['dilation'\] must be >= 1"),
        (("stages", 2, "blocks"), ["a", "b", "c", "d"], r"config\['stages'\]\[2\]\['blocks'\]"),
        (("stages", 0, "name"), "conv2", r"config\['stages'\]\[0\]\['name'\]"),
        (("classifier", "branches", 1, "bias"), 1, r"config\['classifier'\]\['branches'\]\[1\]\['bias'\]"),
        (("msc",), {"scales": [{"shrink": 0, "zoom": 1}]}, r"config\['msc'\]\['scales'\]\[0\]\['shrink'\]"),
        (("freeze_bn",), "yes", r"config\['freeze_bn'\]"),
        (("extra",), 1, r"config\['extra'\] is not a known key"),
    ],
)
def test_validate_config_names_the_bad_key(path, value, message):
    with pytest.raises(ValueError, match=message):
        validate_config(_set(default_config(21), path, value))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("msc", [False, True])
def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path, suffix, msc):
    cfg = tiny_config(msc=msc)
    model = build_seeded(cfg, seed=3)
    metadata = {"source": "unit test", "sha256": "0" * 64, "metrics": {"mIoU": 76.35}}
    path = save_checkpoint(tmp_path / f"model{suffix}", model, cfg, metadata)
    assert path == tmp_path / f"model{suffix}" and os.listdir(tmp_path) == [f"model{suffix}"]
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == cfg and loaded.metadata == metadata
    x = torch.randn(1, 3, 45, 45)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.backbone.stem.conv1.bn.weight.requires_grad
    assert all(not t.is_meta for t in loaded.state_dict().values())
    state_dict, config, meta = read_checkpoint(path)
    assert list(state_dict) == list(model.state_dict()) and config == cfg and meta == metadata


def test_save_accepts_a_plain_state_dict(tmp_path):
    cfg = tiny_config()
    model = build_seeded(cfg)
    save_checkpoint(tmp_path / "sd.pth", model.state_dict(), cfg, {})
    assert torch.equal(load_checkpoint(tmp_path / "sd.pth").classifier.branches[0].weight,
                       model.classifier.branches[0].weight)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 this is not a checkpoint \xff" * 10)


def _write_plain_pth(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _write_missing_keys(path: Path) -> None:
    cfg = tiny_config()
    sd = build_model(cfg).state_dict()
    del sd["backbone.res4.b3.branch2b.bn.running_var"]
    torch.save({"state_dict": sd, "config": cfg, "metadata": {}}, path)


def _write_bad_config(path: Path) -> None:
    cfg = tiny_config()
    sd = build_model(cfg).state_dict()
    cfg["stages"][1]["stride"] = 0
    torch.save({"state_dict": sd, "config": cfg, "metadata": {}}, path)


def _write_safetensors_without_header(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(path))


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("garbage.pth", _write_garbage, "not a readable PyTorch checkpoint"),
        ("garbage.safetensors", _write_garbage, "not a readable safetensors file"),
        ("missing.pth", None, "no such checkpoint file"),
        ("weights.pth", _write_plain_pth, "no 'state_dict' entry"),
        ("partial.pth", _write_missing_keys, "1 missing (first 'backbone.res4.b3.branch2b.bn.running_var')"),
        ("badconfig.pth", _write_bad_config, r"config['stages'][1]['stride'] must be >= 1"),
        ("bare.safetensors", _write_safetensors_without_header, "no 'config' in the safetensors header"),
        ("model.ckpt", _write_garbage, "unsupported checkpoint suffix"),
    ],
)
def test_bad_checkpoint_files_raise_one_line_errors_naming_the_file(tmp_path, name, write, message):
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_save_rejects_unknown_suffix_and_mismatched_state_dict(tmp_path):
    cfg = tiny_config()
    model = build_seeded(cfg)
    with pytest.raises(ValueError, match="unsupported checkpoint suffix"):
        save_checkpoint(tmp_path / "model.bin", model, cfg, {})
    with pytest.raises(CheckpointError, match=r"state_dict\['classifier.branches.0.weight'\] has shape"):
        save_checkpoint(tmp_path / "model.pth", model, tiny_config(n_classes=7), {})
    with pytest.raises(CheckpointError, match="state_dict does not match its config: 2 missing"):
        five_branches = default_config(5, aspp_rates=(1, 2, 3, 4, 5), **TINY)
        save_checkpoint(tmp_path / "model.pth", model, five_branches, {})
    with pytest.raises(CheckpointError, match="metadata is not JSON-serialisable"):
        save_checkpoint(tmp_path / "model.pth", model, cfg, {"when": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, suffix):
    cfg = tiny_config()
    model = build_seeded(cfg)
    target = tmp_path / f"model{suffix}"
    save_checkpoint(target, model, cfg, {"version": 1})
    old = target.read_bytes()

    def fail_midway(_obj, f, *args, **kwargs):  # checkpoints are written through an open file
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    def fail_serialising(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_midway)
    monkeypatch.setattr("safetensors.torch.save", fail_serialising)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint(target, model, cfg, {"version": 2})
    assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == [target.name] and target.read_bytes() == old


def test_save_into_missing_directory_fails_cleanly(tmp_path):
    cfg = tiny_config()
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "model.pth", build_model(cfg), cfg, {})
    assert os.listdir(tmp_path) == []


def test_save_onto_a_directory_fails_and_leaves_no_temp_file(tmp_path):
    # An unwritable target that stays unwritable for root too: a folder in the way.
    cfg = tiny_config()
    (tmp_path / "model.pth").mkdir()
    with pytest.raises(CheckpointError, match="model.pth"):
        save_checkpoint(tmp_path / "model.pth", build_model(cfg), cfg, {})
    assert os.listdir(tmp_path) == ["model.pth"] and os.listdir(tmp_path / "model.pth") == []


def test_models_does_not_import_converter_or_parity():
    import subprocess
    import sys

    code = ("import sys, models; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('converter', 'parity')]; print(bad); sys.exit(1 if bad else 0)")
    root = Path(models.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------- DeepLab v3 / v3+


@pytest.mark.parametrize(
    ("plus", "n_params", "cls"),
    [
        # ResNet-101 + ASPP (1x1, 3 x 3x3, pooling: 2048*256*(1 + 27 + 1), project 1280*256,
        # 5 + 1 BNs x 512) + classifier 256*21 + 21
        (False, 58_040_661, models.DeepLabV3),
        # + decoder: reduce 256*48 (+96), fuse (304*256*9 + 512) and (256*256*9 + 512)
        (True, 59_344_309, models.DeepLabV3Plus),
    ],
)
def test_v3_resnet101_parameter_count_is_exact(plus, n_params, cls):
    with torch.device("meta"):
        model = build_model(models.default_v3_config(21, plus=plus))
    assert type(model) is cls
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize(
    ("plus", "output_stride", "score"),
    [(False, 16, 33), (False, 8, 65), (True, 16, 129), (True, 8, 129)],
)
def test_v3_output_resolution_follows_the_output_stride(plus, output_stride, score):
    cfg = models.default_v3_config(5, plus=plus, output_stride=output_stride, stem_channels=8,
                                   n_blocks=(1, 1, 2, 3), head_channels=16)
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 513, 513)).shape == (1, 5, score, score)


def test_v3_multi_grid_multiplies_the_res5_dilation_per_block():
    with torch.device("meta"):
        bb = build_model(models.default_v3_config(21, output_stride=16)).backbone
    assert [b.branch2b.conv.dilation[0] for b in bb.res5.values()] == [2, 4, 8]
    assert [b.branch2b.conv.padding[0] for b in bb.res5.values()] == [2, 4, 8]
    assert bb.res4.a.branch2a.conv.stride == (2, 2)
    with torch.device("meta"):
        bb = build_model(models.default_v3_config(21, output_stride=8, multi_grid=None)).backbone
    assert [b.branch2b.conv.dilation[0] for b in bb.res5.values()] == [4, 4, 4]


def test_v3_image_pooling_branch_is_a_broadcast_of_the_global_mean():
    aspp = models.deeplab_v3.ImagePoolingASPP(8, 4, [], image_pooling=True, dropout=0.0).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        pooled = torch.relu(aspp.pooling(x.mean(dim=(2, 3), keepdim=True))).expand(-1, -1, 5, 7)
        expected = torch.relu(aspp.project(torch.cat([torch.relu(aspp.convs[0](x)), pooled], dim=1)))
        assert torch.equal(aspp(x), expected)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_v3plus_msc_checkpoint_roundtrip(tmp_path, suffix):
    cfg = models.default_v3_config(5, plus=True, msc=True, stem_channels=8, n_blocks=(1, 1, 2, 3),
                                   head_channels=16)
    model = build_seeded(cfg)
    assert type(model) is MSC and type(model.base) is models.DeepLabV3Plus
    assert list(model.state_dict()) == list(model.base.state_dict())
    loaded = load_checkpoint(save_checkpoint(tmp_path / f"v3p{suffix}", model, cfg, {}))
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_v3_config_keys_are_tied_to_the_arch():
    v3 = models.default_v3_config(21)
    assert v3["freeze_bn"] is False and "decoder" not in v3
    with pytest.raises(ValueError, match=r"config\['decoder'\] is not a known key"):
        validate_config({**v3, "decoder": {"low_level_channels": 48, "channels": 256}})
    with pytest.raises(ValueError, match=r"config\['head'\] is missing"):
        validate_config({**{k: v for k, v in v3.items() if k != "head"}, "arch": "deeplab_v3"})
    with pytest.raises(ValueError, match=r"config\['stages'\]\[3\]\['multi_grid'\]"):
        validate_config(_set(v3, ("stages", 3, "multi_grid"), [1, 2]))
    with pytest.raises(ValueError, match=r"config\['head'\]\['dropout'\]"):
        validate_config(_set(v3, ("head", "dropout"), 1.5))
