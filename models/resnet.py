"""ResNet as MSRA/DeepLab built it in Caffe, with module names that echo the Caffe graph.

Differences from torchvision's ResNet that matter for exactness: the stride sits on the first
1x1 convolution (``branch2a``) and on the projection (``branch1``), the stem's max pool rounds
up (``ceil_mode=True``), every first block of a stage has a projection, and res4/res5 use
dilation instead of stride (output stride 8).

Options for other ports' ResNets (``models.config``): the stride on the 3x3 convolution
(``stride_in_1x1: false``, torchvision/Detectron2), a deep stem of three 3x3 convolutions
(``stem.deep_channels``), a floor-mode stem pool (``stem.pool_ceil: false``), GroupNorm instead
of BatchNorm (``norm: "gn"``) and weight standardisation (``weight_std: true``).

``ConvBN`` returns the BatchNorm output *before* the ReLU (Caffe's ``scale*`` top); every ReLU
is applied out of place so that forward hooks see each Caffe blob unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .vgg import vgg_score_map_size

__all__ = ["Norm", "WSConv2d", "ConvBN", "Bottleneck", "ResStage", "Stem", "ResNetBackbone",
           "score_map_size"]


@dataclass(frozen=True)
class Norm:
    """How every ``ConvBN`` normalises: ``kind`` ``"bn"`` (BatchNorm2d) or ``"gn"`` (GroupNorm
    with ``groups`` groups), epsilon ``eps``, and weight standardisation of the convolution
    (``weight_std``, see ``WSConv2d``)."""

    eps: float = 1e-5
    kind: str = "bn"
    groups: int = 32
    weight_std: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Norm:
        """The ``bn_eps``, ``norm``, ``gn_groups`` and ``weight_std`` entries of a model config."""
        return cls(eps=float(config["bn_eps"]), kind=config.get("norm", "bn"),
                   groups=int(config.get("gn_groups", 32)), weight_std=bool(config.get("weight_std", False)))

    def layer(self, channels: int) -> nn.Module:
        if self.kind == "gn":
            return nn.GroupNorm(self.groups, channels, eps=self.eps)
        return nn.BatchNorm2d(channels, eps=self.eps)


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al.; DeepLabv3.pytorch's ``Conv2d``): each
    output filter is centred and divided by its unbiased standard deviation plus ``1e-5``
    (added to the std, not the variance) before convolving. Parameters as ``nn.Conv2d``."""

    std_eps = 1e-5

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        std = w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + self.std_eps
        return w / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d (Caffe: Convolution + BatchNorm + Scale).

    ``forward`` maps ``N x in x H x W`` to ``N x out x H' x W'`` and does not apply a ReLU.
    ``norm`` (default: BatchNorm with ``eps``) may make ``.bn`` a GroupNorm and ``.conv`` a
    ``WSConv2d``; the module names stay ``conv`` and ``bn`` either way.
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
        norm: Norm | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        norm = norm if norm is not None else Norm(eps=eps)
        conv = WSConv2d if norm.weight_std else nn.Conv2d
        self.conv = conv(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=False,
        )
        self.bn = norm.layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    """Caffe ResNet bottleneck ``res{S}{B}``: relu(branch2c(branch2b(branch2a(x))) + shortcut).

    ``branch2a`` (1x1) carries the stride (on ``branch2b`` instead with ``stride_in_1x1=False``),
    ``branch2b`` is 3x3 with dilation ``d`` and pad ``d``, ``branch2c`` is 1x1; ``branch1``
    (1x1, same stride) is the projection shortcut when present.
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
        norm: Norm | None = None,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        if not projection and (stride != 1 or in_channels != out_channels):
            raise ValueError(
                f"a block without projection needs stride 1 and in == out channels, got "
                f"stride {stride}, {in_channels} -> {out_channels}"
            )
        norm = norm if norm is not None else Norm(eps=eps)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.branch2a = ConvBN(in_channels, mid_channels, 1, stride=stride_1x1, norm=norm)
        self.branch2b = ConvBN(mid_channels, mid_channels, 3, stride=stride_3x3, padding=dilation,
                               dilation=dilation, norm=norm)
        self.branch2c = ConvBN(mid_channels, out_channels, 1, norm=norm)
        self.branch1 = ConvBN(in_channels, out_channels, 1, stride=stride, norm=norm) if projection else None
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
        norm: Norm | None = None,
        stride_in_1x1: bool = True,
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
                norm=norm if norm is not None else Norm(eps=eps),
                stride_in_1x1=stride_in_1x1,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.values():
            x = block(x)
        return x


class Stem(nn.Module):
    """``conv1`` (ConvBN, 7x7/2 pad 3) -> ReLU -> ``pool1`` (max, ceil mode).

    With ``stem["deep_channels"]`` (Detectron2's "deeplab" stem) ``conv1`` gives that many
    channels and is followed by ``conv2`` (3x3, same width) and ``conv3`` (3x3, to
    ``stem["channels"]``), each with a ReLU. ``stem["pool_ceil"]: false`` pools in floor mode.
    """

    def __init__(self, in_channels: int, stem: dict[str, Any], eps: float = 1e-5,
                 norm: Norm | None = None) -> None:
        super().__init__()
        norm = norm if norm is not None else Norm(eps=eps)
        deep = stem.get("deep_channels")
        self.conv1 = ConvBN(
            in_channels, deep or stem["channels"], stem["conv_kernel"], stride=stem["conv_stride"],
            padding=stem["conv_pad"], norm=norm,
        )
        if deep:
            self.conv2 = ConvBN(deep, deep, 3, padding=1, norm=norm)
            self.conv3 = ConvBN(deep, stem["channels"], 3, padding=1, norm=norm)
        self.pool1 = nn.MaxPool2d(stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"],
                                  ceil_mode=stem.get("pool_ceil", True))
        self.inplace = False  # models.optimize_for_inference: ReLU in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=self.inplace)
        if hasattr(self, "conv2"):
            x = F.relu(self.conv2(x), inplace=self.inplace)
            x = F.relu(self.conv3(x), inplace=self.inplace)
        return self.pool1(x)


class ResNetBackbone(nn.Module):
    """``stem``, ``res2`` .. ``res5`` built from a model config (see ``models.config``).

    Maps ``N x in_channels x H x W`` to ``N x res5.out_channels x h x w``; with the default
    strides a 513 x 513 input gives 65 x 65 (output stride 8, ceil-mode rounding).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        norm = Norm.from_config(config)
        std = config.get("input_std")
        self.input_std = None if std is None else tuple(float(v) for v in std)  # config, not state
        self.input_rgb = bool(config.get("input_rgb", False))
        self.stem = Stem(config["in_channels"], config["stem"], norm=norm)
        channels = config["stem"]["channels"]
        for stage in config["stages"]:
            self.add_module(stage["name"], ResStage(
                channels, list(stage["blocks"]), stage["mid_channels"], stage["out_channels"],
                stride=stage["stride"], dilation=stage["dilation"], norm=norm,
                multi_grid=stage.get("multi_grid"), stride_in_1x1=config.get("stride_in_1x1", True),
            ))
            channels = stage["out_channels"]
        self.out_channels = channels
        self.stage_channels = {s["name"]: s["out_channels"] for s in config["stages"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["res5"]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output: ``{"stem", "res2", "res3", "res4", "res5"}``.

        With ``config["input_std"]`` the input (BGR minus the mean) is first divided by those
        per-channel values; with ``config["input_rgb"]`` its channels are reversed (B, G, R ->
        R, G, B) for a network trained on RGB."""
        if self.input_std is not None:
            x = x / torch.tensor(self.input_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.input_rgb:
            x = x.flip(1)
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
