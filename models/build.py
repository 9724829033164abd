"""The one model builder every command uses."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import validate_config
from .deeplab_v2 import MSC, DeepLabV2
from .deeplab_v3 import DeepLabV3, DeepLabV3Plus

__all__ = ["build_model"]

_ARCHS: dict[str, type[nn.Module]] = {
    "deeplab_v2": DeepLabV2,
    "deeplab_v3": DeepLabV3,
    "deeplab_v3plus": DeepLabV3Plus,
}


def build_model(config: dict[str, Any], *, init: bool = True) -> nn.Module:
    """Validate ``config`` and build the network it describes (``config["arch"]``:
    ``deeplab_v2`` -> ``DeepLabV2``, ``deeplab_v3`` -> ``DeepLabV3``, ``deeplab_v3plus`` ->
    ``DeepLabV3Plus``), wrapped in ``MSC`` when ``config["msc"]`` gives scales (resized as its
    ``"resize"`` says, default ``"caffe"``). The model has a
    ``.config`` attribute. ``init=False`` skips the training initialisation (for a model whose
    weights are about to be loaded)."""
    validate_config(config)
    base = _ARCHS[config["arch"]](config, init=init)
    if config["msc"] is None:
        return base
    return MSC(base, config["msc"]["scales"], resize=config["msc"].get("resize", "caffe"))
