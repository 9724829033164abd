"""An independent, functional re-implementation of DeepLabv3.pytorch's (chenxi116) inference
(``deeplab.py``: ``ResNet``, ``Bottleneck``, ``ASPP``, the weight-standardised ``Conv2d``) that
runs straight from a state dict in its names, and a writer of random checkpoints in its layout.

Its conventions, written from the repo: RGB / 255 normalised by the ImageNet mean and std; each
conv but the classifier standardises its weight when WS is on (``w - mean`` over in x kh x kw,
divided by the unbiased std + 1e-5); GroupNorm (eps 1e-5) or BatchNorm; 7x7/2 stem, max pool
3/2/1 floor; bottlenecks with the stride on the 3x3 conv; layer2/3 stride 2, layer4 stride 1
with the first block dilated 1 and the rest 2; ASPP 1x1, 3x3 at 6/12/18, global pooling -> 1x1
-> norm -> ReLU -> ``Upsample(align_corners=True)``, concat, 1x1 + norm + ReLU, classifier;
logits upsampled to the input with ``align_corners=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def standardize(w: torch.Tensor) -> torch.Tensor:
    mean = w.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
    w = w - mean
    return w / (w.view(w.size(0), -1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)


class Reference:
    """DeepLabv3.pytorch's forward from ``sd`` (keys with ``module.``), float64."""

    def __init__(self, sd: dict, groups: int | None, weight_std: bool) -> None:
        self.sd = {k.removeprefix("module."): torch.as_tensor(v).double() for k, v in sd.items()}
        self.groups, self.weight_std = groups, weight_std

    def conv(self, name: str, x, stride=1, padding=0, dilation=1, ws=None):
        w = self.sd[f"{name}.weight"]
        w = standardize(w) if (self.weight_std if ws is None else ws) else w
        return F.conv2d(x, w, self.sd.get(f"{name}.bias"), stride, padding, dilation)

    def norm(self, name: str, x):
        weight, bias = self.sd[f"{name}.weight"], self.sd[f"{name}.bias"]
        if self.groups is not None:
            return F.group_norm(x, self.groups, weight, bias, 1e-5)
        return F.batch_norm(x, self.sd[f"{name}.running_mean"], self.sd[f"{name}.running_var"], weight, bias,
                            False, 0.0, 1e-5)

    def block(self, name: str, x, stride: int, dilation: int):
        out = F.relu(self.norm(f"{name}.bn1", self.conv(f"{name}.conv1", x)))
        out = F.relu(self.norm(f"{name}.bn2", self.conv(f"{name}.conv2", out, stride, dilation, dilation)))
        out = self.norm(f"{name}.bn3", self.conv(f"{name}.conv3", out))
        if f"{name}.downsample.0.weight" in self.sd:
            x = self.norm(f"{name}.downsample.1", self.conv(f"{name}.downsample.0", x, stride))
        return F.relu(out + x)

    def aspp(self, x):
        outs = [F.relu(self.norm("aspp.aspp1_bn", self.conv("aspp.aspp1", x)))]
        for k, rate in ((2, 6), (3, 12), (4, 18)):
            outs.append(F.relu(self.norm(f"aspp.aspp{k}_bn", self.conv(f"aspp.aspp{k}", x, 1, rate, rate))))
        pooled = F.relu(self.norm("aspp.aspp5_bn", self.conv("aspp.aspp5", F.adaptive_avg_pool2d(x, 1))))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        x = F.relu(self.norm("aspp.bn2", self.conv("aspp.conv2", torch.cat(outs, 1))))
        return self.conv("aspp.conv3", x, ws=False)  # nn.Conv2d: never standardised

    def forward(self, image_rgb: torch.Tensor, upsample: bool = False) -> torch.Tensor:
        """``N x 3 x H x W`` RGB 0-255 -> logits at stride 16 (``upsample``: at the input size)."""
        mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
        x = (image_rgb / 255.0 - mean) / std
        x = F.relu(self.norm("bn1", self.conv("conv1", x, 2, 3)))
        x = F.max_pool2d(x, 3, 2, 1)
        for layer, stride, dilation in ((1, 1, 1), (2, 2, 1), (3, 2, 1), (4, 1, 2)):
            i = 0
            while f"layer{layer}.{i}.conv1.weight" in self.sd:
                first = i == 0
                x = self.block(f"layer{layer}.{i}", x, stride if first else 1,
                               max(1, dilation // 2) if first else dilation)
                i += 1
        x = self.aspp(x)
        if upsample:
            x = F.interpolate(x, size=image_rgb.shape[-2:], mode="bilinear", align_corners=True)
        return x


def random_state(seed: int = 0, *, blocks=(1, 2, 2, 3), inplanes: int = 8, planes: int = 4, depth: int = 8,
                 n_classes: int = 3, group_norm: bool = True, zeros: bool = False) -> OrderedDict:
    """A DeepLabv3.pytorch ``DataParallel`` state dict (``module.`` keys, shapes as the repo's
    ``ResNet(Bottleneck, blocks)`` with the given widths; the repo has 64, 64 and 256)."""
    rng = np.random.default_rng(seed)
    sd: OrderedDict = OrderedDict()

    def rand(*shape, scale=1.0, offset=0.0):
        if zeros:
            return torch.zeros(shape)
        return torch.from_numpy(offset + scale * rng.standard_normal(shape)).float()

    def conv(name, cout, cin, k, bias=False):
        sd[f"module.{name}.weight"] = rand(cout, cin, k, k, scale=np.sqrt(2.0 / (cin * k * k)))
        if bias:
            sd[f"module.{name}.bias"] = rand(cout, scale=0.1)

    def norm(name, c):
        sd[f"module.{name}.weight"] = rand(c, scale=0.2, offset=1.0)
        sd[f"module.{name}.bias"] = rand(c, scale=0.1)
        if not group_norm:
            sd[f"module.{name}.running_mean"] = rand(c, scale=0.1)
            sd[f"module.{name}.running_var"] = rand(c, scale=0.1, offset=1.0).abs()
            sd[f"module.{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", inplanes, 3, 7)
    norm("bn1", inplanes)
    cin = inplanes
    for layer, n in enumerate(blocks, start=1):
        p = planes * 2 ** (layer - 1)
        for i in range(n):
            name = f"layer{layer}.{i}"
            conv(f"{name}.conv1", p, cin, 1), norm(f"{name}.bn1", p)
            conv(f"{name}.conv2", p, p, 3), norm(f"{name}.bn2", p)
            conv(f"{name}.conv3", 4 * p, p, 1), norm(f"{name}.bn3", 4 * p)
            if i == 0 and (layer in (2, 3, 4) or cin != 4 * p):  # _make_layer's condition
                conv(f"{name}.downsample.0", 4 * p, cin, 1), norm(f"{name}.downsample.1", 4 * p)
            cin = 4 * p
    for k in (1, 2, 3, 4, 5):
        conv(f"aspp.aspp{k}", depth, cin, 3 if k in (2, 3, 4) else 1)
        norm(f"aspp.aspp{k}_bn", depth)
    conv("aspp.conv2", depth, 5 * depth, 1), norm("aspp.bn2", depth)
    conv("aspp.conv3", n_classes, depth, 1, bias=True)
    return sd


def write_checkpoint(path: Path, state: OrderedDict, epoch: int = 50) -> Path:
    """``torch.save`` as the repo's ``main.py`` does: epoch, state_dict, optimizer."""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.007, "momentum": 0.9, "weight_decay": 1e-4,
                                                "params": list(range(len(state)))}]}
    torch.save({"epoch": epoch, "state_dict": state, "optimizer": optimizer}, path)
    return path
