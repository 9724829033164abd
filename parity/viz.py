"""Label colours and overlays, shared by training (TensorBoard images) and ``deeplab-demo``.

Colours: the standard PASCAL VOC colour map (bit-shuffled class ids, any number of classes).
Images are uint8 BGR as OpenCV reads them; palettes are RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["voc_palette", "colorize", "overlay", "add_legend", "overlay_panel"]


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map for ``n`` classes: uint8 ``n x 3`` **RGB**.

    Class ``c``'s bits are spread over the colour channels, most significant first:
    bit ``3k`` of ``c`` -> bit ``7 - k`` of R, bit ``3k+1`` -> G, bit ``3k+2`` -> B
    (0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...; 255 would be (224, 224, 192)).
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        r = g = b = 0
        cid = c
        for k in range(8):
            r |= ((cid >> 0) & 1) << (7 - k)
            g |= ((cid >> 1) & 1) << (7 - k)
            b |= ((cid >> 2) & 1) << (7 - k)
            cid >>= 3
        palette[c] = (r, g, b)
    return palette


def colorize(label: np.ndarray, palette: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """``H x W`` class ids -> uint8 ``H x W x 3`` in the palette's channel order; ids outside the
    palette (``ignore_label`` too) are black."""
    label = np.asarray(label)
    valid = (label >= 0) & (label < len(palette)) & (label != ignore_label)
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    out[valid] = palette[label[valid]]
    return out


def overlay(image_bgr: np.ndarray, label: np.ndarray, palette_rgb: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours over a uint8 BGR image: ``(1 - alpha) * image + alpha * colour``
    (pixels with no valid class keep the image). Returns uint8 ``H x W x 3`` BGR."""
    colour = colorize(label, palette_rgb[:, ::-1])  # RGB palette -> BGR colours
    blended = cv2.addWeighted(image_bgr, 1.0 - alpha, colour, alpha, 0.0)
    valid = (label >= 0) & (label < len(palette_rgb)) & (label != 255)
    return np.where(valid[..., None], blended, image_bgr).astype(np.uint8)


def add_legend(image_bgr: np.ndarray, class_ids: Sequence[int], names: Sequence[str],
               palette_rgb: np.ndarray) -> np.ndarray:
    """Append a legend column (a colour swatch and the name of each class in ``class_ids``) to
    the right of a BGR image; returns the wider uint8 BGR image."""
    h = image_bgr.shape[0]
    row, pad = 22, 6
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    labels = [f"{c}: {names[c] if c < len(names) else c}" for c in class_ids]
    text_w = max([cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels] + [60])
    width = pad + 16 + pad + text_w + pad
    height = max(h, pad + row * len(labels) + pad)
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    for i, (c, text) in enumerate(zip(class_ids, labels)):
        y = pad + i * row
        colour = tuple(int(v) for v in palette_rgb[c][::-1])
        cv2.rectangle(panel, (pad, y + 3), (pad + 16, y + 19), colour, thickness=-1)
        cv2.rectangle(panel, (pad, y + 3), (pad + 16, y + 19), (0, 0, 0), thickness=1)
        cv2.putText(panel, text, (pad + 16 + pad, y + 16), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    canvas = np.full((height, image_bgr.shape[1], 3), 255, dtype=np.uint8)
    canvas[:h] = image_bgr
    return np.concatenate([canvas, panel], axis=1)


def overlay_panel(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor,
                  mean_bgr: list[float], ignore_label: int) -> np.ndarray:
    """``image | ground truth overlay | prediction overlay`` as uint8 ``H x 3W x 3`` RGB."""
    n_classes = int(logits.shape[0])
    palette = voc_palette(n_classes)
    bgr = (image.detach().float().cpu().permute(1, 2, 0).numpy() + np.asarray(mean_bgr, np.float32))
    bgr = np.clip(np.rint(bgr), 0, 255).astype(np.uint8)
    h, w = bgr.shape[:2]
    pred = F.interpolate(logits[None].detach().float(), size=(h, w), mode="bilinear",
                         align_corners=False)[0].argmax(0).cpu().numpy()
    gt = label.cpu().numpy().copy()
    gt[gt == ignore_label] = 255
    panel = np.concatenate([bgr, overlay(bgr, gt, palette), overlay(bgr, pred, palette)], axis=1)
    return np.ascontiguousarray(panel[..., ::-1])
