"""Caffe layer names -> PyTorch module names, by rules over the names (stage, block, branch).

The rules (docs/architecture.md has the table):

- ``conv1`` / ``bn_conv1`` / ``scale_conv1``           -> ``backbone.stem.conv1.{conv,bn,bn}``
- ``res{S}{B}_branch{X}`` / ``bn..`` / ``scale..``      -> ``backbone.res{S}.{B}.branch{X}.{conv,bn,bn}``
- ``fc1_<set>_c{i}`` (ASPP) or a single ``fc1_<set>``   -> ``classifier.branches.{i}``

DeepLab-VGG16 (``models.vgg``, module names = Caffe's):

- ``conv{S}_{I}``                                        -> ``backbone.conv{S}_{I}``
- ``fc6`` / ``fc7`` / ``fc8_<set>`` (LargeFOV)           -> ``classifier.branches.0.fc{6,7,8}``
- ``fc6_{k}`` / ``fc7_{k}`` / ``fc8_<set>_{k}`` (ASPP-L) -> ``classifier.branches.{k-1}.fc{6,7,8}``

The rules see 1x names only: an MSC copy (``res2a_branch1_res05``, ``fc1_voc12_res05_c0``) is
mapped through the 1x layer it repeats, which ``converter.topology`` finds from the dataflow.

BatchNorm and Scale both land on one ``nn.BatchNorm2d``: Caffe's BatchNorm holds the running
statistics (times a scale factor), Scale holds the affine part; ``fold_batchnorm`` joins them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_BLOCK = re.compile(r"^(?P<kind>res|bn|scale)(?P<stage>\d)(?P<block>[a-z]\d*)_branch(?P<branch>1|2[abc])$")
_BLOCK_OUTPUT = re.compile(r"^res(?P<stage>\d)(?P<block>[a-z]\d*)(?:_relu)?$")
_CLASSIFIER = re.compile(r"^fc1(?:_[A-Za-z0-9]+)*?(?:_c(?P<index>\d+))?$")
_VGG_CONV = re.compile(r"^conv(?P<stage>[1-5])_(?P<index>\d+)$")
# fc6/fc7/fc8, then an optional dataset tag (``_voc12``; empty when the template's ${EXP} is
# unset; ``_exper/voc12`` in martinkersner/train-DeepLab's deploy graphs), then the ASPP-L branch
# number 1..4
_VGG_FC = re.compile(r"^fc(?P<kind>[678])(?:_[A-Za-z][A-Za-z0-9/]*|_)?(?:_(?P<index>\d+))?$")
_VGG_POOL = re.compile(r"^pool(?:[1-5]|5a)$")
_VGG_DROPOUT = re.compile(r"^drop(?P<kind>[67])(?:_(?P<index>\d+))?$")
_STEM = {
    "conv1": ("backbone.stem.conv1.conv", "conv"),
    "bn_conv1": ("backbone.stem.conv1.bn", "bn"),
    "scale_conv1": ("backbone.stem.conv1.bn", "scale"),
}


@dataclass(frozen=True)
class Target:
    """Where a Caffe layer's blobs go.

    module: dotted PyTorch module path. role: ``conv`` (weight [, bias]), ``bn`` (mean*s,
    var*s, s) or ``scale`` (gamma [, beta]).
    """

    module: str
    role: str


def classifier_index(name: str) -> int | None:
    """ASPP branch index of a classifier conv name (``fc1_voc12_c2`` -> 2, ``fc1_coco`` -> 0)."""
    match = _CLASSIFIER.match(name)
    if match is None:
        return None
    return int(match["index"]) if match["index"] is not None else 0


def caffe_target(name: str) -> Target | None:
    """Map a 1x Caffe layer that carries blobs to its PyTorch module, or None if no rule applies."""
    if name in _STEM:
        return Target(*_STEM[name])
    match = _BLOCK.match(name)
    if match:
        role = {"res": "conv", "bn": "bn", "scale": "scale"}[match["kind"]]
        leaf = "conv" if role == "conv" else "bn"
        return Target(f"backbone.res{match['stage']}.{match['block']}.branch{match['branch']}.{leaf}", role)
    index = classifier_index(name)
    if index is not None:
        return Target(f"classifier.branches.{index}", "conv")
    return _vgg_target(name)


def _vgg_branch(index: str | None) -> str:
    return f"classifier.branches.{int(index) - 1 if index is not None else 0}"


def _vgg_target(name: str) -> Target | None:
    """The DeepLab-VGG16 rules (module docstring); ASPP-L branches are numbered from 1 in Caffe."""
    match = _VGG_CONV.match(name)
    if match:
        return Target(f"backbone.{name}", "conv")
    match = _VGG_FC.match(name)
    if match and (match["index"] is None or int(match["index"]) >= 1):
        return Target(f"{_vgg_branch(match['index'])}.fc{match['kind']}", "conv")
    return None


def vgg_module(name: str, layer_type: str) -> str | None:
    """The ``models.vgg`` module a 1x VGG layer stands for: convolutions, pools
    (``backbone.pool{s}``, ``backbone.pool5a``), dropouts (``classifier.branches.{k}.drop{6,7}``)
    and the fc8 sum (``classifier``); None for anything else (ReLUs are functional)."""
    if layer_type == "Convolution":
        target = _vgg_target(name)
        return target.module if target else None
    if layer_type == "Pooling" and _VGG_POOL.match(name):
        return f"backbone.{name}"
    match = _VGG_DROPOUT.match(name)
    if layer_type == "Dropout" and match:
        return f"{_vgg_branch(match['index'])}.drop{match['kind']}"
    match = _VGG_FC.match(name)
    if layer_type == "Eltwise" and match and match["kind"] == "8" and match["index"] is None:
        return "classifier"
    return None


def caffe_output_module(name: str, layer_type: str, vgg: bool = False) -> str | None:
    """The PyTorch module whose output equals this 1x Caffe layer's output, for forward parity.

    Convolutions map to their ``.conv``; Scale layers to the folded ``.bn`` (BN+Scale output);
    a block's ReLU to the block; ``pool1`` to the stem pool; the ASPP sum to ``classifier``;
    in a VGG graph (``vgg``), what ``vgg_module`` says (dropouts excluded: identity at inference).
    BatchNorm alone (before its Scale) and in-branch ReLUs have no PyTorch counterpart.
    """
    if vgg:
        return vgg_module(name, layer_type) if layer_type != "Dropout" else None
    if layer_type in ("Convolution", "Scale"):
        target = caffe_target(name)
        return target.module if target else None
    if layer_type == "Pooling" and name == "pool1":
        return "backbone.stem.pool1"
    if layer_type == "ReLU":
        match = _BLOCK_OUTPUT.match(name)
        return f"backbone.res{match['stage']}.{match['block']}" if match and name.endswith("_relu") else None
    if layer_type == "Eltwise" and classifier_index(name) is not None:
        return "classifier"
    return None


def fold_batchnorm(
    bn_blobs: list[np.ndarray], scale_blobs: list[np.ndarray] | None, n_channels: int
) -> dict[str, np.ndarray]:
    """Caffe BatchNorm ``[mean*s, var*s, [s]]`` + Scale ``[gamma, beta]`` -> BatchNorm2d tensors.

    The moving-average factor s is divided out (s == 0, a never-updated layer, means zero
    statistics, as Caffe does). A missing Scale layer gives gamma 1, beta 0; a Scale without
    bias gives beta 0. Returns float32 arrays of shape (C,): running_mean, running_var,
    weight, bias.
    """
    factor = float(np.asarray(bn_blobs[2], dtype=np.float64).reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor
    mean = np.asarray(bn_blobs[0], dtype=np.float64).reshape(-1) * inverse
    var = np.asarray(bn_blobs[1], dtype=np.float64).reshape(-1) * inverse
    gamma = np.ones(n_channels) if not scale_blobs else np.asarray(scale_blobs[0], dtype=np.float64).reshape(-1)
    beta = np.zeros(n_channels) if not scale_blobs or len(scale_blobs) < 2 else np.asarray(scale_blobs[1]).reshape(-1)
    return {
        "running_mean": mean.astype(np.float32),
        "running_var": var.astype(np.float32),
        "weight": np.asarray(gamma, dtype=np.float32),
        "bias": np.asarray(beta, dtype=np.float32),
    }
