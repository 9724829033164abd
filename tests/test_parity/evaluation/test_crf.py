"""DenseCRF post-processing on a procedural image with a noisy probability map."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pydensecrf.densecrf  # noqa: F401  (the test extra: a broken install fails here, never skips)
import pytest

from deeplab_caffe.parity.data.datasets import ProceduralShapes
from deeplab_caffe.parity.evaluation.crf import CRFUnavailableError, DenseCRF, crf_batch


def noisy_case(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, noisy C x H x W probabilities, ground truth): the true one-hot map blurred
    (sigma 2 px) plus uniform noise, renormalised."""
    image_bgr, label, _ = ProceduralShapes(4, size=(48, 56), seed=1, split="val")[index]
    rng = np.random.default_rng(index)
    onehot = np.eye(4, dtype=np.float32)[label].transpose(2, 0, 1)
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in onehot])
    noisy = blurred + rng.uniform(0, 1.2, blurred.shape).astype(np.float32)
    prob = noisy / noisy.sum(axis=0, keepdims=True)
    image_rgb = np.ascontiguousarray(image_bgr[..., ::-1])  # datasets give BGR; the CRF wants RGB
    return image_rgb, prob, label


@pytest.mark.parametrize("index", [0, 1, 2])
def test_crf_changes_the_map_and_improves_pixel_accuracy(index):
    image, prob, label = noisy_case(index)
    out = DenseCRF()(image, prob)
    assert out.shape == prob.shape and out.dtype == np.float32
    assert not np.allclose(out, prob)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-4)  # marginals
    before = (prob.argmax(axis=0) == label).mean()
    after = (out.argmax(axis=0) == label).mean()
    assert before < 0.97 and after > before


def test_crf_batch_in_worker_processes_equals_inline():
    cases = [noisy_case(i) for i in range(3)]
    images, probs = [c[0] for c in cases], [c[1] for c in cases]
    crf = DenseCRF(iter_max=5)
    inline = crf_batch(images, probs, processes=0, crf=crf)
    pooled = crf_batch(images, probs, processes=2, crf=crf)
    assert len(pooled) == 3
    for a, b in zip(inline, pooled):
        assert np.array_equal(a, b)


def test_crf_accepts_non_contiguous_views():
    image, prob, _ = noisy_case(0)
    bgr = np.ascontiguousarray(image[..., ::-1])
    out_view = DenseCRF()(bgr[..., ::-1], prob)  # a negative-stride view
    assert np.array_equal(out_view, DenseCRF()(image, prob))


def test_crf_rejects_mismatched_inputs():
    image, prob, _ = noisy_case(0)
    with pytest.raises(ValueError, match="does not match"):
        DenseCRF()(image[:-1], prob)
    with pytest.raises(ValueError, match="uint8"):
        DenseCRF()(image.astype(np.float32), prob)
    with pytest.raises(ValueError, match="images but"):
        crf_batch([image], [prob, prob])


def test_missing_pydensecrf_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(CRFUnavailableError, match="pydensecrf2"):
        DenseCRF()
