"""DeepLab-VGG16: DeepLab v1 LargeFOV and DeepLab v2 VGG16 with ASPP-L.

Input: float32 ``N x 3 x H x W``, BGR, 0-255 minus the mean. Output: logits
``N x n_classes x h x w`` at the score-map resolution (output stride 8 in the official graphs).

Layout (``config["arch"] == "deeplab_vgg"``, see ``models.config``), module names = Caffe's:

- ``backbone.conv{s}_{i}``: 3x3 convolutions (pad and dilation per stage), each followed by a
  ReLU; ``backbone.pool{s}``: max pooling after each stage, Caffe's ceil rounding (pool1-3
  3x3 stride 2 pad 1, pool4/pool5 3x3 stride 1 pad 1 in the official graphs);
  ``backbone.pool5a``: the LargeFOV graph's 3x3 average pooling (padding counted), if present.
- ``classifier.branches.{k}``: ``fc6`` (atrous 3x3) -> ReLU -> Dropout -> ``fc7`` (1x1) -> ReLU
  -> Dropout -> ``fc8`` (1x1, the classes); the branches' scores are summed in order (ASPP-L:
  four branches at dilations 6/12/18/24; LargeFOV: one at 12).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import validate_config

__all__ = ["DeepLabVGG", "vgg_score_map_size"]


def _pool(spec: dict[str, Any]) -> nn.Module:
    """A Caffe Pooling layer: MAX or AVE (AVE divides by the window clipped to input + pad, as
    Caffe does: ``count_include_pad``), rounding up."""
    kind = nn.MaxPool2d if spec["kind"] == "max" else nn.AvgPool2d
    extra = {} if spec["kind"] == "max" else {"count_include_pad": True}
    return kind(spec["kernel"], stride=spec["stride"], padding=spec["pad"], ceil_mode=True, **extra)


class _Backbone(nn.Module):
    """VGG16's five convolution stages with their pools (and ``pool5a`` when configured)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.order: list[tuple[str, bool]] = []  # (module name, followed by a ReLU)
        channels = config["in_channels"]
        for s, stage in enumerate(config["stages"], start=1):
            for i, width in enumerate(stage["channels"], start=1):
                name = f"conv{s}_{i}"
                self.add_module(name, nn.Conv2d(channels, width, 3, padding=stage["pad"], dilation=stage["dilation"]))
                self.order.append((name, True))
                channels = width
            self.add_module(f"pool{s}", _pool(stage["pool"]))
            self.order.append((f"pool{s}", False))
        if config["pool5a"] is not None:
            self.add_module("pool5a", _pool(config["pool5a"]))
            self.order.append(("pool5a", False))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, relu in self.order:
            x = getattr(self, name)(x)
            if relu:
                x = torch.relu(x)
        return x


class _Branch(nn.Module):
    """One fc6 -> fc7 -> fc8 branch (ReLU and Dropout after fc6 and fc7)."""

    def __init__(self, in_channels: int, channels: int, n_classes: int, spec: dict[str, Any], dropout: float) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, spec["kernel"], padding=spec["pad"], dilation=spec["dilation"])
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, n_classes, 1)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(torch.relu(self.fc6(x)))
        x = self.drop7(torch.relu(self.fc7(x)))
        return self.fc8(x)


class _Classifier(nn.Module):
    """The fc6-fc8 branches, summed in order (Caffe Eltwise SUM); one branch: its scores."""

    def __init__(self, in_channels: int, n_classes: int, head: dict[str, Any]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_Branch(in_channels, head["channels"], n_classes, spec, head["dropout"])
                                      for spec in head["branches"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)  # out of place: a hook may hold the first branch's output
        return out


class DeepLabVGG(nn.Module):
    """DeepLab-VGG16 (LargeFOV or ASPP-L) from a ``deeplab_vgg`` config; ``.config`` holds it.

    ``init`` is accepted for ``build_model``'s interface; PyTorch's default initialisation is
    kept (these models are converted, not trained from scratch here).
    """

    def __init__(self, config: dict[str, Any], *, init: bool = True) -> None:
        super().__init__()
        validate_config(config)
        self.config = config
        self.backbone = _Backbone(config)
        self.classifier = _Classifier(self.backbone.out_channels, config["n_classes"], config["classifier"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` -> ``N x n_classes x h x w`` (see ``vgg_score_map_size``)."""
        return self.classifier(self.backbone(x))


def _pooled(n: int, spec: dict[str, Any]) -> int:
    """Caffe's pooling output size: rounded up, minus a last window starting in the padding."""
    k, s, p = spec["kernel"], spec["stride"], spec["pad"]
    out = -(-(n + 2 * p - k) // s) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


def vgg_score_map_size(config: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of a ``deeplab_vgg`` model's score map for an ``H x W`` input, by
    Caffe's arithmetic (convolutions keep the size when pad equals dilation)."""
    def one_axis(n: int) -> int:
        for stage in config["stages"]:
            n += len(stage["channels"]) * (2 * stage["pad"] - 2 * stage["dilation"])  # each 3x3 conv
            n = _pooled(n, stage["pool"])
        if config["pool5a"] is not None:
            n = _pooled(n, config["pool5a"])
        branch = config["classifier"]["branches"][0]
        return n + 2 * branch["pad"] - branch["dilation"] * (branch["kernel"] - 1)

    return one_axis(int(size[0])), one_axis(int(size[1]))
