"""Segmentation datasets on their real on-disk layouts, plus a procedural toy set.

Every dataset returns ``(image, label, image_id)`` from ``__getitem__``:

- ``image``: uint8 ``H x W x 3``, **BGR** (``cv2.imread``), 0-255;
- ``label``: int64 ``H x W``, class ids ``0 .. n_classes - 1`` and ``255`` = ignore;
- ``image_id``: str.

Each dataset has ``n_classes``, ``ignore_label`` (255) and ``class_names``. A missing root, list
file, image or label, an unreadable file, an image/label size mismatch or label values outside
the classes raise ``DatasetError`` (a ``ValueError``) with a one-line message naming the file.

``build_dataset(name, root, split, **kw)`` builds one by name: ``cocostuff10k``,
``cocostuff164k``, ``voc12``, ``cityscapes``, ``shapes``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import PIL.Image
import scipy.io
import torch.utils.data

from deeplab_caffe.parity.data.transforms import IGNORE_LABEL, resize_label_nearest


class DatasetError(ValueError):
    """A dataset file or option is missing or malformed; the message names it (one line)."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


# --------------------------------------------------------------------------------------------
# Class names

#: COCO-Stuff ids 1..182 (0 = unlabeled is dropped): index = training class id (id - 1).
#: The 11 thing ids COCO never annotated (street sign, hat, ...) stay, so 182 ids, 171 used.
COCOSTUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror",
    "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

SHAPE_KINDS: tuple[str, ...] = ("circle", "rectangle", "triangle", "diamond")


# --------------------------------------------------------------------------------------------
# File readers (each raises DatasetError "<file>: <problem>")


def image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the image file's header, without decoding its pixels (Pillow
    reads only the header); ``None`` when Pillow does not know the format."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the caller states its own limit; Pillow's would warn or raise
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001  (not an image Pillow reads: OpenCV decides below)
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return int(height), int(width)


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """uint8 ``H x W x 3`` BGR image (``cv2.IMREAD_COLOR``). With ``max_pixels``, an image whose
    header declares more pixels is refused before it is decoded (``DatasetError`` with its size)."""
    if not path.is_file():
        raise DatasetError(f"{path}: image not found")
    size = image_size(path) if max_pixels is not None else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise DatasetError(f"{path}: image of {size[1]} x {size[0]} pixels ({size[0] * size[1] / 1e6:.1f} "
                           f"megapixels) is over the limit of {max_pixels / 1e6:g} megapixels")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: cannot decode image")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:  # a format Pillow missed
        raise DatasetError(f"{path}: image of {image.shape[1]} x {image.shape[0]} pixels is over the limit of "
                           f"{max_pixels / 1e6:g} megapixels")
    return image


def _image_files(image_dir: Path, pattern: str) -> list[Path]:
    """The files under ``image_dir`` matching ``pattern``, sorted; ``DatasetError`` when the folder
    is missing or holds none."""
    if not image_dir.is_dir():
        raise DatasetError(f"image folder not found: {image_dir}")
    paths = sorted(image_dir.glob(pattern))
    if not paths:
        raise DatasetError(f"no {pattern} images under {image_dir}")
    return paths


def read_png_label(path: Path) -> np.ndarray:
    """int64 ``H x W`` label from a single-channel (grayscale) PNG, values as stored."""
    if not path.is_file():
        raise DatasetError(f"{path}: label not found")
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"{path}: cannot decode label")
    if label.ndim != 2 and _is_palette_png(path):
        # the palette indices are the class ids (VOC's SegmentationClass); OpenCV gives colours
        with PIL.Image.open(path) as image:
            label = np.asarray(image)
    if label.ndim != 2:
        raise DatasetError(
            f"label {path} has {label.shape[2]} channels; expected a single-channel or palette index PNG "
            "(an RGB colour PNG is not a class-id map)"
        )
    return label.astype(np.int64)


