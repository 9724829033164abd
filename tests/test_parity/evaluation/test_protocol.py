"""Evaluation protocols a manifest row names: score-map upsampling (Caffe's Interp, PyTorch's
``align_corners=False``, TF 1's ``resize_bilinear``) and the dataset's mean, each checked against
an independent computation (numpy, OpenCV, values worked out by hand from the definition)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplab_caffe.parity.data.transforms import MEANS_BGR
from deeplab_caffe.parity.evaluation.evaluate import (EvaluationError, evaluate, tf1_resize_bilinear,
                                                      upsample_scores)
from deeplab_caffe.parity.evaluation.metrics import ConfusionMatrix


def _aligned_corners_numpy(a: np.ndarray, zoom: int) -> np.ndarray:
    """``C x h x w`` -> ``C x ((h-1)*zoom+1) x ((w-1)*zoom+1)``: input pixel i sits at output
    pixel i*zoom, linear in between (np.interp along each axis)."""
    _, h, w = a.shape
    ys, xs = np.arange((h - 1) * zoom + 1) / zoom, np.arange((w - 1) * zoom + 1) / zoom
    columns = np.apply_along_axis(lambda v: np.interp(ys, np.arange(h), v), 1, a)
    return np.apply_along_axis(lambda v: np.interp(xs, np.arange(w), v), 2, columns)


def test_caffe_interp_zooms_the_513_crop_exactly_and_crops_to_the_image():
    """DeepLab's test net: 65 x 65 scores of the 513 crop -> Interp zoom 8 -> 513 x 513 (corners
    aligned: score i lands on pixel 8i), then the prediction is cut to the image (500 x 375)."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 65, 65)).astype(np.float64)
    up = upsample_scores(torch.from_numpy(scores)[None], (513, 513), (500, 375), "caffe_interp")
    assert up.shape == (1, 3, 500, 375)
    expected = _aligned_corners_numpy(scores, 8)[:, :500, :375]
    np.testing.assert_allclose(up[0].numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(up[0, :, ::8, ::8].numpy(), scores[:, :63, :47], atol=1e-6)  # no blending there


def test_caffe_interp_is_opencvs_caffe_interp_layer_with_zoom_8(tmp_path):
    """The official test net's ``fc1_interp`` (``zoom_factor: 8``) run by OpenCV's Caffe importer."""
    scores = np.random.default_rng(3).normal(size=(1, 5, 65, 41)).astype(np.float32) * 10
    prototxt = tmp_path / "fc1_interp.prototxt"
    prototxt.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 5 '
                        'dim: 65 dim: 41 } } }\nlayer { name: "fc1_interp" type: "Interp" bottom: "data" '
                        'top: "fc1_interp" interp_param { zoom_factor: 8 } }\n')
    net = cv2.dnn.readNetFromCaffe(str(prototxt))
    net.setInput(scores)
    expected = net.forward()
    assert expected.shape == (1, 5, 513, 321)
    up = upsample_scores(torch.from_numpy(scores), (513, 321), (500, 300), "caffe_interp").numpy()
    np.testing.assert_allclose(up, expected[..., :500, :300], rtol=1e-5, atol=1e-4)


def test_caffe_interp_refuses_a_zoom_that_falls_short_of_the_label():
    """Unpadded, a 500-pixel side gives 63 scores and (63-1)*8+1 = 497 < 500: the official test
    net never sees that (it pads to 513), so it is an error, not a silent misalignment."""
    with pytest.raises(EvaluationError, match="497x497, smaller than the 500x500 label"):
        upsample_scores(torch.zeros(1, 2, 63, 63), (500, 500), (500, 500), "caffe_interp")
    with pytest.raises(EvaluationError, match="unknown upsampling 'nearest'"):
        upsample_scores(torch.zeros(1, 2, 9, 9), (65, 65), (65, 65), "nearest")


