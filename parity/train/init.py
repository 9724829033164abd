"""Initialising a model from a converted checkpoint (e.g. ``coco_init``): the backbone must
fit, the classifier is loaded only when all of it fits."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeplab_caffe.converter import convert
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.models import CheckpointError, default_config, read_checkpoint, save_checkpoint
from deeplab_caffe.parity.train.solver import classifier_of

__all__ = ["InitReport", "SYNTHETIC_INIT_CLASSES", "load_init_weights", "resolve_init", "synthetic_init"]

#: the COCO init's class count, which a synthetic init copies (single 1x1 classifier)
SYNTHETIC_INIT_CLASSES = 91


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


def synthetic_init(config: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """``folder/synthetic_init_seed<N>.pth``: a stand-in for the converted COCO init, made here.

    A caffemodel with the official DeepLab-ResNet topology for the recipe's backbone
    (``model.n_blocks``, ``model.stem_channels``), the COCO init's single classifier over 91
    classes and weights seeded by ``model.init_synthetic_seed`` (``converter.synthetic``), is
    written to a temporary folder and converted by ``converter.convert``, as
    ``deeplab-convert`` would; the checkpoint is written atomically. An existing file is reused
    (the same seed and backbone always give the same weights). Returns its path.
    """
    m = config["model"]
    seed = int(m["init_synthetic_seed"])
    shape = "-".join(str(int(n)) for n in m["n_blocks"])
    target = Path(folder) / f"synthetic_init_b{shape}_s{int(m['stem_channels'])}_seed{seed}.pth"
    if target.is_file():
        return target
    caffe_config = default_config(SYNTHETIC_INIT_CLASSES, n_blocks=tuple(int(n) for n in m["n_blocks"]),
                                  aspp_rates=None, msc=False, stem_channels=int(m["stem_channels"]))
    with tempfile.TemporaryDirectory(prefix="deeplab-init-") as tmp:
        made = make_synthetic_deeplab(tmp, caffe_config, seed=seed, name="synthetic_init", msc_copies=False)
        conversion = convert(made.caffemodel_path, made.prototxt_path, n_classes=SYNTHETIC_INIT_CLASSES)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, conversion.state_dict, conversion.config,
                        {"source_file": f"synthetic_init.caffemodel (converter.synthetic, seed {seed})",
                         "source_sha256": conversion.caffemodel_sha256})
    return target


def resolve_init(config: Mapping[str, Any], folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The config a run trains with: ``model.init_checkpoint`` as given, or, when it is null
    and ``model.init_synthetic_seed`` is set, the ``synthetic_init`` made in ``folder``. A named
    init checkpoint that does not exist is a ``CheckpointError`` saying how to make one."""
    model = config["model"]
    path = model["init_checkpoint"]
    if path:
        if not Path(path).is_file():
            raise CheckpointError(
                f"{path}: init checkpoint not found (model.init_checkpoint); convert the COCO init with "
                f"`deeplab-convert --dataset coco_init --weights-dir DIR --output {path}`, or pass "
                f"model.init_checkpoint=PATH")
        return dict(config)
    if model.get("init_synthetic_seed") is None:
        return dict(config)
    made = synthetic_init(config, folder)
    return {**config, "model": {**model, "init_checkpoint": str(made)}}
