"""DeepLab v2: ResNet backbone + ASPP classifier, and the MSC multi-scale wrapper.

Input: float32 ``N x 3 x H x W``, BGR, 0-255 minus the mean (``models.VOC_MEAN_BGR``).
Output: logits ``N x n_classes x h x w`` at the score-map resolution (output stride 8).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MSC_RESIZES, scale_name, validate_config
from .interp import caffe_interp, interp_length
from .resnet import ResNetBackbone

__all__ = ["ASPP", "DeepLabV2", "MSC", "freeze_batchnorm", "init_weights"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DeepLab v2 has it: parallel Conv2d branches
    (``classifier.branches.{i}`` = Caffe ``fc1_<set>_c{i}``) whose outputs are summed in order
    (Caffe Eltwise SUM). A single branch is the COCO-init classifier ``fc1_<set>``."""

    def __init__(self, in_channels: int, n_classes: int, branches: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, n_classes, b["kernel"], padding=b["pad"], dilation=b["dilation"],
                      bias=b["bias"])
            for b in branches
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x h x w`` -> ``N x n_classes x h x w``."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)  # out of place: a hook may hold the first branch's output
        return out


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm under ``module`` in eval mode and stop gradients to its affine
    parameters (Caffe's ``use_global_stats: true`` with ``lr_mult: 0`` on Scale)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


def init_weights(model: nn.Module) -> None:
    """Initialisation for training from scratch: convolutions He-normal with fan-in (Caffe's
    ``msra`` filler), classifier branches normal(0, 0.01) with zero bias (DeepLab's recipe),
    BatchNorm weight 1, bias 0, running stats 0/1."""
    classifier = getattr(model, "classifier", None)
    head = set(classifier.modules()) if classifier is not None else set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m in head:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


class DeepLabV2(nn.Module):
    """DeepLab v2 (single scale): ``backbone`` (ResNet, stride 8) then ``classifier`` (ASPP).

    ``forward``: ``N x 3 x H x W`` -> ``N x n_classes x h x w`` logits. With
    ``config["freeze_bn"]`` (default ``True``) BatchNorm stays in eval mode under ``train()``.
    """

    def __init__(self, config: dict[str, Any], init: bool = True) -> None:
        super().__init__()
        validate_config(config)
        self.config = copy.deepcopy(config)
        self.config["msc"] = None  # this module is single scale; MSC records its own scales
        self.freeze_bn = bool(config.get("freeze_bn", True))
        self.backbone = ResNetBackbone(config)
        self.classifier = ASPP(self.backbone.out_channels, config["n_classes"],
                               config["classifier"]["branches"])
        if init:
            init_weights(self)
        if self.freeze_bn:
            freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self)
        return self


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLab v2's MSC training/test net).

    Wraps ``base`` (weights shared across scales). Its child modules are the base's own, so
    ``MSC(base, s).state_dict()`` has exactly the base's keys (``backbone...``,
    ``classifier...``) and a hook on a module fires once per scale (1x first, then the scales
    in order). For each scale ``{"shrink": s, "zoom": z}`` the input is resized to
    ``caffe_interp_size(H, W, shrink=s, zoom=z)`` (computed by ``interp_length``, which keeps traced
    sizes symbolic for export) with ``caffe_interp``; each smaller score map
    is resized to the 1x map's size with ``caffe_interp`` and the maps are fused by an
    elementwise max (Caffe Eltwise MAX ``fc_fusion``).

    ``resize`` picks how the pyramid is resized: ``"caffe"`` (default, DeepLab v2's graphs) as
    above; ``"deeplab-pytorch"`` as the seed port's ``MSC`` does it: the input by
    ``F.interpolate(x, scale_factor=zoom / shrink, mode="bilinear", align_corners=False)`` (size
    ``floor(H * zoom / shrink)``), each smaller map back to the 1x map's size with
    ``align_corners=False``; the max fusion is the same. That is torch >= 1.6's ``scale_factor``
    (the kernel samples at ``(y + 0.5) * shrink / zoom - 0.5``); ``"deeplab-pytorch-pre1.6"`` is
    the same code under torch < 1.6, which recomputed the scale from the floored size
    (``recompute_scale_factor=True``: samples at ``(y + 0.5) * H / floor(H * zoom / shrink) - 0.5``).
    """

    def __init__(self, base: nn.Module, scales: Sequence[dict[str, int]], resize: str = "caffe") -> None:
        super().__init__()
        if resize not in MSC_RESIZES:
            raise ValueError(f"MSC resize must be one of {list(MSC_RESIZES)}, got {resize!r}")
        self.resize = resize
        if not scales:
            raise ValueError("MSC needs at least one extra scale")
        self.scales = [{"shrink": int(s["shrink"]), "zoom": int(s["zoom"])} for s in scales]
        self.scale_names = [scale_name(s) for s in self.scales]
        if len(set(self.scale_names)) != len(self.scale_names) or {"1x", "fused"} & set(self.scale_names):
            raise ValueError(f"MSC scales must have distinct names other than 1x, got {self.scale_names}")
        if any(True for _ in base.parameters(recurse=False)) or any(True for _ in base.buffers(recurse=False)):
            raise ValueError("MSC needs a base whose parameters and buffers all live in submodules")
        # Adopt the base's children under their own names (keys stay identical to the base's);
        # keep the base itself outside the module tree (a plain attribute, not a registered
        # submodule) so that its modules are not registered twice under ``base.``.
        for name, module in base.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "_base", base)
        config = getattr(base, "config", None)
        if config is not None:
            config = copy.deepcopy(config)
            config["msc"] = {"scales": copy.deepcopy(self.scales)}
            if resize != "caffe":
                config["msc"]["resize"] = resize
        self.config = config
        self.train(base.training)

    def extra_repr(self) -> str:
        return f"scales={self.scale_names}, resize={self.resize}"

    @property
    def base(self) -> nn.Module:
        """The single-scale model; it shares every module and parameter with this one."""
        return self._base

    def train(self, mode: bool = True) -> MSC:
        super().train(mode)
        self.base.train(mode)  # applies the base's BatchNorm freezing to the shared modules
        return self

    def forward_msc(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: ``N x 3 x H x W`` -> ``{"1x": ..., "<scale>x": ..., "fused": ...}``.

        Per-scale entries are each scale's own score map (not resized); ``"fused"`` is the
        elementwise max of all maps after resizing them to the 1x map's size.
        """
        outputs = {"1x": self.base(x)}
        for name, scale in zip(self.scale_names, self.scales):
            outputs[name] = self.base(self._shrink(x, scale))
        target = outputs["1x"].shape[-2:]
        fused = outputs["1x"]
        for name in self.scale_names:
            fused = torch.maximum(fused, self._to_size(outputs[name], target))
        outputs["fused"] = fused
        return outputs

    def _shrink(self, x: torch.Tensor, scale: dict[str, int]) -> torch.Tensor:
        """The input at one pyramid scale, resized as ``self.resize`` says."""
        if self.resize in ("deeplab-pytorch", "deeplab-pytorch-pre1.6"):
            return F.interpolate(x, scale_factor=scale["zoom"] / scale["shrink"], mode="bilinear", align_corners=False,
                                 recompute_scale_factor=self.resize == "deeplab-pytorch-pre1.6")
        size = [interp_length(n, shrink=scale["shrink"], zoom=scale["zoom"]) for n in x.shape[-2:]]
        return caffe_interp(x, size)  # sizes stay traced when exported (ONNX, TorchScript)

    def _to_size(self, logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """A smaller scale's score map resized to the 1x map's ``size``."""
        if self.resize != "caffe":
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return caffe_interp(logits, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` -> the max-fused logits ``N x n_classes x h x w`` (1x map size)."""
        return self.forward_msc(x)["fused"]
