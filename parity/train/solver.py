"""Caffe's SGD for DeepLab v2: three parameter groups and the poly learning-rate schedule.

* groups: ``backbone`` (lr x1, weight decay), ``classifier_weight`` (lr x
  ``lr_mult_classifier_weight``, 10 in the recipe), ``classifier_bias`` (lr x
  ``lr_mult_classifier_bias``, 20, no weight decay: Caffe ``decay_mult: 0``); frozen BatchNorm
  is not trained;
* schedule: ``lr(it) = lr * (1 - it / max_iter) ** poly_power`` for the update that follows
  ``it`` completed updates (the first update uses the base LR), set every iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["poly_lr", "param_groups", "set_lr", "build_optimizer", "classifier_of"]


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power``: the LR of the update that follows
    ``iteration`` completed updates (``iteration`` in ``0 .. max_iter``)."""
    if not 0 <= iteration <= max_iter:
        raise ValueError(f"iteration {iteration} outside 0..{max_iter}")
    return base_lr * (1.0 - iteration / max_iter) ** power


def classifier_of(model: nn.Module) -> nn.Module:
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise ValueError("the model has no 'classifier' module (DeepLab v2 expected)")
    return classifier


def param_groups(model: nn.Module, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SGD parameter groups of DeepLab v2 (trainable parameters only):

    ``backbone`` (lr x1, weight decay), ``classifier_weight`` (lr x
    ``lr_mult_classifier_weight``, weight decay), ``classifier_bias`` (lr x
    ``lr_mult_classifier_bias``, no weight decay). Each group has ``name`` and ``lr_mult``; its
    ``lr`` is set by the schedule (``set_lr``)."""
    solver = config["solver"]
    classifier = classifier_of(model)
    head_ids = {id(p) for p in classifier.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    weights, biases = [], []
    for name, p in classifier.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    base_lr = float(solver["lr"])
    wd = float(solver["weight_decay"])
    groups = [
        {"name": "backbone", "params": backbone, "lr_mult": 1.0, "weight_decay": wd},
        {"name": "classifier_weight", "params": weights,
         "lr_mult": float(solver["lr_mult_classifier_weight"]), "weight_decay": wd},
        {"name": "classifier_bias", "params": biases,
         "lr_mult": float(solver["lr_mult_classifier_bias"]), "weight_decay": 0.0},
    ]
    for g in groups:
        g["lr"] = base_lr * g["lr_mult"]
    return [g for g in groups if g["params"]]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, max_iter: int,
            power: float) -> float:
    lr = poly_lr(base_lr, iteration, max_iter, power)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def build_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with momentum over ``param_groups(model, config)``."""
    solver = config["solver"]
    return torch.optim.SGD(param_groups(model, config), lr=float(solver["lr"]),
                           momentum=float(solver["momentum"]))
