"""Caffe layer names -> PyTorch module names, by rules over the names (stage, block, branch).

The rules (docs/architecture.md has the table):

- ``conv1`` / ``bn_conv1`` / ``scale_conv1``           -> ``backbone.stem.conv1.{conv,bn,bn}``
- ``res{S}{B}_branch{X}`` / ``bn..`` / ``scale..``      -> ``backbone.res{S}.{B}.branch{X}.{conv,bn,bn}``
- ``fc1_<set>_c{i}`` (ASPP) or a single ``fc1_<set>``   -> ``classifier.branches.{i}``

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
    return None


def caffe_output_module(name: str, layer_type: str) -> str | None:
    """The PyTorch module whose output equals this 1x Caffe layer's output, for forward parity.

    Convolutions map to their ``.conv``; Scale layers to the folded ``.bn`` (BN+Scale output);
    a block's ReLU to the block; ``pool1`` to the stem pool; the ASPP sum to ``classifier``.
    BatchNorm alone (before its Scale) and in-branch ReLUs have no PyTorch counterpart.
    """
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
