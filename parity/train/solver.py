"""SGD for DeepLab v2: three parameter groups, the poly schedule, and two update rules.

* groups (the official train prototxt's ``param { lr_mult decay_mult }``): ``backbone``
  convolutions (``lr_mult: 1, decay_mult: 1``), ``classifier_weight`` (lr x
  ``lr_mult_classifier_weight``, 10 in the recipe; ``decay_mult: 1``), ``classifier_bias`` (lr x
  ``lr_mult_classifier_bias``, 20; ``decay_mult: 0``); frozen BatchNorm is not trained (Caffe
  ``lr_mult: 0`` on BatchNorm and Scale);
* schedule: ``lr(it) = lr * (1 - it / max_iter) ** poly_power`` for the update that follows
  ``it`` completed updates (the first update uses the base LR), set every iteration (Caffe's
  ``lr_policy: "poly"``); with ``solver.lr_step`` N > 1 it is set every N updates and held
  between (``it`` rounded down to a multiple of N): the seed port's ``PolynomialLR`` with
  ``LR_DECAY: 10``;
* update (``solver.update``): ``caffe`` is Caffe's ``SGDSolver``: ``g = grad + weight_decay *
  decay_mult * W``; ``V = momentum * V + lr * lr_mult * g``; ``W -= V`` (``CaffeSGD``; the LR
  sits inside the history). ``pytorch`` is ``torch.optim.SGD`` (the seed port): ``V = momentum *
  V + g``; ``W -= lr * V``, which differs once the LR changes. The gradient ``grad`` is the mean
  over the ``iter_size`` passes (each pass's loss divided by ``iter_size``), as Caffe normalises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["UPDATES", "CaffeSGD", "poly_lr", "param_groups", "set_lr", "build_optimizer", "classifier_of"]

UPDATES = ("caffe", "pytorch")


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float, step: int = 1) -> float:
    """``base_lr * (1 - i / max_iter) ** power`` with ``i`` = ``iteration`` rounded down to a
    multiple of ``step``: the LR of the update that follows ``iteration`` completed updates
    (``iteration`` in ``0 .. max_iter``). ``step`` 1 is Caffe's poly policy; the seed port
    recomputes its LR every ``LR_DECAY`` (10) updates and holds it between."""
    if not 0 <= iteration <= max_iter:
        raise ValueError(f"iteration {iteration} outside 0..{max_iter}")
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    return base_lr * (1.0 - iteration // step * step / max_iter) ** power


def classifier_of(model: nn.Module) -> nn.Module:
    classifier = getattr(model, "classifier", None)
    if classifier is None:
        raise ValueError("the model has no 'classifier' module (DeepLab v2 expected)")
    return classifier


def param_groups(model: nn.Module, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SGD parameter groups of DeepLab v2 (trainable parameters only):

    ``backbone`` (lr x1, weight decay), ``classifier_weight`` (lr x
    ``lr_mult_classifier_weight``, weight decay), ``classifier_bias`` (lr x
    ``lr_mult_classifier_bias``, no weight decay). Each group has ``name``, ``lr_mult``,
    ``decay_mult`` and ``weight_decay`` (``solver.weight_decay * decay_mult``); its ``lr`` is set
    by the schedule (``set_lr``)."""
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
        {"name": "backbone", "params": backbone, "lr_mult": 1.0, "decay_mult": 1.0},
        {"name": "classifier_weight", "params": weights,
         "lr_mult": float(solver["lr_mult_classifier_weight"]), "decay_mult": 1.0},
        {"name": "classifier_bias", "params": biases,
         "lr_mult": float(solver["lr_mult_classifier_bias"]), "decay_mult": 0.0},
    ]
    for g in groups:
        g["lr"] = base_lr * g["lr_mult"]
        g["weight_decay"] = wd * g["decay_mult"]
    return [g for g in groups if g["params"]]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, max_iter: int,
           power: float, step: int = 1) -> float:
    """Set every group's LR to ``poly_lr(...) * lr_mult``; returns the base LR of this update."""
    lr = poly_lr(base_lr, iteration, max_iter, power, step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's ``SGDSolver`` update (``sgd_solver.cpp``: ``Regularize``, ``ComputeUpdateValue``,
    ``Update``) per parameter group (``lr``, ``momentum``, ``weight_decay``):
    ``g = grad + weight_decay * W``; ``V = momentum * V + lr * g``; ``W -= V``.

    ``V`` is ``state[p]["history"]`` (Caffe's ``history_``). A parameter without a gradient is
    updated as Caffe updates one whose diff is zero (decay and momentum still apply).
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102 (see the class)
        if closure is not None:
            raise ValueError("CaffeSGD does not take a closure")
        for group in self.param_groups:
            lr, momentum, decay = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if decay:
                    grad = grad.add(p, alpha=decay)
                state = self.state[p]
                if "history" not in state:
                    state["history"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                history = state["history"]
                history.mul_(momentum).add_(grad, alpha=lr)
                p.sub_(history)


def build_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``CaffeSGD`` (``solver.update: caffe``) or ``torch.optim.SGD`` (``pytorch``) with momentum
    over ``param_groups(model, config)``."""
    solver = config["solver"]
    groups = param_groups(model, config)
    if solver["update"] == "caffe":
        return CaffeSGD(groups, lr=float(solver["lr"]), momentum=float(solver["momentum"]))
    if solver["update"] == "pytorch":
        return torch.optim.SGD(groups, lr=float(solver["lr"]), momentum=float(solver["momentum"]))
    raise ValueError(f"solver.update must be one of {UPDATES}, got {solver['update']!r}")
