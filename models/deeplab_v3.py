"""DeepLab v3 and v3+ heads on the Caffe-style ResNet backbone (``models.resnet``).

v3: ASPP with a 1x1 branch, atrous 3x3 branches and image pooling, each Conv-BN-ReLU,
concatenated and projected by a 1x1 Conv-BN-ReLU (+ dropout), then a 1x1 classifier with bias.
v3+: the same ASPP, upsampled to the ``res2`` features (stride 4) and concatenated with them
after a 1x1 reduction, then two 3x3 Conv-BN-ReLU and the classifier.

Config options let the same modules express other ports exactly (``models.config``): GroupNorm
and weight standardisation, image pooling without norm over a fixed window, half-pixel resizes
(``align_corners: false``), depthwise-separable convs and the decoder's concatenation order.

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
from .resnet import ConvBN, Norm, ResNetBackbone, WSConv2d

__all__ = ["ImagePoolingASPP", "SeparableConvBN", "Decoder", "DeepLabV3", "DeepLabV3Plus", "resize_bilinear",
           "InputSizeError"]


class InputSizeError(ValueError):
    """The input does not fit the network (one line): a fixed image-pooling window that does not
    tile the features. Evaluation and the CLIs turn it into a bad-input error (exit 2)."""


def resize_bilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``N x C x h x w`` to ``size``: Caffe/TF style with the corners aligned
    (``caffe_interp``), or PyTorch's half-pixel ``align_corners=False`` (Detectron2)."""
    if align_corners:
        return caffe_interp(x, tuple(size))
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SeparableConvBN(nn.Module):
    """Depthwise-separable convolution (Detectron2's ``DepthwiseSeparableConv2d`` with a norm on
    both parts): ``depthwise`` (k x k ConvBN, one group per channel) -> ReLU -> ``pointwise``
    (1x1 ConvBN). Like ``ConvBN`` it returns the last norm's output before the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int,
                 dilation: int = 1, norm: Norm | None = None) -> None:
        super().__init__()
        self.depthwise = ConvBN(in_channels, in_channels, kernel_size, padding=padding,
                                dilation=dilation, norm=norm, groups=in_channels)
        self.pointwise = ConvBN(in_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(F.relu(self.depthwise(x)))


class ImagePoolingASPP(nn.Module):
    """DeepLab v3 ASPP: ``convs.0`` (1x1), ``convs.{i}`` (3x3, dilation ``rates[i-1]``; a
    ``SeparableConvBN`` with ``separable``), ``pooling`` (average then 1x1; absent without image
    pooling), concatenated in that order and projected by ``project`` (1x1). Every conv is a
    ``ConvBN`` followed by a ReLU, except that ``pooling_norm=False`` makes ``pooling`` a plain
    Conv2d with bias (Detectron2). ``pooling_kernel`` (kh, kw) averages with that window and
    stride 1 and resizes the result back bilinearly (corners aligned or not, ``align_corners``),
    as Detectron2 does; features whose height or width is not a multiple of the window's (smaller
    ones included) raise ``InputSizeError``, the check Detectron2's ``ASPP.forward`` makes
    (``layers/aspp.py`` @ 02b5c4e). ``None`` pools globally. A traced/exported graph cannot
    raise: it skips the check (``torch.compiler.is_compiling``).

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
        norm: Norm | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        norm = norm if norm is not None else Norm(eps=eps)
        options = options or {}
        self.align_corners = bool(options.get("align_corners", True))
        kernel = options.get("pooling_kernel")
        self.pooling_kernel = None if kernel is None else (int(kernel[0]), int(kernel[1]))
        self.convs = nn.ModuleList([ConvBN(in_channels, channels, 1, norm=norm)])
        for r in rates:
            if options.get("separable", False):
                self.convs.append(SeparableConvBN(in_channels, channels, 3, padding=r, dilation=r, norm=norm))
            else:
                self.convs.append(ConvBN(in_channels, channels, 3, padding=r, dilation=r, norm=norm))
        self.pooling: nn.Module | None = None
        if image_pooling and options.get("pooling_norm", True):
            self.pooling = ConvBN(in_channels, channels, 1, norm=norm)
        elif image_pooling:
            self.pooling = (WSConv2d if norm.weight_std else nn.Conv2d)(in_channels, channels, 1, bias=True)
        n_branches = len(self.convs) + (1 if image_pooling else 0)
        self.project = ConvBN(n_branches * channels, channels, 1, norm=norm)
        self.dropout = nn.Dropout(dropout)

    def _image_pool(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.pooling_kernel is None:
            pooled = F.relu(self.pooling(x.mean(dim=(2, 3), keepdim=True)))
            return pooled.expand(-1, -1, size[0], size[1])
        kh, kw = self.pooling_kernel
        if not torch.compiler.is_compiling() and (size[0] % kh or size[1] % kw):
            raise InputSizeError(f"the {size[0]}x{size[1]} features are not a multiple of the {kh}x{kw} image-pooling "
                                 f"window (Detectron2's ASPP refuses such inputs: use an input whose features are "
                                 f"{kh}x{kw}, {2 * kh}x{2 * kw}, ...)")
        pooled = F.relu(self.pooling(F.avg_pool2d(x, self.pooling_kernel, stride=1)))
        return resize_bilinear(pooled, size, self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.relu(conv(x)) for conv in self.convs]
        if self.pooling is not None:
            outs.append(self._image_pool(x))
        return self.dropout(F.relu(self.project(torch.cat(outs, dim=1))))


class Decoder(nn.Module):
    """DeepLab v3+ decoder: ``reduce`` (1x1 on the low-level features), then ``fuse.0`` and
    ``fuse.1`` (3x3) on the concatenation ``[upsampled ASPP output, reduced features]``.

    ``options`` (the config's ``decoder`` entry plus ``align_corners``): ``low_level_first``
    concatenates ``[reduced, upsampled]`` (Detectron2), ``separable`` replaces the two 3x3 convs
    by one 5x5 ``SeparableConvBN`` (``fuse.0``), ``align_corners`` picks the upsampling."""

    def __init__(
        self, low_level_in: int, low_level_channels: int, aspp_channels: int, channels: int,
        eps: float = 1e-5, norm: Norm | None = None, options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        norm = norm if norm is not None else Norm(eps=eps)
        options = options or {}
        self.low_level_first = bool(options.get("low_level_first", False))
        self.align_corners = bool(options.get("align_corners", True))
        self.reduce = ConvBN(low_level_in, low_level_channels, 1, norm=norm)
        fused_in = aspp_channels + low_level_channels
        if options.get("separable", False):
            self.fuse = nn.ModuleList([SeparableConvBN(fused_in, channels, 5, padding=2, norm=norm)])
        else:
            self.fuse = nn.ModuleList([
                ConvBN(fused_in, channels, 3, padding=1, norm=norm),
                ConvBN(channels, channels, 3, padding=1, norm=norm),
            ])

    def forward(self, aspp: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        """``aspp``: ``N x A x h x w``; ``low_level``: ``N x L x H4 x W4`` -> ``N x C x H4 x W4``."""
        up = resize_bilinear(aspp, low_level.shape[-2:], self.align_corners)
        reduced = F.relu(self.reduce(low_level))
        x = torch.cat([reduced, up] if self.low_level_first else [up, reduced], dim=1)
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
        norm = Norm.from_config(config)
        head = config["head"]
        align = {"align_corners": config.get("align_corners", True)}
        self.backbone = ResNetBackbone(config)
        self.aspp = ImagePoolingASPP(self.backbone.out_channels, head["channels"], head["rates"],
                                     head["image_pooling"], head["dropout"], norm=norm,
                                     options={**head, **align})
        if "decoder" in config:  # v3+ only (validate_config ties the key to the arch)
            dec = config["decoder"]
            self.decoder = Decoder(self.backbone.stage_channels["res2"], dec["low_level_channels"],
                                   head["channels"], dec["channels"], norm=norm, options={**dec, **align})
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
