"""DeepLab v3 and v3+ heads on the Caffe-style ResNet backbone (``models.resnet``).

v3: ASPP with a 1x1 branch, atrous 3x3 branches and image pooling, each Conv-BN-ReLU,
concatenated and projected by a 1x1 Conv-BN-ReLU (+ dropout), then a 1x1 classifier with bias.
v3+: the same ASPP, upsampled to the ``res2`` features (stride 4) and concatenated with them
after a 1x1 reduction, then two 3x3 Conv-BN-ReLU and the classifier.

Input as for v2 (``N x 3 x H x W``). Output: logits at the head's resolution, output stride 16
or 8 for v3 and 4 for v3+; the caller resizes them to the labels. Upsampling inside v3+ is
bilinear with aligned corners (``caffe_interp``), as the reference TensorFlow code does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import validate_config
from .deeplab_v2 import freeze_batchnorm, init_weights
from .interp import caffe_interp
from .resnet import ConvBN, ResNetBackbone

__all__ = ["ImagePoolingASPP", "Decoder", "DeepLabV3", "DeepLabV3Plus"]


class ImagePoolingASPP(nn.Module):
    """DeepLab v3 ASPP: ``convs.0`` (1x1), ``convs.{i}`` (3x3, dilation ``rates[i-1]``),
    ``pooling`` (global average then 1x1; absent without image pooling), concatenated in that
    order and projected by ``project`` (1x1). Every conv is a ``ConvBN`` followed by a ReLU.

    ``N x in_channels x h x w`` -> ``N x channels x h x w``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rates: Sequence[int],
        image_pooling: bool = True,
        dropout: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvBN(in_channels, channels, 1, eps=eps)])
        for r in rates:
            self.convs.append(ConvBN(in_channels, channels, 3, padding=r, dilation=r, eps=eps))
        self.pooling = ConvBN(in_channels, channels, 1, eps=eps) if image_pooling else None
        n_branches = len(self.convs) + (1 if image_pooling else 0)
        self.project = ConvBN(n_branches * channels, channels, 1, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.relu(conv(x)) for conv in self.convs]
        if self.pooling is not None:
            pooled = F.relu(self.pooling(x.mean(dim=(2, 3), keepdim=True)))
            outs.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.dropout(F.relu(self.project(torch.cat(outs, dim=1))))


class Decoder(nn.Module):
    """DeepLab v3+ decoder: ``reduce`` (1x1 on the low-level features), then ``fuse.0`` and
    ``fuse.1`` (3x3) on the concatenation ``[upsampled ASPP output, reduced features]``."""

    def __init__(
        self, low_level_in: int, low_level_channels: int, aspp_channels: int, channels: int,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.reduce = ConvBN(low_level_in, low_level_channels, 1, eps=eps)
        self.fuse = nn.ModuleList([
            ConvBN(aspp_channels + low_level_channels, channels, 3, padding=1, eps=eps),
            ConvBN(channels, channels, 3, padding=1, eps=eps),
        ])

    def forward(self, aspp: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        """``aspp``: ``N x A x h x w``; ``low_level``: ``N x L x H4 x W4`` -> ``N x C x H4 x W4``."""
        up = caffe_interp(aspp, low_level.shape[-2:])
        x = torch.cat([up, F.relu(self.reduce(low_level))], dim=1)
        for conv in self.fuse:
            x = F.relu(conv(x))
        return x


class DeepLabV3(nn.Module):
    """DeepLab v3: ``backbone`` -> ``aspp`` -> ``classifier`` (1x1 Conv2d with bias).

    ``N x 3 x H x W`` -> ``N x n_classes x h x w`` at the backbone's output stride.
    BatchNorm follows ``config["freeze_bn"]`` (default ``True``) as in ``DeepLabV2``.
    """

    def __init__(self, config: dict[str, Any], init: bool = True) -> None:
        super().__init__()
        validate_config(config)
        if config["arch"] not in self._archs:
            raise ValueError(f"{type(self).__name__} needs arch in {self._archs}, got {config['arch']!r}")
        self.config = copy.deepcopy(config)
        self.config["msc"] = None  # single scale; MSC records its own scales
        self.freeze_bn = bool(config.get("freeze_bn", True))
        eps = float(config["bn_eps"])
        head = config["head"]
        self.backbone = ResNetBackbone(config)
        self.aspp = ImagePoolingASPP(self.backbone.out_channels, head["channels"], head["rates"],
                                     head["image_pooling"], head["dropout"], eps=eps)
        if "decoder" in config:  # v3+ only (validate_config ties the key to the arch)
            dec = config["decoder"]
            self.decoder = Decoder(self.backbone.stage_channels["res2"], dec["low_level_channels"],
                                   head["channels"], dec["channels"], eps=eps)
        channels = config["decoder"]["channels"] if "decoder" in config else head["channels"]
        self.classifier = nn.Conv2d(channels, config["n_classes"], 1, bias=True)
        if init:
            init_weights(self)
        if self.freeze_bn:
            freeze_batchnorm(self)

    _archs = ("deeplab_v3",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(self.backbone(x)))

    def train(self, mode: bool = True) -> DeepLabV3:
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self)
        return self


class DeepLabV3Plus(DeepLabV3):
    """DeepLab v3+: v3's ``backbone`` and ``aspp``, a ``decoder`` on the ``res2`` features,
    then ``classifier``. ``N x 3 x H x W`` -> ``N x n_classes x h x w`` at output stride 4."""

    _archs = ("deeplab_v3plus",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        return self.classifier(self.decoder(self.aspp(features["res5"]), features["res2"]))
