"""DeepLabv3.pytorch (chenxi116) ResNet-101 checkpoints, GroupNorm + Weight Standardization
included, onto our DeepLab v3 model.

The file is ``torch.save({"epoch", "state_dict", "optimizer"})`` of a ``DataParallel`` model, so
keys read ``module.conv1.weight``, ``module.bn1.*``, ``module.layer{1-4}.{i}.conv{1,2,3}`` /
``.bn{1,2,3}`` / ``.downsample.{0,1}``, ``module.aspp.aspp{1-5}`` / ``.aspp{1-5}_bn`` (the 1x1
branch, the rate 6/12/18 branches, image pooling), ``module.aspp.conv2`` / ``.bn2`` (projection)
and ``module.aspp.conv3`` (classifier, with bias); a file without the ``module.`` prefix is read
the same way. ``epoch`` and ``optimizer`` are accounted for as training state.

Conventions, from ``deeplab.py`` and ``main.py``: the stride on the 3x3 conv, a floor-mode stem
pool, output stride 16 with layer4 dilations (1, 2, 2) (its first block's ``dilation/2``), ASPP
rates (6, 12, 18), global image pooling with a norm, no dropout; GroupNorm (``--groups 32``,
eps 1e-5) comes with weight standardisation on every conv but the classifier (``--weight_std``;
the repo supports only BN or GN+WS), BatchNorm without. The input is RGB / 255 normalised by the
ImageNet mean and std: our BGR-minus-mean input (mean 103.53, 116.28, 123.675) divided by
``255 * std`` and reversed to RGB is the same. The repo resizes the logits to the input with
``align_corners=True``. The ``--beta`` stem (three convs with no norm between) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from deeplab_caffe import models
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign.rules import ForeignFormat, KeyMapping, Rule, load_torch_file
from deeplab_caffe.models.config import block_ids

__all__ = ["DeepLabV3PytorchOptions", "DEEPLABV3_PYTORCH", "deeplabv3_pytorch_format", "deeplabv3_pytorch_config",
           "deeplabv3_pytorch_mapping", "read_deeplabv3_pytorch", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB"]

#: ``transforms.Normalize`` in the repo's datasets (RGB, 0-1 scale)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_PREFIXES = ("module.", "")
_BLOCK_CONVS = (("conv1", "bn1", "branch2a"), ("conv2", "bn2", "branch2b"), ("conv3", "bn3", "branch2c"),
                ("downsample.0", "downsample.1", "branch1"))


def _conv_norm(conv: str, norm: str, ours: str) -> tuple[Rule, Rule]:
    return Rule(f"{conv}.weight", f"{ours}.conv.weight"), Rule(f"{norm}.{{p}}", f"{ours}.bn.{{p}}")


def _rules(pre: str) -> list[Rule]:
    rules = [*_conv_norm(f"{pre}conv1", f"{pre}bn1", "backbone.stem.conv1")]
    for layer in (1, 2, 3, 4):
        for conv, norm, ours in _BLOCK_CONVS:
            block = f"{pre}layer{layer}.{{b:ordinal0}}"
            rules += _conv_norm(f"{block}.{conv}", f"{block}.{norm}", f"backbone.res{layer + 1}.{{b}}.{ours}")
    for k in (1, 2, 3, 4):
        rules += _conv_norm(f"{pre}aspp.aspp{k}", f"{pre}aspp.aspp{k}_bn", f"aspp.convs.{k - 1}")
    rules += [*_conv_norm(f"{pre}aspp.aspp5", f"{pre}aspp.aspp5_bn", "aspp.pooling"),
              *_conv_norm(f"{pre}aspp.conv2", f"{pre}aspp.bn2", "aspp.project"),
              Rule(f"{pre}aspp.conv3.{{p:weight|bias}}", "classifier.{p}")]
    return rules


def deeplabv3_pytorch_mapping() -> KeyMapping:
    """The key rules from DeepLabv3.pytorch's names (with or without ``module.``) to ours."""
    return KeyMapping(
        name="deeplabv3-pytorch",
        rules=tuple(rule for pre in _PREFIXES for rule in _rules(pre)),
        outside=((r"epoch|optimizer|best_\w+", "training state saved with the weights, not the model"),),
    )


def read_deeplabv3_pytorch(path: Path) -> dict[str, Any]:
    """The checkpoint's ``state_dict`` entries, then its other top-level entries (``epoch``,
    ``optimizer``) as keys of their own so that the import accounts for them. A bare state_dict
    (no ``state_dict`` entry) is read as the weights alone."""
    path = Path(path)
    data = load_torch_file(path)
    if not isinstance(data, Mapping):
        raise ConversionError(path, f"not a DeepLabv3.pytorch checkpoint (holds a {type(data).__name__})")
    if "state_dict" not in data:
        return dict(data)
    if not isinstance(data["state_dict"], Mapping):
        raise ConversionError(path, "'state_dict' is not a dict of tensors")
    return {**data["state_dict"], **{k: v for k, v in data.items() if k != "state_dict"}}


@dataclass(frozen=True)
class DeepLabV3PytorchOptions:
    """What ``main.py``'s arguments say and the weights do not: ``--groups`` (GroupNorm groups)
    and ``--weight_std`` (``None``: with GroupNorm, as the repo's only GN recipe has it)."""

    groups: int = 32
    weight_std: bool | None = None


