"""Initialising a model from a converted checkpoint (e.g. ``coco_init``): the backbone must
fit, the classifier is loaded only when all of it fits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deeplab_caffe.models import CheckpointError, read_checkpoint
from deeplab_caffe.parity.train.solver import classifier_of

__all__ = ["InitReport", "load_init_weights"]


@dataclass
class InitReport:
    """What ``load_init_weights`` took from an init checkpoint: tensor names ``loaded``, the
    model's ``reinitialised`` ones (kept at their fresh initialisation), and checkpoint tensors
    ``unused`` by the model; ``reason`` says why the classifier was re-initialised."""

    path: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    reason: str = ""

    def summary(self) -> str:
        """One line for logs."""
        text = f"init from {self.path}: loaded {len(self.loaded)} tensors"
        if self.reinitialised:
            text += f", re-initialised {len(self.reinitialised)} ({self.reason})"
        if self.unused:
            text += f", {len(self.unused)} checkpoint tensors unused"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "loaded": len(self.loaded), "reinitialised": self.reinitialised,
                "unused": self.unused, "reason": self.reason}


def load_init_weights(model: nn.Module, path: str | os.PathLike[str]) -> InitReport:
    """Copy a converted checkpoint's weights into ``model`` (e.g. ``coco_init``).

    Every ``backbone.*`` tensor of the model must be in the checkpoint with the same shape
    (else ``CheckpointError`` naming the key). The ``classifier.*`` tensors are loaded only
    when all of them match (same branches and class count); otherwise the classifier keeps its
    fresh initialisation (normal(0, 0.01), zero bias) and the report says why.
    """
    state, ckpt_config, _ = read_checkpoint(path, map_location="cpu")
    own = model.state_dict()
    report = InitReport(path=str(path))
    for key, value in own.items():
        if not key.startswith("classifier."):
            if key not in state:
                raise CheckpointError(f"{path}: init checkpoint has no {key!r} (the backbone "
                                      f"does not match the model config)")
            if tuple(state[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: init checkpoint {key!r} has shape {tuple(state[key].shape)}, "
                    f"the model needs {tuple(value.shape)}")
    head = [k for k in own if k.startswith("classifier.")]
    head_fits = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head)
    head_fits = head_fits and not any(k.startswith("classifier.") and k not in own for k in state)
    if not head_fits:
        branches = ckpt_config.get("classifier", {}).get("branches", [])
        report.reason = (f"checkpoint classifier: {ckpt_config.get('n_classes')} classes, "
                         f"{len(branches)} branch(es); model: "
                         f"{model.config['n_classes'] if getattr(model, 'config', None) else '?'} "
                         f"classes, {len(classifier_of(model).branches)} branch(es)")
    with torch.no_grad():
        for key, value in own.items():
            if key.startswith("classifier.") and not head_fits:
                report.reinitialised.append(key)
                continue
            value.copy_(state[key].to(value.dtype))
            report.loaded.append(key)
    report.unused = [k for k in state if k not in own or (k.startswith("classifier.") and not head_fits)]
    return report