def test_align_corners_false_is_opencvs_bilinear_resize():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 9, 13)).astype(np.float32)
    up = upsample_scores(torch.from_numpy(scores)[None], (67, 101), (60, 100), "align_corners_false")
    reference = cv2.resize(scores.transpose(1, 2, 0), (101, 67), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(up[0].numpy(), reference[:, :60, :100], atol=1e-5)


def test_align_corners_true_is_scipys_corner_to_corner_zoom():
    """scipy's ``zoom(order=1, grid_mode=False)`` maps the first and last pixel centres onto
    each other, as ``nn.Upsample(align_corners=True)`` in DeepLabv3.pytorch's model does."""
    from scipy import ndimage

    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 9, 13)).astype(np.float64)
    up = upsample_scores(torch.from_numpy(scores).float()[None], (65, 97), (60, 90), "align_corners_true")
    reference = ndimage.zoom(scores, (1, 65 / 9, 97 / 13), order=1, grid_mode=False, mode="nearest")
    assert reference.shape == (3, 65, 97)
    np.testing.assert_allclose(up[0].numpy(), reference[:, :60, :90], atol=1e-5)
    other = upsample_scores(torch.from_numpy(scores).float()[None], (65, 97), (60, 90), "align_corners_false")
    assert (other - up).abs().max() > 0.1  # the two conventions differ visibly


def test_tf1_resize_bilinear_samples_without_half_pixel_offset():
    """TF 1 ``resize_bilinear`` (align_corners=False): output pixel y reads input y * in/out,
    clamped at the last pixel. [0, 8, 16] -> 6: positions 0, .5, 1, 1.5, 2, 2.5."""
    x = torch.tensor([0.0, 8.0, 16.0]).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(tf1_resize_bilinear(x, (1, 6))[0, 0, 0].numpy(), [0, 4, 8, 12, 16, 16])
    y = torch.tensor([0.0, 10.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(tf1_resize_bilinear(y, (5, 1))[0, 0, :, 0].numpy(), [0, 4, 8, 10, 10], atol=1e-6)
    assert upsample_scores(x, (1, 6), (1, 5), "tf1_resize_bilinear").shape == (1, 1, 1, 5)


class Stride8(nn.Module):
    """A fixed stride-8 scorer: 1x1 convolution, then 8 x 8 average pooling (ceil, like DeepLab's 513 -> 65)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 8, 8, ceil_mode=True)


class Images:
    n_classes, ignore_label, name, split = 4, 255, "random", "test"

    def __init__(self) -> None:
        rng = np.random.default_rng(2)
        self.items = [(rng.integers(0, 256, (41, 49, 3), dtype=np.uint8), rng.integers(0, 4, (41, 49)), "a"),
                      (rng.integers(0, 256, (33, 30, 3), dtype=np.uint8), rng.integers(0, 4, (33, 30)), "b")]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_evaluate_runs_the_official_protocol_end_to_end():
    """COCO-Stuff's mean, pad to 57 (8*7 + 1, a small 513), Interp zoom 8, crop to the image:
    the confusion matrix equals one computed by hand with numpy's interpolation."""
    model, data = Stride8().eval(), Images()
    result = evaluate(model, data, device="cpu", pad_to=57, mean_bgr=MEANS_BGR["coco"], upsample="caffe_interp",
                      progress=False)
    matrix = ConfusionMatrix(4)
    for image, label, _ in data.items:
        x = np.zeros((57, 57, 3), np.float32)
        x[: image.shape[0], : image.shape[1]] = image.astype(np.float32) - np.float32([104.0, 114.1, 120.1])
        with torch.no_grad():
            scores = model(torch.from_numpy(x.transpose(2, 0, 1))[None])[0].double().numpy()
        up = _aligned_corners_numpy(scores, 8)[:, : label.shape[0], : label.shape[1]]
        matrix.update(torch.from_numpy(up.argmax(0)), torch.from_numpy(label))
    np.testing.assert_array_equal(result.confusion, matrix.numpy())
    assert result.settings["upsample"] == "caffe_interp" and result.settings["mean_bgr"] == [104.0, 114.1, 120.1]
    other = evaluate(model, data, device="cpu", pad_to=57, upsample="align_corners_false", progress=False)
    assert not np.array_equal(other.confusion, result.confusion)  # the protocol matters on these images
