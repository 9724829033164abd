"""The seed port's checkpoints (kazuto1011/deeplab-pytorch, DeepLab v2 ResNet-101 MSC ``.pth``).

Its released files (``deeplabv2_resnet101_msc-cocostuff10k-20000.pth``, ``...-cocostuff164k-100000.pth``,
``...-vocaug-20000.pth``) are plain ``state_dict``s of ``MSC(DeepLabV2(...))``: keys under ``base.``,
the stem ``base.layer1.conv1.{conv,bn}``, blocks ``base.layer{2-5}.block{1..N}.{reduce, conv3x3,
increase, shortcut}.{conv,bn}`` (the Caffe ``branch2a, 2b, 2c, 1``), the ASPP ``base.aspp.c{i}``.
Its model is ours layer for layer (stride on the 1x1 reduce, ceil-mode pool, BatchNorm eps 1e-5);
what the file does not store is fixed here as the port fixes it: ASPP rates 6, 12, 18, 24
(``DeepLabV2_ResNet101_MSC``) and the MSC pyramid 0.5x, 0.75x resized with
``F.interpolate(..., align_corners=False)`` (``config["msc"]["resize"] = "deeplab-pytorch"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeplab_caffe import models
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.foreign.rules import ForeignFormat, KeyMapping, Rule, export_state_dict, load_torch_file

#: the port's ASPP rates (``DeepLabV2_ResNet101_MSC`` and ``hubconf.deeplabv2_resnet101``)
ASPP_RATES = (6, 12, 18, 24)
#: the port's block modules -> Caffe's branches
BRANCHES = {"reduce": "branch2a", "conv3x3": "branch2b", "increase": "branch2c", "shortcut": "branch1"}

MAPPING = KeyMapping(
    name="deeplab-pytorch",
    rules=(
        Rule("base.layer1.conv1.conv.weight", "backbone.stem.conv1.conv.weight"),
        Rule("base.layer1.conv1.bn.{p}", "backbone.stem.conv1.bn.{p}"),
        *(Rule(f"base.layer{{s:[2-5]}}.block{{b:ordinal1}}.{port}.{{leaf:conv|bn}}.{{p}}",
               f"backbone.res{{s}}.{{b}}.{caffe}.{{leaf}}.{{p}}") for port, caffe in BRANCHES.items()),
        Rule("base.aspp.c{i:\\d+}.{p:weight|bias}", "classifier.branches.{i}.{p}"),
    ),
)

_BLOCK = re.compile(r"base\.layer(?P<stage>[2-5])\.block(?P<block>\d+)\.")
_ASPP = re.compile(r"base\.aspp\.c(?P<index>\d+)\.weight")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The port's ``.pth``: a plain ``{key: tensor}`` (what its ``torch.save(state_dict)`` wrote)."""
    payload = load_torch_file(path)
    if not isinstance(payload, Mapping):
        raise ConversionError(path, f"not a deeplab-pytorch state_dict (holds a {type(payload).__name__}, not a dict)")
    for key, value in payload.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(path, f"not a deeplab-pytorch state_dict: key {key!r} holds a "
                                        f"{type(value).__name__}, not a tensor")
    return dict(payload)


def _shape(state: Mapping[str, Any], key: str, path: Path, dims: int) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(path, f"missing key {key}: not a deeplab-pytorch DeepLab v2 MSC checkpoint")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise ConversionError(path, f"key {key}: shape {shape}, expected {dims} dimensions")
    return shape


def _count(numbers: set[int], what: str, path: Path) -> int:
    if not numbers or numbers != set(range(1, len(numbers) + 1)):
        raise ConversionError(path, f"{what} numbered {sorted(numbers) or 'nothing'}: not 1..N")
    return len(numbers)


def derive_config(state: Mapping[str, Any], path: Path) -> dict:
    """Our model config for a port checkpoint: classes, blocks per stage and widths read from
    the tensors; ASPP rates and the MSC pyramid fixed as the port fixes them."""
    stem = _shape(state, "base.layer1.conv1.conv.weight", path, 4)
    blocks: dict[int, set[int]] = {stage: set() for stage in range(2, 6)}
    branches: set[int] = set()
    for key in state:
        if match := _BLOCK.match(key):
            blocks[int(match["stage"])].add(int(match["block"]))
        elif match := _ASPP.fullmatch(key):
            branches.add(int(match["index"]))
    n_blocks = [_count(blocks[stage], f"base.layer{stage}.block* (1-based)", path) for stage in range(2, 6)]
    if _count({b + 1 for b in branches}, "ASPP branches base.aspp.c* (0-based, shown from 1)", path) != len(ASPP_RATES):
        raise ConversionError(path, f"{len(branches)} ASPP branches, the port's DeepLab v2 has {len(ASPP_RATES)} "
                                    f"(rates {', '.join(map(str, ASPP_RATES))})")
    widths = [_shape(state, f"base.layer{stage}.block1.reduce.conv.weight", path, 4)[0] for stage in range(2, 6)]
    n_classes = _shape(state, "base.aspp.c0.weight", path, 4)[0]
    config = models.default_config(n_classes, n_blocks=n_blocks, aspp_rates=ASPP_RATES, msc=True,
                                   stem_channels=stem[0], widths=widths)
    config["in_channels"] = stem[1]
    config["msc"]["resize"] = "deeplab-pytorch"
    return config


def port_state_dict(model: nn.Module, source: str | Path) -> dict[str, torch.Tensor]:
    """``model``'s weights in the port's key layout (``base.layer2.block1.reduce.conv.weight``, ...),
    which the port's ``DeepLabV2_ResNet101_MSC`` loads with ``strict=True``: the rules inverted.
    Raises ``ConversionError(source, ...)`` when the port's model cannot express ours (not a
    DeepLab v2, other ASPP rates, BatchNorm eps, stem)."""
    config = getattr(model, "config", None) or {}
    if config.get("arch") != "deeplab_v2":
        raise ConversionError(source, f"the port's layout holds a DeepLab v2, this model is {config.get('arch')!r}")
    written = export_state_dict(model.state_dict(), MAPPING, model)
    derived = derive_config(written, Path(source))
    for key in ("n_classes", "in_channels", "bn_eps", "stem", "stages", "classifier"):
        if derived[key] != config[key]:
            raise ConversionError(source, f"the port's DeepLab v2 cannot hold this model: its {key} differs "
                                          f"(ours {config[key]!r}, the port's {derived[key]!r})")
    return written


FORMAT = ForeignFormat(
    name="deeplab-pytorch",
    description="kazuto1011/deeplab-pytorch DeepLab v2 ResNet MSC state_dict (.pth)",
    read=read_state_dict,
    derive_config=derive_config,
    mapping=MAPPING,
    write_layout=port_state_dict,
    notes=(
        "ASPP rates 6, 12, 18, 24 (the port's DeepLabV2_ResNet101_MSC; not stored in the file)",
        "MSC pyramid 0.5x, 0.75x resized as the port does: F.interpolate(scale_factor, bilinear, "
        "align_corners=False), score maps back to the 1x size with align_corners=False, max fusion",
        "BatchNorm eps 1e-5 (the port's _ConvBnReLU), frozen",
        "input: BGR 0-255 minus the mean (104.008, 116.669, 122.675), the port's configs",
    ),
)
