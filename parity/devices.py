"""Which torch device a run uses: one rule for training, evaluation, the suite and the demo."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; any other name as given. A CUDA device
    without CUDA is a ``ValueError`` (one line)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name} requested but CUDA is not available")
    return torch.device(name)
