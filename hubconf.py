"""``torch.hub`` entry points: a DeepLab v2 model loaded from a converted checkpoint.

    model = torch.hub.load("path/to/deeplab-caffe", "deeplabv2_resnet101", source="local",
                           checkpoint="voc12.pth")

Nothing is downloaded: convert the official Caffe weights first (``deeplab-convert``, see the
README) and pass the ``.pth`` / ``.safetensors`` it wrote. The checkpoint's own config decides
the classes, ASPP rates and MSC scales. Without ``checkpoint`` the model is the official
ResNet-101 architecture with random weights. Works from a plain clone too: when the
``deeplab_caffe`` package is not installed, this repository's folders are registered as it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

dependencies = ["torch", "numpy", "safetensors"]

_REPO = Path(__file__).resolve().parent


def _package() -> None:
    """Make ``deeplab_caffe`` importable: the installed package, or this clone's folders."""
    if "deeplab_caffe" in sys.modules or importlib.util.find_spec("deeplab_caffe") is not None:
        return
    namespace = types.ModuleType("deeplab_caffe")
    namespace.__path__ = [str(_REPO)]  # deeplab_caffe.models -> <repo>/models, as installed
    sys.modules["deeplab_caffe"] = namespace


def deeplabv2_resnet101(checkpoint: str | None = None, pretrained: bool = False,
                        n_classes: int = 21, msc: bool = True, map_location: str = "cpu"):  # noqa: ANN201
    """DeepLab v2 ResNet-101 (ASPP rates 6/12/18/24), in eval mode.

    ``checkpoint``: a file written by ``deeplab-convert`` or ``deeplab-train`` (its config and
    weights are used; ``n_classes`` / ``msc`` are ignored). Without it: ``n_classes`` outputs,
    MSC (1, 0.75, 0.5 with max fusion) when ``msc``, random weights. Input: BGR, 0-255 minus the
    Caffe mean, ``N x 3 x H x W``; output: class logits (at 1/8 resolution for a plain forward).
    """
    _package()
    from deeplab_caffe.models import build_model, default_config, load_checkpoint

    if pretrained and checkpoint is None:
        raise ValueError("deeplabv2_resnet101: nothing is downloaded; convert the official "
                         "weights with deeplab-convert and pass checkpoint=PATH")
    if checkpoint is not None:
        return load_checkpoint(checkpoint, map_location=map_location).eval()
    return build_model(default_config(n_classes, msc=msc)).eval()
