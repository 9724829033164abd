"""An independent, small re-implementation of the seed port's (kazuto1011/deeplab-pytorch) DeepLab v2
MSC, written for the tests from its documented layout and conventions, not from this package:

* module names: ``base.layer1.conv1.{conv,bn}`` + ``base.layer1.pool``; ``base.layer{2-5}.block{k}``
  with ``reduce`` (1x1, carries the stride), ``conv3x3`` (dilated), ``increase`` (1x1) and, in
  the first block, ``shortcut``, each a Sequential ``conv`` / ``bn`` (/ ReLU); ``base.aspp.c{i}``;
* BatchNorm eps 1e-5; max pool 3/2 pad 1 with ceil mode; output stride 8 (res4 dilation 2, res5 4);
* MSC: the input resized by ``F.interpolate(scale_factor=s, align_corners=False)`` for s in
  0.5, 0.75, every score map resized to the 1x map's size with ``align_corners=False``, max fused.

``width`` scales the port's channel plan (64 * 2**i) down so that the tests run in seconds.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, dilation: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers = [("conv", nn.Conv2d(cin, cout, k, stride, pad, dilation, bias=False)), ("bn", nn.BatchNorm2d(cout, eps=1e-5))]
    if relu:
        layers.append(("relu", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, first: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.reduce = conv_bn(cin, mid, 1, stride)
        self.conv3x3 = conv_bn(mid, mid, 3, 1, dilation, dilation)
        self.increase = conv_bn(mid, cout, 1, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if first else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def res_layer(n: int, cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict((f"block{i + 1}", Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation,
                                                        i == 0)) for i in range(n)))


class ASPP(nn.Module):
    def __init__(self, cin: int, n_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        for i, r in enumerate(rates):
            setattr(self, f"c{i}", nn.Conv2d(cin, n_classes, 3, 1, r, r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.children())


def deeplab_v2(n_classes: int, n_blocks: tuple[int, int, int, int], width: int = 64,
               rates: tuple[int, ...] = (6, 12, 18, 24)) -> nn.Sequential:
    ch = [width * 2**p for p in range(6)]
    stem = nn.Sequential(OrderedDict(conv1=conv_bn(3, ch[0], 7, 2, 3), pool=nn.MaxPool2d(3, 2, 1, ceil_mode=True)))
    return nn.Sequential(OrderedDict(
        layer1=stem,
        layer2=res_layer(n_blocks[0], ch[0], ch[2], 1, 1),
        layer3=res_layer(n_blocks[1], ch[2], ch[3], 2, 1),
        layer4=res_layer(n_blocks[2], ch[3], ch[4], 1, 2),
        layer5=res_layer(n_blocks[3], ch[4], ch[5], 1, 4),
        aspp=ASPP(ch[5], n_classes, rates),
    ))


class MSC(nn.Module):
    def __init__(self, base: nn.Module, scales: tuple[float, ...] = (0.5, 0.75)) -> None:
        super().__init__()
        self.base, self.scales = base, scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.base(x)
        maps = [full] + [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                         for s in self.scales]
        maps = [m if m.shape == full.shape else F.interpolate(m, size=full.shape[-2:], mode="bilinear",
                                                               align_corners=False) for m in maps]
        return torch.stack(maps).max(dim=0).values


def seeded_port_model(n_classes: int = 5, n_blocks=(1, 4, 2, 1), width: int = 4, seed: int = 0) -> MSC:
    """The reference with seeded weights and BatchNorm statistics far from 0/1, in eval mode."""
    torch.manual_seed(seed)
    model = MSC(deeplab_v2(n_classes, n_blocks, width))
    ranges = {"running_mean": (-0.5, 0.5), "running_var": (0.5, 2.0), "weight": (0.5, 1.5), "bias": (-0.3, 0.3)}
    with torch.no_grad():
        for key, tensor in model.state_dict().items():  # every BatchNorm tensor, by its name
            kind = key.rsplit(".", 1)[-1]
            if ".bn." in key and kind in ranges:
                tensor.uniform_(*ranges[kind])
            elif kind == "num_batches_tracked":
                tensor.fill_(20000)
    return model.eval()
