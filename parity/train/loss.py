"""The DeepLab v2 training loss (the MSC loss), in two recipes (``loss.label_resize``).

``caffe_interp`` (the official train net, end of
``cocostuff_deeplabv2_resnet101_train.prototxt``): ``SoftmaxWithLoss`` (``ignore_label: 255``)
on four maps, each against a label made by Caffe's ``Interp`` with corners aligned:

* ``fused`` (``fc_fusion``) and ``1x`` (``fc1``) against ``label_shrink`` (``shrink_factor: 8``:
  an ``H x W`` label becomes ``((H-1)//8+1) x ((W-1)//8+1)``; at 321 px it samples rows and
  columns 0, 8, ..., 320);
* ``0.5x`` (``fc1_res05``) against ``label_shrink16`` (``shrink_factor: 16``);
* ``0.75x``: the score map is interpolated *up* (``fc1_res075_interp``: ``zoom_factor: 4``,
  ``shrink_factor: 3``, bilinear, corners aligned) to ``label_shrink``'s size.

The Interp samples label ids exactly only where ``(H-1)`` divides by ``(h-1)``; elsewhere Caffe
blends ids (a class and 255 give a non-class id), so such sizes are refused (the official crop,
321 = 10 * 32 + 1, samples exactly). A single-scale model's ``out`` map is supervised like ``1x``.

``nearest`` (the seed port): every map against the label resized by nearest neighbour to that
map's size as the port's ``PIL.Image.resize(NEAREST)`` does it (``resize_labels``).

Each term is the cross-entropy summed over labelled pixels divided by their number in the
global micro-batch (Caffe's ``VALID`` normalisation; equal to ``F.cross_entropy``'s mean in one
process, and exact under DDP). The loss is the sum of the terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from deeplab_caffe.models.interp import caffe_interp, caffe_interp_size
from deeplab_caffe.parity.train import distributed

__all__ = ["LABEL_RESIZES", "CAFFE_LABEL_SHRINK", "resize_labels", "caffe_shrink_labels", "loss_terms",
           "segmentation_loss"]

LABEL_RESIZES = ("caffe_interp", "nearest")
#: the official train net's label ``shrink_factor`` per output map; ``0.75x`` is supervised by
#: its score map interpolated up (``zoom_factor: 4, shrink_factor: 3``) to the ``shrink 8`` label
CAFFE_LABEL_SHRINK = {"fused": 8, "1x": 8, "out": 8, "0.75x": 8, "0.5x": 16}
#: the score-map Interp of the 0.75x branch (``fc1_res075_interp``)
RES075_MAP_INTERP = {"zoom": 4, "shrink": 3}


def _pil_nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source rows of Pillow's ``NEAREST`` resize from ``n_in`` to ``n_out``: the pixel whose
    cell holds the output pixel's centre, ``floor((i + 0.5) * n_in / n_out)`` (float64)."""
    index = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor().long()
    return index.clamp(max=n_in - 1).to(device)


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``N x H x W`` int64 labels -> ``N x h x w`` by nearest neighbour as the seed port does it
    (``main.py resize_labels`` @ 4219467: ``PIL.Image.resize(..., NEAREST)`` of each label, which
    samples at pixel centres, not ``F.interpolate(mode="nearest")``'s top-left rule; the port
    passes ``(H, W)`` where PIL reads ``(width, height)``, the same for its square crops)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    rows = _pil_nearest_index(labels.shape[-2], size[0], labels.device)
    cols = _pil_nearest_index(labels.shape[-1], size[1], labels.device)
    return labels[:, rows][:, :, cols]


