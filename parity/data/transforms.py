"""Training and evaluation transforms (numpy + OpenCV, deterministic given a numpy Generator).

Conventions: images come in as uint8 ``H x W x 3`` **BGR** 0-255 (``cv2.imread``), labels as
int64 ``H x W`` with ``ignore_label`` (255) for unlabeled pixels. Transforms return what the
model takes (see docs/architecture.md): a float32 ``3 x H x W`` tensor, BGR, 0-255 minus the
Caffe mean (``models.VOC_MEAN_BGR``), and an int64 ``H x W`` label tensor.

Padding follows Caffe and the seed port: bottom/right, with the mean colour for the image (0
after mean subtraction) and ``ignore_label`` for the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from deeplab_caffe.models import COCOSTUFF_MEAN_BGR, IMAGENET_MEAN_BGR, VOC_MEAN_BGR

MEAN_BGR = VOC_MEAN_BGR  # the default of the transforms and of evaluation
#: BGR means by the name a parity manifest row gives (``options.mean``): ``voc`` DeepLab's VOC
#: prototxts, ``coco`` the COCO-Stuff DeepLab prototxts ("adapted to COCO"), ``voc_tfport``
#: the TF port's ``IMG_MEAN`` (the VOC mean to eight places)
MEANS_BGR: dict[str, tuple[float, float, float]] = {
    "voc": VOC_MEAN_BGR,
    "coco": COCOSTUFF_MEAN_BGR,
    "voc_tfport": (104.00698793, 116.66876762, 122.67891434),
    "imagenet": IMAGENET_MEAN_BGR,  # Detectron2 DeepLab, DeepLabv3.pytorch
}
#: how evaluation subtracts the mean (``EvalTransform``; a manifest row's ``options.mean_arithmetic``)
MEAN_ARITHMETIC = ("float32", "float64")
IGNORE_LABEL = 255


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """``321`` or ``(321, 321)`` -> ``(h, w)``, both positive."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"{what} must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return h, w


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # PIL's ImagingScaleAffine: x = step / 2, then x += step per output pixel (float64,
    # accumulated), source index = int(x). np.cumsum accumulates in the same order.
    step = n_in / n_out
    pos = np.cumsum(np.concatenate([[step * 0.5], np.full(n_out - 1, step)]))
    return np.minimum(pos.astype(np.int64), n_in - 1)


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` label map to ``size = (h, w)``; any dtype.

    Bit-exact with PIL's ``Image.resize(..., NEAREST)``, which the seed port uses for labels:
    the source pixel is the one under each output pixel centre (OpenCV's ``INTER_NEAREST``
    drops the half-pixel offset and ``INTER_NEAREST_EXACT`` rounds ties differently).
    """
    rows = _nearest_index(label.shape[0], size[0])
    cols = _nearest_index(label.shape[1], size[1])
    return label[rows[:, None], cols[None, :]]


def _floor_index(n_in: int, n_out: int) -> np.ndarray:
    # OpenCV's resizeNN: sx = floor(x * (1 / (n_out / n_in))) in double, clamped to n_in - 1.
    step = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out) * step).astype(np.int64), n_in - 1)


def resize_label_caffe(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` label map to ``size = (h, w)`` as DeepLab's
    ``ImageSegData`` does it (``cv::resize(..., INTER_NEAREST)``): source index
    ``floor(i * H / h)``, no half-pixel offset; any dtype (OpenCV's own needs uint8/float)."""
    rows = _floor_index(label.shape[0], size[0])
    cols = _floor_index(label.shape[1], size[1])
    return label[rows[:, None], cols[None, :]]


#: How ``TrainTransform`` resizes for a random scale (see its docstring).
RESIZE_MODES = ("seed_port", "caffe")


def random_crop_offset(
    size: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """``(top, left)`` of a random ``crop`` in an array of ``size`` (both ``(h, w)``, size >=
    crop): each uniform over ``0 .. size - crop`` inclusive, top drawn first, as Caffe's
    ``Rand(h - crop_h + 1)``."""
    top = int(rng.integers(0, size[0] - crop[0] + 1))
    left = int(rng.integers(0, size[1] - crop[1] + 1))
    return top, left


def pad_bottom_right(
    array: np.ndarray, size: tuple[int, int], value: float | int
) -> np.ndarray:
    """Pad ``H x W [x C]`` at the bottom/right up to at least ``size = (h, w)`` with ``value``.

    Dimensions already >= the target are left as they are (never cropped).
    """
    h, w = array.shape[:2]
    pad_h, pad_w = max(size[0] - h, 0), max(size[1] - w, 0)
    if pad_h == 0 and pad_w == 0:
        return array
    out = np.full((h + pad_h, w + pad_w) + array.shape[2:], value, dtype=array.dtype)
    out[:h, :w] = array
    return out


def _to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    label_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    return image_t, label_t


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (BGR), got shape {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")


class Transform(Protocol):
    """``(image uint8 HxWx3 BGR, label int64 HxW, rng) -> (image 3xhxw float32, label hxw int64)``."""

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class TrainTransform:
    """DeepLab v2 training augmentation, as Caffe's recipe and the seed port do it.

    Order: random scale ``s ~ U(scale_range)`` (or ``s`` drawn uniformly from ``scale_choices``
    when given, e.g. the seed port's ``(0.5, 0.75, 1.0, 1.25, 1.5)``) to
    ``(int(H*s), int(W*s))`` (image bilinear, label nearest); BGR mean subtraction in float32
    (as Caffe, whose ``mean_value`` is a float32 field); pad bottom/right to ``crop_size``
    (image with the mean, i.e. 0 after subtraction; label with ``ignore_label``); random crop;
    random horizontal flip (p = 0.5). Random draws, in this order, from the ``rng`` given:
    scale, crop top, crop left, flip.

    ``resize`` (one of ``RESIZE_MODES``) is how a scale != 1 resizes: ``seed_port`` (default)
    the float32 image bilinear and the label with PIL's NEAREST (pixel centres, as the seed port);
    ``caffe`` as DeepLab's ``ImageSegData`` layer (``TransformImgAndSeg``): the uint8 image with
    ``cv2.INTER_LINEAR`` (result rounded to uint8) and the label with ``resize_label_caffe``
    (OpenCV ``INTER_NEAREST``, no half-pixel offset). Both give ``(int(H*s), int(W*s))``.

    Returns ``(image float32 3 x ch x cw, label int64 ch x cw)`` tensors.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        mean_bgr: Sequence[float] = MEAN_BGR,
        ignore_label: int = IGNORE_LABEL,
        scale_choices: Sequence[float] | None = None,
        resize: str = "seed_port",
    ) -> None:
        self.crop_size = _pair(crop_size, "crop_size")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.scale_choices: tuple[float, ...] | None = None
        if scale_choices is not None:
            self.scale_choices = tuple(float(s) for s in scale_choices)
            if not self.scale_choices or min(self.scale_choices) <= 0:
                raise ValueError(f"scale_choices must be positive numbers, got {scale_choices!r}")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        self.scale_range = (lo, hi)
        self.flip = bool(flip)
        self.mean_bgr = np.asarray(mean_bgr, dtype=np.float32).reshape(3)
        self.ignore_label = int(ignore_label)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rng is None:
            raise ValueError("TrainTransform needs a numpy Generator (rng) for reproducibility")
        _check_pair(image, label)
        h, w = label.shape

        # Random scale: image bilinear, label nearest.
        if self.scale_choices is not None:
            scale = self.scale_choices[int(rng.integers(len(self.scale_choices)))]
        else:
            scale = rng.uniform(*self.scale_range)
        new_h, new_w = max(int(h * scale), 1), max(int(w * scale), 1)
        if self.resize == "seed_port":
            image = image.astype(np.float32)
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            resize_label = resize_label_caffe if self.resize == "caffe" else resize_label_nearest
            label = resize_label(label, (new_h, new_w))
        image = image.astype(np.float32, copy=False)

        # Mean subtraction, then pad with 0 (= the mean colour) / ignore.
        image = image - self.mean_bgr
        ch, cw = self.crop_size
        image = pad_bottom_right(image, (ch, cw), 0.0)
        label = pad_bottom_right(label, (ch, cw), self.ignore_label)

        # Random crop.
        top, left = random_crop_offset(label.shape, (ch, cw), rng)
        image = image[top : top + ch, left : left + cw]
        label = label[top : top + ch, left : left + cw]

        # Random horizontal flip.
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            label = label[:, ::-1]
        return _to_tensors(image, label)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"scale_choices={self.scale_choices}, flip={self.flip}, resize={self.resize!r}, "
            f"mean_bgr={tuple(float(m) for m in self.mean_bgr)}, "
            f"ignore_label={self.ignore_label})"
        )


class EvalTransform:
    """Evaluation preprocessing: BGR mean subtraction, optional bottom/right padding.

    ``pad_to`` (int or ``(h, w)``) pads like Caffe's fixed test crop (513): image with the mean
    (0 after subtraction), label with ``ignore_label``; dimensions already larger are kept.
    ``mean_arithmetic`` (``MEAN_ARITHMETIC``): ``"float32"`` subtracts the float32 mean from the
    float32 image; ``"float64"`` subtracts the float64 mean in float64 and rounds the result to
    float32 once (the seed port's ``image -= mean_bgr``: float32 image, float64 mean).
    Returns ``(image float32 3 x H' x W', label int64 H' x W')``; ``rng`` is ignored.
    """

    def __init__(
        self,
        mean_bgr: Sequence[float] = MEAN_BGR,
        pad_to: int | Sequence[int] | None = None,
        ignore_label: int = IGNORE_LABEL,
        mean_arithmetic: str = "float32",
    ) -> None:
        if mean_arithmetic not in MEAN_ARITHMETIC:
            raise ValueError(f"mean_arithmetic must be one of {list(MEAN_ARITHMETIC)}, got {mean_arithmetic!r}")
        self.mean_arithmetic = mean_arithmetic
        self.mean_bgr = np.asarray(mean_bgr, dtype=mean_arithmetic).reshape(3)
        self.pad_to = None if pad_to is None else _pair(pad_to, "pad_to")
        self.ignore_label = int(ignore_label)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label)
        image = (image.astype(np.float32) - self.mean_bgr).astype(np.float32)
        if self.pad_to is not None:
            image = pad_bottom_right(image, self.pad_to, 0.0)
            label = pad_bottom_right(label, self.pad_to, self.ignore_label)
        return _to_tensors(image, label)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(mean_bgr={tuple(float(m) for m in self.mean_bgr)}, "
            f"pad_to={self.pad_to}, ignore_label={self.ignore_label}, mean_arithmetic={self.mean_arithmetic!r})"
        )


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator for one sample: a function of ``(seed, epoch, index)`` only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class TransformedDataset(Dataset):
    """Wrap a ``SegmentationDataset`` with a transform; reproducible and resumable.

    Item ``i`` in epoch ``e`` is transformed with ``numpy.random.default_rng([seed, e, i])``, so
    the augmentation does not depend on worker count, order or where a run resumed. Call
    ``set_epoch(e)`` before creating each epoch's DataLoader iterator (with
    ``persistent_workers=True`` the workers keep the epoch they were started with).

    Items: ``(image float32 3 x h x w, label int64 h x w, image_id str)``; the default
    ``collate_fn`` batches them (fixed crop size) into ``(N x 3 x h x w, N x h x w, [ids])``.
    """

    def __init__(self, dataset: Any, transform: Transform, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random stream the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, label, image_id = self.dataset[index]
        rng = sample_rng(self.seed, self.epoch, index)
        image_t, label_t = self.transform(image, label, rng)
        return image_t, label_t, image_id

    def __getattr__(self, name: str) -> Any:
        # n_classes, ignore_label, class_names, ... of the wrapped dataset.
        if name == "dataset":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)
