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

__all__ = ["caffe_interp_size", "caffe_interp", "caffe_interp_layer", "CaffeInterp"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
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

    def _shrink(n: int) -> int:
        return (n - 1) // shrink + 1

    def _zoom(n: int) -> int:
        return n + (n - 1) * (zoom - 1)

    if has_shrink and not has_zoom:
        return _shrink(h_eff), _shrink(w_eff)
    if has_zoom and not has_shrink:
        return _zoom(h_eff), _zoom(w_eff)
    if has_size:
        return height, width
    if has_shrink and has_zoom:
        return _zoom(_shrink(h_eff)), _zoom(_shrink(w_eff))
    return h_eff, w_eff


def caffe_interp(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Resize ``x`` (``N x C x H x W``) to ``size = (h, w)``: bilinear, corners aligned.

    Equal to Caffe's ``Interp`` (``caffe_cpu_interp2``) once the output size is known; an output
    of 1 pixel along an axis takes the first input pixel, as Caffe does.
    """
    if x.dim() != 4:
        raise ValueError(f"caffe_interp expects an N x C x H x W tensor, got shape {tuple(x.shape)}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
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
