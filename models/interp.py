"""Caffe's ``Interp`` layer (DeepLab fork): output-size arithmetic and bilinear resizing.

The fork's ``interp_layer.cpp`` computes the output size with integer arithmetic from an
effective input size ``H' = H + pad_beg + pad_end`` (pads may only crop, so they are <= 0):

* ``shrink_factor`` alone: ``(H' - 1) // shrink + 1``
* ``zoom_factor`` alone: ``H' + (H' - 1) * (zoom - 1)``
* ``height`` and ``width``: taken as given
* ``shrink_factor`` and ``zoom_factor``: shrink first, then zoom the shrunk size

and resizes bilinearly with the corners aligned (``align_corners=True``). A factor of 1 and a
height/width of 0 count as "not given"; with nothing given the output is ``H' x W'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["caffe_interp_size", "interp_length", "caffe_interp", "caffe_interp_layer", "CaffeInterp"]

#: a size that is traced, not known: a SymInt (torch.export, dynamic-shape ONNX) or a 0-dim tensor
#: (torch.jit.trace); kept as it is so the exported graph computes it from the input's shape
_TRACED = (torch.SymInt, torch.Tensor)


def _check_int(name: str, value: object, minimum: int) -> int:
    # a SymInt is a size traced symbolically (torch.export, dynamic-shape ONNX): kept symbolic
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise ValueError(f"Interp {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"Interp {name} must be >= {minimum}, got {value}")
    return value


def caffe_interp_size(
    h: int,
    w: int,
    *,
    height: int = 0,
    width: int = 0,
    zoom: int = 1,
    shrink: int = 1,
    pad_beg: int = 0,
    pad_end: int = 0,
) -> tuple[int, int]:
    """Output ``(height, width)`` of Caffe's ``Interp`` for an ``h x w`` input (pixels).

    Mirrors the DeepLab fork exactly, including its precedence: shrink alone, zoom alone,
    explicit height+width, then shrink and zoom together (shrink first, then zoom).
    ``pad_beg``/``pad_end`` must be <= 0 (they crop the input on both axes).
    Raises ``ValueError`` for positive pads, factors < 1, a lone height or width, or a crop
    that leaves nothing.
    """
    h = _check_int("input height", h, 1)
    w = _check_int("input width", w, 1)
    height = _check_int("height", height, 0)
    width = _check_int("width", width, 0)
    zoom = _check_int("zoom_factor", zoom, 1)
    shrink = _check_int("shrink_factor", shrink, 1)
    for name, pad in (("pad_beg", pad_beg), ("pad_end", pad_end)):
        if isinstance(pad, bool) or not isinstance(pad, int):
            raise ValueError(f"Interp {name} must be an int, got {pad!r}")
        if pad > 0:
            raise ValueError(
                f"Interp {name} must be <= 0 (only cropping is supported, as in Caffe), got {pad}"
            )
    h_eff = h + pad_beg + pad_end
    w_eff = w + pad_beg + pad_end
    if h_eff < 1 or w_eff < 1:
        raise ValueError(
            f"Interp pads pad_beg={pad_beg}, pad_end={pad_end} crop a {h}x{w} input to nothing"
        )

    has_shrink = shrink != 1
    has_zoom = zoom != 1
    has_size = height > 0 and width > 0
    if (height > 0) != (width > 0) and not (has_shrink or has_zoom):
        raise ValueError(f"Interp needs both height and width, got height={height}, width={width}")

    if has_size and has_shrink == has_zoom:  # a lone factor wins over height/width, both factors do not
        return height, width
    return interp_length(h_eff, shrink=shrink, zoom=zoom), interp_length(w_eff, shrink=shrink, zoom=zoom)


def interp_length(n, *, shrink: int = 1, zoom: int = 1):
    """One side of Caffe's ``Interp`` output from factors alone: shrink first
    (``(n - 1) // shrink + 1``), then zoom (``n + (n - 1) * (zoom - 1)``); a factor of 1 does
    nothing. No validation: ``n`` may be an int or a traced size (SymInt, 0-dim tensor)."""
    if shrink != 1:
        n = (n - 1) // shrink + 1
    if zoom != 1:
        n = n + (n - 1) * (zoom - 1)
    return n


def caffe_interp(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Resize ``x`` (``N x C x H x W``) to ``size = (h, w)``: bilinear, corners aligned.

    Equal to Caffe's ``Interp`` (``caffe_cpu_interp2``) once the output size is known; an output
    of 1 pixel along an axis takes the first input pixel, as Caffe does.
    """
    if x.dim() != 4:
        raise ValueError(f"caffe_interp expects an N x C x H x W tensor, got shape {tuple(x.shape)}")
    out_h, out_w = (v if isinstance(v, _TRACED) else int(v) for v in size[:2])
    if not isinstance(out_h, _TRACED) and not isinstance(out_w, _TRACED) and (out_h < 1 or out_w < 1):
        raise ValueError(f"caffe_interp output size must be positive, got {(out_h, out_w)}")
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)


def caffe_interp_layer(
    x: torch.Tensor,
    *,
    height: int = 0,
    width: int = 0,
    zoom: int = 1,
    shrink: int = 1,
    pad_beg: int = 0,
    pad_end: int = 0,
) -> torch.Tensor:
    """The whole Caffe ``Interp`` layer on ``x`` (``N x C x H x W``): crop by the (non-positive)
    pads, then resize to :func:`caffe_interp_size` with :func:`caffe_interp`."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    size = caffe_interp_size(
        h, w, height=height, width=width, zoom=zoom, shrink=shrink, pad_beg=pad_beg, pad_end=pad_end
    )
    # pad_beg crops the top/left, pad_end the bottom/right, on both spatial axes.
    x = x[..., -pad_beg : h + pad_end, -pad_beg : w + pad_end]
    return caffe_interp(x, size)


class CaffeInterp(nn.Module):
    """Module form of Caffe's ``Interp`` layer with fixed ``interp_param`` values."""

    def __init__(
        self,
        *,
        height: int = 0,
        width: int = 0,
        zoom: int = 1,
        shrink: int = 1,
        pad_beg: int = 0,
        pad_end: int = 0,
    ) -> None:
        super().__init__()
        self.params = {
            "height": height,
            "width": width,
            "zoom": zoom,
            "shrink": shrink,
            "pad_beg": pad_beg,
            "pad_end": pad_end,
        }
        n = 2 - min(pad_beg, 0) - min(pad_end, 0)  # any input the pads leave non-empty
        caffe_interp_size(n, n, **self.params)  # validate the parameters now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` -> ``N x C x h x w`` as Caffe's ``Interp`` computes it."""
        return caffe_interp_layer(x, **self.params)

    def extra_repr(self) -> str:
        defaults = {"height": 0, "width": 0, "zoom": 1, "shrink": 1, "pad_beg": 0, "pad_end": 0}
        return ", ".join(f"{k}={v}" for k, v in self.params.items() if v != defaults[k])
