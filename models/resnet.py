"""ResNet as MSRA/DeepLab built it in Caffe, with module names that echo the Caffe graph.

Differences from torchvision's ResNet that matter for exactness: the stride sits on the first
1x1 convolution (``branch2a``) and on the projection (``branch1``), the stem's max pool rounds
up (``ceil_mode=True``), every first block of a stage has a projection, and res4/res5 use
dilation instead of stride (output stride 8).

``ConvBN`` returns the BatchNorm output *before* the ReLU (Caffe's ``scale*`` top); every ReLU
is applied out of place so that forward hooks see each Caffe blob unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .vgg import vgg_score_map_size

__all__ = ["ConvBN", "Bottleneck", "ResStage", "Stem", "ResNetBackbone", "score_map_size"]


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (Caffe: Convolution + BatchNorm + Scale).

    ``forward`` maps ``N x in x H x W`` to ``N x out x H' x W'`` and does not apply a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    """Caffe ResNet bottleneck ``res{S}{B}``: relu(branch2c(branch2b(branch2a(x))) + shortcut).

    ``branch2a`` (1x1) carries the stride, ``branch2b`` is 3x3 with dilation ``d`` and pad ``d``,
    ``branch2c`` is 1x1; ``branch1`` (1x1, same stride) is the projection shortcut when present.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        projection: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not projection and (stride != 1 or in_channels != out_channels):
            raise ValueError(
                f"a block without projection needs stride 1 and in == out channels, got "
                f"stride {stride}, {in_channels} -> {out_channels}"
            )
        self.branch2a = ConvBN(in_channels, mid_channels, 1, stride=stride, eps=eps)
        self.branch2b = ConvBN(mid_channels, mid_channels, 3, padding=dilation, dilation=dilation,
                               eps=eps)
        self.branch2c = ConvBN(mid_channels, out_channels, 1, eps=eps)
        self.branch1 = ConvBN(in_channels, out_channels, 1, stride=stride, eps=eps) if projection else None
        self.inplace = False  # models.optimize_for_inference: ReLU and the residual add in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.branch2a(x), inplace=self.inplace)
        h = F.relu(self.branch2b(h), inplace=self.inplace)
        h = self.branch2c(h)
        shortcut = self.branch1(x) if self.branch1 is not None else x
        if self.inplace:
            return F.relu_(h.add_(shortcut))
        return F.relu(h + shortcut)


class ResStage(nn.ModuleDict):
    """A ResNet stage ``res{S}``: blocks keyed by their Caffe ids (``a, b, c`` or
    ``a, b1, ..., bN``), run in order. The first block has the projection and the stride.
    ``multi_grid`` (one factor per block) multiplies the dilation per block (DeepLab v3)."""

    def __init__(
        self,
        in_channels: int,
        blocks: list[str],
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        eps: float = 1e-5,
        multi_grid: list[int] | None = None,
    ) -> None:
        super().__init__()
        grid = multi_grid if multi_grid is not None else [1] * len(blocks)
        if len(grid) != len(blocks):
            raise ValueError(f"multi_grid needs one factor per block, got {grid} for {blocks}")
        for i, block_id in enumerate(blocks):
            self[block_id] = Bottleneck(
                in_channels if i == 0 else out_channels,
                mid_channels,
                out_channels,
                stride=stride if i == 0 else 1,
                dilation=dilation * grid[i],
                projection=i == 0,
                eps=eps,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.values():
            x = block(x)
        return x


class Stem(nn.Module):
    """``conv1`` (ConvBN, 7x7/2 pad 3) -> ReLU -> ``pool1`` (max, ceil mode)."""

    def __init__(self, in_channels: int, stem: dict[str, int], eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = ConvBN(
            in_channels, stem["channels"], stem["conv_kernel"], stride=stem["conv_stride"],
            padding=stem["conv_pad"], eps=eps,
        )
        self.pool1 = nn.MaxPool2d(stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"],
                                  ceil_mode=True)
        self.inplace = False  # models.optimize_for_inference: ReLU in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool1(F.relu(self.conv1(x), inplace=self.inplace))


class ResNetBackbone(nn.Module):
    """``stem``, ``res2`` .. ``res5`` built from a model config (see ``models.config``).

    Maps ``N x in_channels x H x W`` to ``N x res5.out_channels x h x w``; with the default
    strides a 513 x 513 input gives 65 x 65 (output stride 8, ceil-mode rounding).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        eps = float(config["bn_eps"])
        self.stem = Stem(config["in_channels"], config["stem"], eps=eps)
        channels = config["stem"]["channels"]
        for stage in config["stages"]:
            self.add_module(stage["name"], ResStage(
                channels, list(stage["blocks"]), stage["mid_channels"], stage["out_channels"],
                stride=stage["stride"], dilation=stage["dilation"], eps=eps,
                multi_grid=stage.get("multi_grid"),
            ))
            channels = stage["out_channels"]
        self.out_channels = channels
        self.stage_channels = {s["name"]: s["out_channels"] for s in config["stages"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["res5"]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output: ``{"stem", "res2", "res3", "res4", "res5"}``."""
        features = {"stem": self.stem(x)}
        features["res2"] = self.res2(features["stem"])
        features["res3"] = self.res3(features["res2"])
        features["res4"] = self.res4(features["res3"])
        features["res5"] = self.res5(features["res4"])
        return features


def score_map_size(config: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of the score map for an ``H x W`` input, with Caffe's arithmetic.

    conv1 rounds down, pool1 rounds up (and drops a last window that would start in the
    padding), each stage's strided 1x1 convs round down, 3x3 convs keep the size, and the
    classifier keeps it when its pad equals its dilation. Equal to what the model computes.
    """
    if config["arch"] == "deeplab_vgg":
        return vgg_score_map_size(config, size)
    stem, branch = config["stem"], config["classifier"]["branches"][0]

    def one_axis(n: int) -> int:
        n = (n + 2 * stem["conv_pad"] - stem["conv_kernel"]) // stem["conv_stride"] + 1
        k, s, p = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
        pooled = -(-(n + 2 * p - k) // s) + 1
        if p and (pooled - 1) * s >= n + p:
            pooled -= 1
        n = pooled
        for stage in config["stages"]:
            n = (n - 1) // stage["stride"] + 1
        return n + 2 * branch["pad"] - branch["dilation"] * (branch["kernel"] - 1)

    return one_axis(int(size[0])), one_axis(int(size[1]))
