"""Caffe ``Interp`` (DeepLab fork): output sizes by hand, values against OpenCV's Interp layer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deeplab_caffe.models import CaffeInterp, caffe_interp, caffe_interp_size
from deeplab_caffe.models.interp import caffe_interp_layer


@pytest.mark.parametrize(
    ("h", "w", "params", "expected"),
    [
        (513, 513, {"shrink": 2}, (257, 257)),
        (513, 513, {"shrink": 4, "zoom": 3}, (385, 385)),  # MSC 0.75x: 129, then 129 + 128 * 2
        (321, 321, {"shrink": 2}, (161, 161)),
        (321, 321, {"shrink": 4, "zoom": 3}, (241, 241)),
        (321, 513, {"shrink": 2}, (161, 257)),
        (320, 320, {"shrink": 2}, (160, 160)),  # (319 // 2) + 1
        (21, 21, {"zoom": 2}, (41, 41)),
        (21, 10, {"zoom": 3}, (61, 28)),
        (65, 65, {"zoom": 8}, (513, 513)),
        (41, 41, {"height": 321, "width": 300}, (321, 300)),
        (41, 41, {"height": 1, "width": 1}, (1, 1)),
        (41, 41, {"shrink": 2, "height": 7, "width": 7}, (21, 21)),  # shrink alone beats height/width
        (41, 41, {"zoom": 2, "height": 7, "width": 7}, (81, 81)),  # zoom alone beats height/width
        (41, 41, {"shrink": 2, "zoom": 2, "height": 7, "width": 7}, (7, 7)),  # height/width beat both
        (11, 11, {"shrink": 3, "zoom": 2}, (7, 7)),  # shrink first: 4, then zoom: 7
        (513, 513, {"pad_beg": -1}, (512, 512)),  # cropping only
        (513, 513, {"pad_beg": -1, "pad_end": -2}, (510, 510)),
        (513, 513, {"pad_beg": -1, "shrink": 2}, (256, 256)),  # (511 // 2) + 1
        (21, 21, {"pad_end": -1, "zoom": 2}, (39, 39)),
        (7, 9, {}, (7, 9)),  # nothing given: the (cropped) input size
    ],
)
def test_caffe_interp_size_matches_hand_computed_caffe_sizes(h, w, params, expected):
    assert caffe_interp_size(h, w, **params) == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pad_beg": 1}, "pad_beg must be <= 0"),
        ({"pad_end": 2}, "pad_end must be <= 0"),
        ({"shrink": 0}, "shrink_factor must be >= 1"),
        ({"zoom": 0}, "zoom_factor must be >= 1"),
        ({"height": 5}, "needs both height and width"),
        ({"height": -1, "width": 4}, "height must be >= 0"),
        ({"pad_beg": -5, "pad_end": -5}, "crop a 9x9 input to nothing"),
        ({"zoom": 1.5}, "zoom_factor must be an int"),
    ],
)
def test_caffe_interp_size_rejects_invalid_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        caffe_interp_size(9, 9, **params)


def _opencv_interp(tmp_path: Path, x: np.ndarray, interp_param: str) -> np.ndarray:
    """Run OpenCV's Caffe ``Interp`` layer (prototxt-only net) on ``x`` (N x C x H x W)."""
    n, c, h, w = x.shape
    prototxt = tmp_path / "interp.prototxt"
    prototxt.write_text(
        'name: "interp_test"\n'
        f'layer {{ name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}\n"
        f'layer {{ name: "interp" type: "Interp" bottom: "data" top: "interp" '
        f"interp_param {{ {interp_param} }} }}\n"
    )
    net = cv2.dnn.readNetFromCaffe(str(prototxt))
    net.setInput(x)
    return net.forward()


@pytest.mark.parametrize(
    ("in_size", "interp_param", "params"),
    [
        ((7, 9), "height: 13 width: 5", {"height": 13, "width": 5}),
        ((41, 41), "height: 321 width: 321", {"height": 321, "width": 321}),
        ((65, 65), "height: 33 width: 49", {"height": 33, "width": 49}),
        ((7, 9), "height: 1 width: 1", {"height": 1, "width": 1}),
        ((1, 6), "height: 4 width: 11", {"height": 4, "width": 11}),
        ((21, 21), "zoom_factor: 2", {"zoom": 2}),
        ((7, 9), "zoom_factor: 3", {"zoom": 3}),
        ((65, 33), "zoom_factor: 8", {"zoom": 8}),
    ],
)
def test_caffe_interp_matches_opencv_caffe_interp_layer(tmp_path, in_size, interp_param, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *in_size)).astype(np.float32) * 10.0
    expected = _opencv_interp(tmp_path, x, interp_param)
    size = caffe_interp_size(*in_size, **params)
    assert expected.shape[-2:] == size
    got = caffe_interp(torch.from_numpy(x), size).numpy()
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_shrink_by_two_of_odd_size_takes_every_other_pixel_exactly():
    # (H - 1) // 2 + 1 outputs with aligned corners sample the input at 0, 2, 4, ...: no blending.
    x = torch.randn(1, 4, 513, 321)
    size = caffe_interp_size(513, 321, shrink=2)
    assert size == (257, 161)
    assert torch.equal(caffe_interp(x, size), x[..., ::2, ::2])


@pytest.mark.parametrize(("n", "shrink", "zoom"), [(513, 4, 3), (321, 4, 3), (320, 2, 1), (100, 3, 2)])
def test_shrink_keeps_corner_values(n, shrink, zoom):
    x = torch.randn(1, 2, n, n + 3)
    y = caffe_interp(x, caffe_interp_size(n, n + 3, shrink=shrink, zoom=zoom))
    for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        torch.testing.assert_close(y[..., i, j], x[..., i, j], rtol=1e-6, atol=1e-6)


def test_shrink_four_zoom_three_samples_at_four_thirds_steps():
    # 513 -> 385: output pixel i sits at input position 4 i / 3 (aligned corners).
    x = torch.arange(513, dtype=torch.float64).repeat(513, 1)[None, None]  # value = column index
    y = caffe_interp(x, caffe_interp_size(513, 513, shrink=4, zoom=3))
    expected = torch.arange(385, dtype=torch.float64) * 4 / 3
    torch.testing.assert_close(y[0, 0, 0], expected, rtol=0, atol=1e-9)


def test_same_size_interp_is_the_identity():
    x = torch.randn(1, 3, 17, 5)
    assert torch.equal(caffe_interp(x, (17, 5)), x)


def test_negative_pads_crop_before_resizing():
    x = torch.randn(1, 2, 12, 10)
    y = caffe_interp_layer(x, pad_beg=-1, pad_end=-2, zoom=2)
    cropped = x[..., 1:10, 1:8]
    assert y.shape[-2:] == (17, 13)
    assert torch.equal(y, caffe_interp(cropped, (17, 13)))
    assert torch.equal(caffe_interp_layer(x, pad_beg=-1), x[..., 1:, 1:])


def test_caffe_interp_module_matches_the_function_and_validates_early():
    x = torch.randn(1, 2, 21, 21)
    layer = CaffeInterp(zoom=2)
    assert torch.equal(layer(x), caffe_interp(x, (41, 41)))
    assert repr(layer) == "CaffeInterp(zoom=2)"
    with pytest.raises(ValueError, match="pad_end must be <= 0"):
        CaffeInterp(pad_end=1)


def test_caffe_interp_rejects_non_image_tensors():
    with pytest.raises(ValueError, match="N x C x H x W"):
        caffe_interp(torch.randn(3, 5, 5), (2, 2))