def _is_palette_png(path: Path) -> bool:
    """True when ``path`` is a PNG of colour type 3 (indexed): the byte after the IHDR bit depth."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3


def read_mat_label(path: Path, key: str = "S") -> np.ndarray:
    """The ``key`` array of a MATLAB .mat file, v5 (scipy) or v7.3 (HDF5, via h5py).

    h5py sees MATLAB's column-major array transposed; it is transposed back here so both
    formats give the same ``H x W`` array.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: label not found")
    try:
        if h5py.is_hdf5(str(path)):
            with h5py.File(str(path), "r") as f:
                if key not in f:
                    raise DatasetError(f"label {path} has no variable {key!r}")
                return np.asarray(f[key]).T
        data = scipy.io.loadmat(str(path), variable_names=[key])
    except DatasetError:
        raise
    except Exception as exc:  # scipy/h5py raise many types for a damaged file
        raise DatasetError(f"cannot read .mat label {path}: {exc}") from exc
    if key not in data:
        raise DatasetError(f"label {path} has no variable {key!r}")
    return np.asarray(data[key])


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a list file."""
    if not path.is_file():
        raise DatasetError(f"list file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    if not lines:
        raise DatasetError(f"list file is empty: {path}")
    return lines


# --------------------------------------------------------------------------------------------
# Base class


@dataclass(frozen=True)
class Sample:
    """One item on disk; ``label_path`` None means unlabeled (all pixels ignore)."""

    image_id: str
    image_path: Path
    label_path: Path | None


class SegmentationDataset(torch.utils.data.Dataset):
    """Base: ``__getitem__(i) -> (image uint8 HxWx3 BGR, label int64 HxW, image_id)``.

    Subclasses set ``n_classes``, ``class_names``, ``splits`` and fill ``self.samples`` (a list
    of ``Sample``); they override ``load_label`` when the label needs decoding beyond a PNG.
    """

    name: str = ""
    n_classes: int = 0
    class_names: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    ignore_label: int = IGNORE_LABEL

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(
                f"{self.name}: unknown split {split!r} (expected one of {', '.join(self.splits)})"
            )
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root not found: {self.root}")
        self.samples: list[Sample] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, path: Path) -> np.ndarray:
        """int64 ``H x W`` label (255 = ignore) from ``path``."""
        return read_png_label(path)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        sample = self.samples[index]
        image = read_image(sample.image_path)
        if sample.label_path is None:
            label = np.full(image.shape[:2], self.ignore_label, dtype=np.int64)
        else:
            label = self.load_label(sample.label_path)
            self._validate(sample, image, label)
        return self.postprocess(image, label, sample.image_id)

    def postprocess(
        self, image: np.ndarray, label: np.ndarray, image_id: str
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Hook for per-dataset resizing; identity by default."""
        return image, label, image_id

    def _validate(self, sample: Sample, image: np.ndarray, label: np.ndarray) -> None:
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"label {sample.label_path} is {label.shape[0]}x{label.shape[1]} but image "
                f"{sample.image_path} is {image.shape[0]}x{image.shape[1]}"
            )
        bad = ((label < 0) | (label >= self.n_classes)) & (label != self.ignore_label)
        if bad.any():
            values = np.unique(label[bad])[:5].tolist()
            raise DatasetError(
                f"label {sample.label_path} has values {values} outside 0..{self.n_classes - 1} "
                f"and {self.ignore_label} (ignore)"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


# --------------------------------------------------------------------------------------------
# Real datasets


class CocoStuff10k(SegmentationDataset):
    """COCO-Stuff 10k (v1.1).

    Layout: ``images/<id>.jpg``, ``annotations/<id>.mat`` (variable ``S``; MATLAB v5 or v7.3),
    ``imageLists/{train,test,all}.txt`` (one id per line). ``S`` holds 0 = unlabeled and
    1..182 = COCO-Stuff ids; labels are ``S - 1`` with -1 mapped to 255 (182 classes, 171 of
    them annotated).

    ``warp_size`` (e.g. 513) resizes image (bilinear) and label (nearest) to a square, as the
    seed port does "to reproduce the official scores"; None (default) keeps the original size.
    """

    name = "cocostuff10k"
    n_classes = 182
    class_names = COCOSTUFF_CLASSES
    splits = ("train", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", warp_size: int | None = None) -> None:
        super().__init__(root, split)
        self.warp_size = warp_size
        ids = read_list(self.root / "imageLists" / f"{split}.txt")
        self.samples = [
            Sample(i, self.root / "images" / f"{i}.jpg", self.root / "annotations" / f"{i}.mat")
            for i in ids
        ]

    def load_label(self, path: Path) -> np.ndarray:
        raw = read_mat_label(path, "S")
        if raw.ndim != 2:
            raise DatasetError(f"label {path}: 'S' has shape {raw.shape}, expected H x W")
        label = raw.astype(np.int64) - 1
        label[label == -1] = self.ignore_label
        return label

    def postprocess(
        self, image: np.ndarray, label: np.ndarray, image_id: str
    ) -> tuple[np.ndarray, np.ndarray, str]:
        if self.warp_size is not None:
            s = int(self.warp_size)
            image = cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR)
            label = resize_label_nearest(label, (s, s))
        return image, label, image_id


class CocoStuff164k(SegmentationDataset):
    """COCO-Stuff 164k.

    Layout: ``images/<split>/<id>.jpg``, ``annotations/<split>/<id>.png`` (8-bit, class ids
    0..181, 255 = unlabeled); ids are the sorted image file stems of ``images/<split>``.
    """

    name = "cocostuff164k"
    n_classes = 182
    class_names = COCOSTUFF_CLASSES
    splits = ("train2017", "val2017")

    def __init__(self, root: str | Path, split: str = "train2017") -> None:
        super().__init__(root, split)
        paths = _image_files(self.root / "images" / split, "*.jpg")
        label_dir = self.root / "annotations" / split
        self.samples = [Sample(p.stem, p, label_dir / f"{p.stem}.png") for p in paths]


class VOCAug(SegmentationDataset):
    """PASCAL VOC 2012, 21 classes: the stock release, or with SBD's augmented labels.

    ``root`` is ``VOC2012`` or a ``VOCdevkit`` holding it, with ``JPEGImages/<id>.jpg``. Two
    label layouts, tried in this order for each split:

    - SBD-augmented (as deeplab-pytorch and DeepLab's Caffe lists use it):
      ``ImageSets/SegmentationAug/<split>.txt`` and ``SegmentationClassAug/<id>.png``
      (grayscale, 0..20, 255 = boundary/ignore). A list line is either ``<id>`` or DeepLab's
      ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` (paths relative to ``root``; the
      label column may be absent). ``train_aug`` and ``trainval_aug`` exist only here.
    - stock VOC 2012 (the ``VOCtrainval`` tarball): ``ImageSets/Segmentation/<split>.txt`` (ids)
      and ``SegmentationClass/<id>.png``, palette PNGs whose indices are the class ids.

    Split ``test`` has no labels: every pixel is 255.
    """

    name = "voc12"
    n_classes = 21
    class_names = VOC_CLASSES
    splits = ("train_aug", "train", "val", "trainval", "trainval_aug", "test")

    def __init__(self, root: str | Path, split: str = "train_aug") -> None:
        root = Path(root)
        if (root / "VOC2012").is_dir() and not (root / "JPEGImages").is_dir():
            root = root / "VOC2012"
        super().__init__(root, split)
        aug = self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt"
        stock = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if aug.is_file() or not stock.is_file():
            if not aug.is_file():
                raise DatasetError(self._missing(aug, stock))
            self.label_dir = "SegmentationClassAug"
            lines = read_list(aug)
        else:
            self.label_dir = "SegmentationClass"
            lines = read_list(stock)
        self.samples = [self._parse(line) for line in lines]

    def _missing(self, aug: Path, stock: Path) -> str:
        """The one-line error for a split whose list is in neither layout."""
        if self.split.endswith("_aug"):
            return (f"voc12 {self.split} needs SBD's augmented set under {self.root}: {aug} and "
                    f"SegmentationClassAug/<id>.png (grayscale class ids, 255 = ignore); a stock VOC 2012 "
                    f"folder has only train, val and trainval (ImageSets/Segmentation)")
        return (f"voc12 {self.split}: list file not found: {stock} (stock VOC 2012, with "
                f"SegmentationClass/<id>.png) or {aug} (SBD-augmented, with SegmentationClassAug/<id>.png)")

    def _parse(self, line: str) -> Sample:
        fields = line.split()
        if "/" in fields[0] or fields[0].endswith(".jpg"):
            image_path = self.root / fields[0].lstrip("/")
            image_id = Path(fields[0]).stem
            label_path = self.root / fields[1].lstrip("/") if len(fields) > 1 else None
        else:
            image_id = fields[0]
            image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
            label_path = None
        if label_path is None:
            label_path = self.root / self.label_dir / f"{image_id}.png"
        if self.split == "test":
            label_path = None
        return Sample(image_id, image_path, label_path)


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations, 19 training classes (``labelTrainIds``), 255 = ignore.

    Layout: ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/<x>_gtFine_labelTrainIds.png`` (made by cityscapesScripts'
    ``createTrainIdLabelImgs``). Ids are ``<city>/<x>``, sorted. Split ``test`` has no public
    labels: every pixel is 255.
    """

    name = "cityscapes"
    n_classes = 19
    class_names = CITYSCAPES_CLASSES
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str = "train") -> None:
        super().__init__(root, split)
        paths = _image_files(self.root / "leftImg8bit" / split, "*/*_leftImg8bit.png")
        label_dir = self.root / "gtFine" / split
        for p in paths:
            city, stem = p.parent.name, p.name[: -len("_leftImg8bit.png")]
            label = None if split == "test" else label_dir / city / f"{stem}_gtFine_labelTrainIds.png"
            self.samples.append(Sample(f"{city}/{stem}", p, label))


# --------------------------------------------------------------------------------------------
# Procedural toy data


# Per-class base colour (BGR) and texture; class 0 is the background.
_SHAPE_STYLE: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((40, 45, 210), "smooth"),  # circle: red
    ((50, 190, 60), "hstripes"),  # rectangle: green
    ((210, 90, 40), "checker"),  # triangle: blue
    ((40, 205, 215), "vstripes"),  # diamond: yellow
)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


#: largest side of a ``shapes`` image (each one is generated in float32 at full size)
SHAPES_MAX_SIDE = 4096


class ProceduralShapes(SegmentationDataset):
    """Random filled shapes on textured noisy backgrounds; deterministic per (seed, split, index).

    Class 0 is the background (grey-brown, low-frequency blotches plus pixel noise); classes
    1..n_classes-1 are shape kinds ``circle, rectangle, triangle, diamond`` (``n_classes`` 2..5),
    each with its own colour and texture (smooth, horizontal stripes, checker, vertical
    stripes) so a tiny DeepLab learns it in a few hundred CPU iterations. One to three shapes
    per image, radius 18-30 % of the shorter side; later shapes cover earlier ones.

    ``__getitem__`` returns ``(image uint8 HxWx3 BGR, label int64 HxW, "shapes_<split>_<i>")``
    like the on-disk datasets; there is no ignore pixel. ``split`` (train/val/test) changes
    the random stream, so splits built with the same seed differ. ``n_images`` None gives
    200 (train) or 50 (val/test).
    """

    name = "shapes"
    splits = tuple(_SPLIT_CODES)

    def __init__(  # no root: SegmentationDataset.__init__ is deliberately not called
        self,
        n_images: int | None = None,
        size: tuple[int, int] = (64, 64),
        n_classes: int = 4,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if split not in _SPLIT_CODES:
            raise DatasetError(f"shapes: unknown split {split!r} (expected one of train, val, test)")
        if n_images is None:
            n_images = 200 if split == "train" else 50
        if int(n_images) <= 0:
            raise DatasetError(f"shapes: n_images must be positive, got {n_images}")
        if not 2 <= int(n_classes) <= len(SHAPE_KINDS) + 1:
            raise DatasetError(f"shapes: n_classes must be 2..{len(SHAPE_KINDS) + 1}, got {n_classes}")
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)):
            raise DatasetError(f"shapes: size must be [height, width], two integers, got {size!r}")
        h, w = int(size[0]), int(size[1])
        if not (8 <= h <= SHAPES_MAX_SIDE and 8 <= w <= SHAPES_MAX_SIDE):
            raise DatasetError(f"shapes: size must be 8 to {SHAPES_MAX_SIDE} pixels a side, got {size}")
        self.n_images = int(n_images)
        self.size = (h, w)
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.split = split
        self.class_names = ("background",) + SHAPE_KINDS[: self.n_classes - 1]

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < self.n_images:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], int(index)])
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

        # Background: jittered grey-brown + blotches (upsampled coarse noise) + pixel noise.
        base = np.array([95, 110, 125], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        coarse = rng.normal(0, 18, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
        blotches = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        image = base + blotches + rng.normal(0, 8, (h, w, 3)).astype(np.float32)
        label = np.zeros((h, w), np.int64)

        short = min(h, w)
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(1, self.n_classes))
            r = rng.uniform(0.18, 0.30) * short
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            aspect = rng.uniform(0.7, 1.0)
            flip = rng.random() < 0.5
            jitter = rng.uniform(-20, 20, 3).astype(np.float32)
            noise = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
            mask = self._mask(SHAPE_KINDS[cls - 1], yy, xx, cy, cx, r, aspect, flip)
            colour, texture = _SHAPE_STYLE[cls - 1]
            fill = np.array(colour, np.float32) + jitter + noise
            fill += self._texture(texture, yy, xx)[..., None]
            image[mask] = fill[mask]
            label[mask] = cls
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return image, label, f"shapes_{self.split}_{index:06d}"

    @staticmethod
    def _mask(
        kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
        aspect: float, flip: bool,
    ) -> np.ndarray:
        dy, dx = yy - cy, xx - cx
        if kind == "circle":
            return dy**2 + dx**2 <= r**2
        if kind == "rectangle":
            return (np.abs(dy) <= r * aspect) & (np.abs(dx) <= r)
        if kind == "diamond":
            return np.abs(dy) / (r * aspect) + np.abs(dx) / r <= 1.0
        # triangle: apex up (or down when flipped), base width 2r, height 1.8r
        if flip:
            dy = -dy
        t = (dy + r) / (1.8 * r)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)

    @staticmethod
    def _texture(kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        if kind == "hstripes":
            return np.where((yy.astype(np.int64) // 2) % 2 == 0, 22.0, -22.0).astype(np.float32)
        if kind == "vstripes":
            return np.where((xx.astype(np.int64) // 2) % 2 == 0, 22.0, -22.0).astype(np.float32)
        if kind == "checker":
            parity = (yy.astype(np.int64) // 3 + xx.astype(np.int64) // 3) % 2
            return np.where(parity == 0, 22.0, -22.0).astype(np.float32)
        return np.zeros_like(yy)

    def __repr__(self) -> str:
        return (
            f"ProceduralShapes(n_images={self.n_images}, size={self.size}, "
            f"n_classes={self.n_classes}, seed={self.seed}, split={self.split!r})"
        )


# --------------------------------------------------------------------------------------------
# Registry


DATASETS: dict[str, type[SegmentationDataset]] = {
    "cocostuff10k": CocoStuff10k,
    "cocostuff164k": CocoStuff164k,
    "voc12": VOCAug,
    "cityscapes": Cityscapes,
    "shapes": ProceduralShapes,
}


def build_dataset(
    name: str, root: str | Path | None, split: str, **kw: Any
) -> SegmentationDataset:
    """Build a dataset by registry name (``cocostuff10k, cocostuff164k, voc12, cityscapes,
    shapes``). ``root`` is ignored for ``shapes``; ``kw`` goes to the class (e.g.
    ``warp_size`` for cocostuff10k, ``n_images/size/n_classes/seed`` for shapes)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")
    cls = DATASETS[name]
    if cls is ProceduralShapes:
        args: dict[str, Any] = {"split": split, **kw}
    else:
        if root is None:
            raise DatasetError(f"dataset {name!r} needs a root folder")
        args = {"root": root, "split": split, **kw}
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as exc:
        raise DatasetError(f"dataset {name!r}: {exc}") from exc
    return cls(**args)


__all__ = [
    "COCOSTUFF_CLASSES",
    "CITYSCAPES_CLASSES",
    "DATASETS",
    "VOC_CLASSES",
    "Cityscapes",
    "CocoStuff10k",
    "CocoStuff164k",
    "DatasetError",
    "ProceduralShapes",
    "SegmentationDataset",
    "VOCAug",
    "build_dataset",
    "read_image",
    "read_mat_label",
    "read_png_label",
]
