"""An inference copy of a DeepLab: BatchNorm folded into the convolutions, in-place activations,
channels_last, optional bf16 autocast and ``torch.compile``.

``optimize_for_inference(model)`` leaves ``model`` untouched (the layer-by-layer parity tools
hook its BatchNorm outputs) and returns a new module that computes the same function: in fp32
within 1e-5 relative of the unfused model (``scripts/bench_inference.py`` measures the speed,
memory and difference). Input and output as the model's: float32 ``N x 3 x H x W`` BGR minus the
mean, logits ``N x C x h x w``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .resnet import Bottleneck, ConvBN, Stem

__all__ = ["InferenceModel", "fold_batchnorm_into_conv", "optimize_for_inference"]


def fold_batchnorm_into_conv(unit: ConvBN) -> None:
    """Fold ``unit.bn`` (eval statistics and affine) into ``unit.conv``, in place: the conv's
    weight is rescaled and it gains a bias, the BatchNorm becomes ``nn.Identity``.
    ``w' = w * g / sqrt(v + eps)``, ``b' = beta - mean * g / sqrt(v + eps)``, computed in float64.
    No new module is built (a constructor would spend time on a random initialisation)."""
    conv, bn = unit.conv, unit.bn
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.double() * scale[:, None, None, None]
        bias = bn.bias.double() - bn.running_mean.double() * scale
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    unit.bn = nn.Identity()


class InferenceModel(nn.Module):
    """Runs ``model`` (already fused) with channels_last inputs and optional bf16 autocast;
    returns float32 contiguous logits."""

    def __init__(self, model: nn.Module, *, channels_last: bool, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.bf16 = bf16
        self.config = getattr(model, "config", None)
        self.metadata = getattr(model, "metadata", None)  # a checkpoint's record (its input mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x)
        return out.float().contiguous()


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True, bf16: bool = False,
                           compile: bool = False, inplace: bool = False) -> nn.Module:
    """A fused, eval-mode copy of ``model`` (``DeepLabV2`` or ``MSC``) for inference.

    Every ``ConvBN`` with BatchNorm and a plain convolution has the BatchNorm folded into it; ReLUs and residual adds run
    in place; with ``channels_last`` the weights and inputs use that memory format (faster on
    oneDNN CPUs and on GPUs); ``bf16`` runs under bf16 autocast (an opt-in: not within 1e-5);
    ``compile`` wraps the result in ``torch.compile``; its first call compiles (cold costs
    measured by ``scripts/bench_inference.py --compile``, quoted in the README). ``inplace``
    fuses ``model`` itself instead of a copy (no second set of weights, in time or memory): use
    it when the unfused model is not needed afterwards; ``model`` is then the fused network.
    """
    fused = (model if inplace else copy.deepcopy(model)).eval()
    for module in fused.modules():
        if (isinstance(module, ConvBN) and isinstance(module.bn, nn.BatchNorm2d)
                and type(module.conv) is nn.Conv2d):  # GroupNorm / weight standardisation stay
            fold_batchnorm_into_conv(module)
        if isinstance(module, (Bottleneck, Stem)):
            module.inplace = True
    fused.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(fused, channels_last=channels_last, bf16=bf16).eval()
    return torch.compile(wrapped) if compile else wrapped