def caffe_shrink_labels(labels: torch.Tensor, shrink: int) -> torch.Tensor:
    """``N x H x W`` int64 labels through Caffe's ``Interp`` with ``shrink_factor: shrink``.

    Output ``((H-1)//shrink+1) x ((W-1)//shrink+1)``; the corners-aligned bilinear weights are
    0 or 1 exactly when ``(H-1)`` divides by ``(h-1)`` (and likewise for W), so the result is the
    label sampled every ``(H-1)/(h-1)`` pixels, bit for bit Caffe's. Raises ``ValueError`` for other
    sizes, where Caffe blends label ids."""
    height, width = int(labels.shape[-2]), int(labels.shape[-1])
    h, w = caffe_interp_size(height, width, shrink=shrink)
    steps = []
    for big, small in ((height, h), (width, w)):
        if small > 1 and (big - 1) % (small - 1):
            raise ValueError(
                f"a {height}x{width} label shrunk by {shrink} ({h}x{w}): Caffe's Interp would blend label "
                f"ids; use a crop of 8k+1 pixels (32k+1 with MSC), like the official 321")
        steps.append((big - 1) // (small - 1) if small > 1 else 1)
    return labels[:, :: steps[0], :: steps[1]][:, :h, :w]


def _caffe_pair(name: str, logits: torch.Tensor, labels: torch.Tensor,
                shrunk: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, target) of one output map as the official train net pairs them."""
    if name not in CAFFE_LABEL_SHRINK:
        raise ValueError(f"output map {name!r}: the official MSC loss supervises only "
                         f"{sorted(CAFFE_LABEL_SHRINK)}")
    factor = CAFFE_LABEL_SHRINK[name]
    if factor not in shrunk:
        shrunk[factor] = caffe_shrink_labels(labels, factor)
    target = shrunk[factor]
    if name == "0.75x":
        size = caffe_interp_size(int(logits.shape[-2]), int(logits.shape[-1]), **RES075_MAP_INTERP)
        if size != tuple(target.shape[-2:]):
            raise ValueError(f"the 0.75x map {tuple(logits.shape[-2:])} interpolated to {size} does not match "
                             f"the label {tuple(target.shape[-2:])} (use a crop of 32k+1 pixels)")
        logits = caffe_interp(logits, size)
    if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        raise ValueError(f"output map {name!r} is {tuple(logits.shape[-2:])} but its label is "
                         f"{tuple(target.shape[-2:])} (the net must have output stride 8)")
    return logits, target


def loss_terms(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor, ignore_label: int = 255,
               label_resize: str = "caffe_interp") -> dict[str, torch.Tensor]:
    """``{map name: float32 scalar}``: each map's cross-entropy over its labelled pixels.

    ``outputs``: ``{name: N x C x h x w logits}`` (``out``, or the MSC maps ``1x``, ``0.75x``,
    ``0.5x``, ``fused``); ``labels``: ``N x H x W`` int64 (``ignore_label`` ignored), paired with
    each map as ``label_resize`` says (module docstring). Under ``torch.distributed`` the pixel
    count is summed over ranks and the term multiplied by the world size, so that the ranks'
    averaged gradients equal one process's on the whole batch. A map without labelled pixels
    contributes 0.
    """
    if label_resize not in LABEL_RESIZES:
        raise ValueError(f"label_resize must be one of {LABEL_RESIZES}, got {label_resize!r}")
    sums, counts, shrunk = [], [], {}
    for name, logits in outputs.items():
        if label_resize == "caffe_interp":
            logits, target = _caffe_pair(name, logits, labels, shrunk)
        else:
            target = resize_labels(labels, logits.shape[-2:])
        sums.append(F.cross_entropy(logits.float(), target, ignore_index=ignore_label, reduction="sum"))
        counts.append((target != ignore_label).sum())
    count = torch.stack(counts).to(torch.float32)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        distributed.all_reduce_sum(count)
    return {name: s * (world / c.clamp(min=1.0)) for name, s, c in zip(outputs, sums, count)}


def segmentation_loss(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor, ignore_label: int = 255,
                      label_resize: str = "caffe_interp") -> torch.Tensor:
    """The sum of ``loss_terms`` (a float32 scalar): the MSC loss, or one map's loss."""
    terms = list(loss_terms(outputs, labels, ignore_label, label_resize).values())
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
