"""The DeepLab v2 training loss (the MSC loss).

Cross-entropy (``ignore_label`` ignored) on every output map against the label resized by
nearest neighbour to that map's size (``F.interpolate(label[:, None].float(), size,
mode="nearest")``); an MSC model sums it over the 1x, 0.75x, 0.5x and fused maps. Each term is
normalised by the labelled pixels of the whole global batch (equal to ``F.cross_entropy``'s mean
in one process, and exact under DDP).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from deeplab_caffe.parity.train import distributed

__all__ = ["resize_labels", "segmentation_loss"]


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``N x H x W`` int64 labels -> ``N x h x w`` by nearest neighbour (the seed port's way:
    ``F.interpolate(labels[:, None].float(), size, mode="nearest")``)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def segmentation_loss(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
                      ignore_label: int = 255) -> torch.Tensor:
    """Sum over output maps of the mean cross-entropy over labelled pixels.

    ``outputs``: ``{name: N x C x h x w logits}`` (one map, or the MSC maps ``1x``, ``0.75x``,
    ``0.5x``, ``fused``); ``labels``: ``N x H x W`` int64, resized by nearest to each map.
    Under ``torch.distributed`` the pixel count is summed over ranks and the term multiplied by
    the world size, so that the ranks' averaged gradients equal one process's on the whole
    batch. Returns a float32 scalar (0 contribution for a map without labelled pixels).
    """
    sums, counts = [], []
    for logits in outputs.values():
        target = resize_labels(labels, logits.shape[-2:])
        sums.append(F.cross_entropy(logits.float(), target, ignore_index=ignore_label,
                                    reduction="sum"))
        counts.append((target != ignore_label).sum())
    count = torch.stack(counts).to(torch.float32)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        distributed.all_reduce_sum(count)
    total = sums[0].new_zeros(())
    for s, c in zip(sums, count):
        total = total + s * (world / c.clamp(min=1.0))
    return total