def _key(state: Mapping[str, Any], name: str) -> str | None:
    return next((f"{pre}{name}" for pre in _PREFIXES if f"{pre}{name}" in state), None)


def _shape(state: Mapping[str, Any], name: str, path: Path) -> tuple[int, ...]:
    key = _key(state, name)
    if key is None:
        raise ConversionError(path, f"missing key module.{name} (not a DeepLabv3.pytorch checkpoint?)")
    return tuple(np.shape(state[key]))


def _stages(state: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    stages = []
    for layer, (stride, grid_rest) in enumerate(((1, 1), (2, 1), (2, 1), (1, 2)), start=1):
        n = 0
        while _key(state, f"layer{layer}.{n}.conv1.weight") is not None:
            n += 1
        if n == 0:
            raise ConversionError(path, f"missing key module.layer{layer}.0.conv1.weight (not a DeepLabv3.pytorch ResNet?)")
        stage = {"name": f"res{layer + 1}", "blocks": block_ids(n),
                 "mid_channels": _shape(state, f"layer{layer}.0.conv1.weight", path)[0],
                 "out_channels": _shape(state, f"layer{layer}.0.conv3.weight", path)[0], "stride": stride,
                 "dilation": 1}
        if grid_rest != 1:  # layer4: the first block dilation 2 / 2, the others 2
            stage["multi_grid"] = [1] + [grid_rest] * (n - 1)
        stages.append(stage)
    return stages


def deeplabv3_pytorch_config(state: Mapping[str, Any], path: str | Path = "<deeplabv3-pytorch>",
                             options: DeepLabV3PytorchOptions | None = None) -> dict[str, Any]:
    """Our v3 config for a DeepLabv3.pytorch state dict (see the module doc)."""
    path, opts = Path(path), options or DeepLabV3PytorchOptions()
    if _key(state, "conv1.0.weight") is not None:
        raise ConversionError(path, "the --beta stem (three convs without norm between them) is not supported")
    conv1 = _shape(state, "conv1.weight", path)
    group_norm = _key(state, "bn1.running_mean") is None
    config: dict[str, Any] = {
        "arch": "deeplab_v3", "n_classes": _shape(state, "aspp.conv3.weight", path)[0], "in_channels": conv1[1],
        "bn_eps": 1e-5,
        "stem": {"channels": conv1[0], "conv_kernel": conv1[-1], "conv_stride": 2, "conv_pad": conv1[-1] // 2,
                 "pool_kernel": 3, "pool_stride": 2, "pool_pad": 1, "pool_ceil": False},
        "stages": _stages(state, path),
        "head": {"channels": _shape(state, "aspp.aspp1.weight", path)[0], "rates": [6, 12, 18],
                 "image_pooling": True, "dropout": 0.0},
        "msc": None, "freeze_bn": False, "stride_in_1x1": False, "norm": "gn" if group_norm else "bn",
        "weight_std": group_norm if opts.weight_std is None else opts.weight_std,
        "input_std": [255.0 * s for s in IMAGENET_STD_RGB[::-1]], "input_rgb": True,
    }
    if group_norm:
        config["gn_groups"] = opts.groups
    try:
        models.validate_config(config)
        widths = [config["stem"]["channels"], config["head"]["channels"]]
        widths += [c for s in config["stages"] for c in (s["mid_channels"], s["out_channels"])]
        for channels in widths:
            if group_norm and channels % opts.groups:
                raise ValueError(f"{channels} channels do not split into {opts.groups} GroupNorm groups")
    except ValueError as err:
        raise ConversionError(path, str(err)) from err
    return config


def _notes(opts: DeepLabV3PytorchOptions) -> tuple[str, ...]:
    mean = ", ".join(f"{255 * v:g}" for v in IMAGENET_MEAN_RGB[::-1])
    return (
        f"input: BGR, 0-255, minus the mean ({mean}); the model divides by 255 * the ImageNet std and reverses "
        "the channels to RGB (the repo's ToTensor + Normalize)",
        f"norm: GroupNorm ({opts.groups} groups) with weight standardisation when the file has no running "
        "statistics, else BatchNorm",
        "backbone: stride on the 3x3 conv, 7x7 stem, floor-mode pool, output stride 16, layer4 dilations 1, 2, 2",
        "ASPP: rates (6, 12, 18), global image pooling with a norm, no dropout",
        "output: logits at stride 16; the repo resizes them to the input with align_corners=True",
    )


def deeplabv3_pytorch_format(options: DeepLabV3PytorchOptions | None = None) -> ForeignFormat:
    """The ``ForeignFormat`` for DeepLabv3.pytorch files under ``options``."""
    opts = options or DeepLabV3PytorchOptions()
    description = "DeepLabv3.pytorch (chenxi116) ResNet-101 .pth, BN or GroupNorm + Weight Standardization"
    return ForeignFormat("deeplabv3-pytorch", description, read_deeplabv3_pytorch,
                         partial(deeplabv3_pytorch_config, options=opts), deeplabv3_pytorch_mapping(), _notes(opts),
                         mean_bgr=tuple(255 * m for m in IMAGENET_MEAN_RGB[::-1]))


DEEPLABV3_PYTORCH = deeplabv3_pytorch_format()
