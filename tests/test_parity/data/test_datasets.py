"""Datasets on synthetic copies of the real on-disk layouts, and the train/eval transforms."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import PIL.Image
import pytest
import scipy.io
import torch

from deeplab_caffe.parity.data.datasets import (
    Cityscapes,
    CocoStuff10k,
    CocoStuff164k,
    DatasetError,
    ProceduralShapes,
    SegmentationDataset,
    VOCAug,
    build_dataset,
)
from deeplab_caffe.parity.data.transforms import (
    MEAN_BGR,
    EvalTransform,
    TrainTransform,
    TransformedDataset,
    resize_label_nearest,
)
from deeplab_caffe.parity.viz import voc_palette

H, W = 8, 10


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _write_png_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label.astype(np.uint8))


def write_mat_v5(path: Path, s: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"S": s})


def write_mat_v73(path: Path, s: np.ndarray) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte userblock holding the MAT header; MATLAB
    writes column-major data, so HDF5 holds the transposed (W x H) array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(str(path), "w", userblock_size=512) as f:
        dset = f.create_dataset("S", data=np.ascontiguousarray(s.T))
        dset.attrs["MATLAB_class"] = np.bytes_(s.dtype.name if s.dtype != np.float64 else "double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\x00"))


# 0 = unlabeled -> 255; k -> k - 1 (so 182 -> 181).
RAW_S = np.tile(np.array([0, 1, 2, 182, 0, 5, 5, 5, 100, 92], np.uint16), (H, 1))
RAW_S[:, 5] += np.arange(H, dtype=np.uint16)  # 5..12: rows differ, so a transpose shows
EXPECTED_10K = RAW_S.astype(np.int64) - 1
EXPECTED_10K[EXPECTED_10K == -1] = 255


def make_cocostuff10k(root: Path, fmt: str = "v5", dtype: str = "uint16") -> Path:
    ids = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
           "test": ["COCO_train2014_000000000079"]}
    ids["all"] = ids["train"] + ids["test"]
    (root / "imageLists").mkdir(parents=True)
    for split, names in ids.items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
    for k, name in enumerate(ids["all"]):
        _write_image(root / "images" / f"{name}.jpg", _image(k))
        s = RAW_S.astype(dtype)
        writer = write_mat_v5 if fmt == "v5" else write_mat_v73
        writer(root / "annotations" / f"{name}.mat", s)
    return root


def make_cocostuff164k(root: Path) -> tuple[Path, np.ndarray]:
    label = np.full((H, W), 255, np.uint8)
    label[2:5, 3:7] = 0
    label[5:, :4] = 181
    for split in ("train2017", "val2017"):
        for name in ("000000000139", "000000000285"):
            _write_image(root / "images" / split / f"{name}.jpg", _image())
            _write_png_label(root / "annotations" / split / f"{name}.png", label)
    return root, label.astype(np.int64)


VOC_LABEL = np.array([[0, 1, 20, 255, 15] * 2] * H, dtype=np.uint8)


def make_voc(root: Path, list_style: str = "deeplab") -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "SegmentationAug"
    lists.mkdir(parents=True)
    names = ["2007_000032", "2007_000039"]
    for name in names:
        _write_image(voc / "JPEGImages" / f"{name}.jpg", _image())
        _write_png_label(voc / "SegmentationClassAug" / f"{name}.png", VOC_LABEL)
    if list_style == "deeplab":
        lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in names]
        test_lines = [f"/JPEGImages/{n}.jpg" for n in names]
    else:
        lines = test_lines = names
    for split in ("train_aug", "val"):
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (lists / "test.txt").write_text("\n".join(test_lines) + "\n")
    return root / "VOCdevkit"


def make_voc_stock(root: Path) -> Path:
    """The stock VOC 2012 layout as its trainval tarball unpacks: id lists in
    ImageSets/Segmentation, palette PNGs in SegmentationClass (index = class id, 255 = boundary)."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir(parents=True)
    names = ["2007_000032", "2007_000039"]
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:21] = voc_palette(21)
    palette[255] = (224, 224, 192)
    for name in names:
        _write_image(voc / "JPEGImages" / f"{name}.jpg", _image())
        label = PIL.Image.fromarray(VOC_LABEL, mode="P")
        label.putpalette(palette.tobytes())
        label.save(voc / "SegmentationClass" / f"{name}.png")
    for split in ("train", "val", "trainval"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root / "VOCdevkit"


CITY_LABEL = np.array([[0, 18, 255, 7, 13] * 2] * H, dtype=np.uint8)


def make_cityscapes(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for city, frame in (("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")):
            _write_image(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", _image())
            _write_png_label(
                root / "gtFine" / split / city / f"{frame}_gtFine_labelTrainIds.png", CITY_LABEL
            )
    return root


# ------------------------------------------------------------------------------------------
# COCO-Stuff 10k


@pytest.mark.parametrize("fmt", ["v5", "v73"])
@pytest.mark.parametrize("dtype", ["uint16", "float64"])
def test_cocostuff10k_label_is_s_minus_one_with_unlabeled_255(tmp_path, fmt, dtype):
    root = make_cocostuff10k(tmp_path / "cocostuff-10k-v1.1", fmt, dtype)
    mat = root / "annotations" / "COCO_train2014_000000000077.mat"
    assert scipy.io.matlab.matfile_version(str(mat))[0] == (2 if fmt == "v73" else 1)
    ds = CocoStuff10k(root, "train")
    assert len(ds) == 2 and ds.n_classes == 182 and ds.ignore_label == 255
    image, label, image_id = ds[0]
    assert image_id == "COCO_train2014_000000000077"
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, EXPECTED_10K)
    assert label[0, 0] == 255 and label[0, 1] == 0 and label[0, 3] == 181


@pytest.mark.parametrize("split, n", [("train", 2), ("test", 1), ("all", 3)])
def test_cocostuff10k_splits_follow_image_lists(tmp_path, split, n):
    ds = CocoStuff10k(make_cocostuff10k(tmp_path / "c10k"), split)
    assert len(ds) == n


def test_cocostuff10k_warp_size_resizes_image_and_label(tmp_path):
    ds = CocoStuff10k(make_cocostuff10k(tmp_path / "c10k"), "test", warp_size=16)
    image, label, _ = ds[0]
    assert image.shape == (16, 16, 3) and label.shape == (16, 16)
    assert set(np.unique(label)) <= set(np.unique(EXPECTED_10K))


def test_cocostuff_class_names_match_ids():
    assert len(CocoStuff10k.class_names) == 182
    assert CocoStuff10k.class_names[0] == "person" and CocoStuff10k.class_names[181] == "wood"
    assert CocoStuff10k.class_names[91] == "banner"


# ------------------------------------------------------------------------------------------
# COCO-Stuff 164k, VOC, Cityscapes


def test_cocostuff164k_reads_png_labels_as_is(tmp_path):
    root, expected = make_cocostuff164k(tmp_path / "c164k")
    ds = CocoStuff164k(root, "val2017")
    assert [ds[i][2] for i in range(len(ds))] == ["000000000139", "000000000285"]
    _, label, _ = ds[1]
    np.testing.assert_array_equal(label, expected)


@pytest.mark.parametrize("list_style", ["deeplab", "ids"])
def test_voc_aug_reads_segmentation_class_aug(tmp_path, list_style):
    devkit = make_voc(tmp_path, list_style)
    for root in (devkit, devkit / "VOC2012"):  # VOCdevkit or VOC2012 both work
        ds = VOCAug(root, "train_aug")
        assert len(ds) == 2 and ds.n_classes == 21 and len(ds.class_names) == 21
        image, label, image_id = ds[1]
        assert image_id == "2007_000039" and image.shape == (H, W, 3)
        np.testing.assert_array_equal(label, VOC_LABEL.astype(np.int64))


def test_voc_stock_layout_reads_val_from_palette_pngs(tmp_path):
    devkit = make_voc_stock(tmp_path)
    assert cv2.imread(str(devkit / "VOC2012/SegmentationClass/2007_000032.png")).shape == (H, W, 3)  # colours to OpenCV
    ds = build_dataset("voc12", devkit, "val")
    assert len(ds) == 2
    image, label, image_id = ds[1]
    assert image_id == "2007_000039" and image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, VOC_LABEL.astype(np.int64))  # the palette indices


@pytest.mark.parametrize("split", ["train_aug", "trainval_aug"])
def test_voc_stock_layout_says_which_files_the_augmented_splits_need(tmp_path, split):
    devkit = make_voc_stock(tmp_path)
    with pytest.raises(DatasetError) as err:
        build_dataset("voc12", devkit, split)
    text = str(err.value)
    assert f"ImageSets/SegmentationAug/{split}.txt" in text and "SegmentationClassAug/<id>.png" in text
    assert "\n" not in text


def test_voc_augmented_layout_is_read_before_the_stock_one(tmp_path):
    devkit = make_voc(tmp_path)
    (devkit / "VOC2012" / "ImageSets" / "Segmentation").mkdir(parents=True)
    (devkit / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    ds = build_dataset("voc12", devkit, "val")
    assert len(ds) == 2 and ds.samples[0].label_path.parent.name == "SegmentationClassAug"


@pytest.mark.parametrize("list_style", ["deeplab", "ids"])
def test_voc_test_split_has_all_ignore_labels(tmp_path, list_style):
    ds = build_dataset("voc12", make_voc(tmp_path, list_style), "test")
    _, label, _ = ds[0]
    assert label.shape == (H, W) and (label == 255).all()


def test_cityscapes_reads_train_ids(tmp_path):
    ds = Cityscapes(make_cityscapes(tmp_path / "cityscapes"), "val")
    assert [ds[i][2] for i in range(2)] == ["aachen/aachen_000000_000019", "bremen/bremen_000001_000019"]
    image, label, _ = ds[0]
    expected = cv2.imread(str(tmp_path / "cityscapes/leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png"))
    np.testing.assert_array_equal(image, expected)  # PNG: lossless, BGR as cv2 reads it
    np.testing.assert_array_equal(label, CITY_LABEL.astype(np.int64))
    assert ds.n_classes == 19
    _, test_label, _ = Cityscapes(tmp_path / "cityscapes", "test")[0]
    assert (test_label == 255).all()


# ------------------------------------------------------------------------------------------
# Errors name the file


def _missing_cases():
    return [
        ("cocostuff10k", "c10k", "imageLists/train.txt", "list file not found"),
        ("cocostuff10k", "c10k", "images/COCO_train2014_000000000077.jpg", "image not found"),
        ("cocostuff10k", "c10k", "annotations/COCO_train2014_000000000077.mat", "label not found"),
        ("cocostuff164k", "c164k", "annotations/train2017/000000000139.png", "label not found"),
        ("cocostuff164k", "c164k", "images/train2017", "image folder not found"),
        ("voc12", "voc", "VOCdevkit/VOC2012/SegmentationClassAug/2007_000032.png", "label not found"),
        ("voc12", "voc", "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg", "image not found"),
        ("voc12", "voc", "VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt", "needs SBD's augmented set"),
        ("cityscapes", "city", "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", "label not found"),
    ]


def _make(name: str, tmp_path: Path) -> tuple[Path, str]:
    if name == "cocostuff10k":
        return make_cocostuff10k(tmp_path / "c10k"), "train"
    if name == "cocostuff164k":
        return make_cocostuff164k(tmp_path / "c164k")[0], "train2017"
    if name == "voc12":
        return make_voc(tmp_path / "voc"), "train_aug"
    return make_cityscapes(tmp_path / "city"), "train"


@pytest.mark.parametrize("name, folder, relpath, phrase", _missing_cases())
def test_missing_file_error_names_the_file(tmp_path, name, folder, relpath, phrase):
    root, split = _make(name, tmp_path)
    target = tmp_path / folder / relpath
    if target.is_dir():
        for p in sorted(target.iterdir()):
            p.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DatasetError) as info:
        ds = build_dataset(name, root, split)
        for i in range(len(ds)):
            ds[i]
    message = str(info.value)
    assert phrase in message and str(target) in message and "\n" not in message


def test_missing_root_and_bad_split_and_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="root not found: .*nowhere"):
        build_dataset("cocostuff10k", tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        build_dataset("cocostuff10k", tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown dataset 'ade20k'"):
        build_dataset("ade20k", tmp_path, "train")
    with pytest.raises(DatasetError, match="unexpected keyword"):
        build_dataset("voc12", tmp_path, "val", warp_size=3)


def test_image_label_size_mismatch_is_reported(tmp_path):
    root, _ = make_cocostuff164k(tmp_path / "c164k")
    bad = root / "annotations" / "val2017" / "000000000285.png"
    _write_png_label(bad, np.zeros((H + 1, W), np.uint8))
    ds = CocoStuff164k(root, "val2017")
    with pytest.raises(DatasetError, match=f"label {bad} is 9x10 but image .*000000000285.jpg is 8x10"):
        ds[1]


def test_label_values_outside_classes_are_reported(tmp_path):
    root = make_cityscapes(tmp_path / "city")
    bad = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    _write_png_label(bad, np.full((H, W), 33, np.uint8))  # a labelIds file by mistake
    with pytest.raises(DatasetError, match=r"values \[33\] outside 0..18"):
        Cityscapes(root, "train")[0]


def test_corrupt_mat_file_is_reported(tmp_path):
    root = make_cocostuff10k(tmp_path / "c10k")
    bad = root / "annotations" / "COCO_train2014_000000000077.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match=f"cannot read .mat label {bad}"):
        CocoStuff10k(root, "train")[0]


# ------------------------------------------------------------------------------------------
# Procedural shapes


def test_shapes_are_deterministic_per_seed_split_and_index():
    a = ProceduralShapes(5, size=(32, 40), seed=3)
    b = ProceduralShapes(5, size=(32, 40), seed=3)
    for i in (0, 4):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    other_seed = ProceduralShapes(5, size=(32, 40), seed=4)
    other_split = ProceduralShapes(5, size=(32, 40), seed=3, split="val")
    assert not np.array_equal(a[0][0], other_seed[0][0])
    assert not np.array_equal(a[0][0], other_split[0][0])


@pytest.mark.parametrize("n_classes", [2, 4, 5])
def test_shapes_labels_cover_background_and_shape_classes(n_classes):
    ds = build_dataset("shapes", None, "train", n_images=40, size=(48, 48), n_classes=n_classes)
    assert isinstance(ds, SegmentationDataset) and ds.n_classes == n_classes
    assert ds.class_names[0] == "background" and len(ds.class_names) == n_classes
    seen = set()
    for i in range(len(ds)):
        image, label, image_id = ds[i]
        assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
        assert label.dtype == np.int64 and label.shape == (48, 48)
        assert image_id == f"shapes_train_{i:06d}"
        seen |= set(np.unique(label).tolist())
    assert seen == set(range(n_classes))


def test_shapes_default_sizes_and_bad_options():
    assert len(ProceduralShapes()) == 200 and len(ProceduralShapes(split="val")) == 50
    with pytest.raises(DatasetError, match="n_classes must be 2..5"):
        ProceduralShapes(4, n_classes=9)


# ------------------------------------------------------------------------------------------
# Transforms


def test_train_transform_output_shapes_and_types():
    t = TrainTransform(crop_size=(6, 7))
    image, label = t(_image(), np.zeros((H, W), np.int64), np.random.default_rng(0))
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 6, 7)
    assert label.dtype == torch.int64 and tuple(label.shape) == (6, 7)


@pytest.mark.parametrize("transform", [
    TrainTransform(crop_size=(H, W), scale_range=(1.0, 1.0), flip=False),
    EvalTransform(),
])
def test_mean_subtraction_is_exact_on_a_constant_image(transform):
    image = np.empty((H, W, 3), np.uint8)
    image[...] = (104, 117, 123)  # B, G, R
    out, _ = transform(image, np.zeros((H, W), np.int64), np.random.default_rng(0))
    expected = np.float32([104, 117, 123]) - np.float32(MEAN_BGR)
    for c in range(3):
        assert (out[c] == expected[c]).all()


def test_padding_uses_mean_for_image_and_ignore_for_label():
    t = TrainTransform(crop_size=12, scale_range=(1.0, 1.0), flip=False)
    label = np.ones((H, W), np.int64)
    image, out_label = t(_image(), label, np.random.default_rng(0))
    assert (out_label[H:, :] == 255).all() and (out_label[:, W:] == 255).all()
    assert (out_label[:H, :W] == 1).all()
    assert (image[:, H:, :] == 0).all() and (image[:, :, W:] == 0).all()
    e_image, e_label = EvalTransform(pad_to=(9, 13))(_image(), label)
    assert tuple(e_image.shape) == (3, 9, 13) and (e_label[H:] == 255).all()
    assert (e_label[:, W:] == 255).all() and (e_image[:, H:] == 0).all()


def test_flip_and_crop_keep_image_and_label_aligned():
    label = np.tile(np.arange(W, dtype=np.int64), (H, 1))  # label = column index
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = label * 10  # blue channel encodes the label
    t = TrainTransform(crop_size=(5, 6), scale_range=(1.0, 1.0), flip=True)
    flipped = 0
    for seed in range(20):
        out, out_label = t(image, label, np.random.default_rng(seed))
        blue = out[0] + np.float32(MEAN_BGR[0])
        assert torch.equal(blue.round().long(), out_label * 10)
        flipped += int(out_label[0, 0] > out_label[0, -1])
    assert 0 < flipped < 20


def test_random_scale_resizes_label_by_nearest():
    label = np.tile(np.array([0, 1, 2, 3, 255], np.int64).repeat(2), (H, 1))
    t = TrainTransform(crop_size=1, scale_range=(1.5, 1.5), flip=False)
    _, out = t(_image(), label, np.random.default_rng(0))
    assert int(out) in {0, 1, 2, 3, 255}
    resized = resize_label_nearest(label, (12, 15))
    assert set(np.unique(resized)) == {0, 1, 2, 3, 255}


@pytest.mark.parametrize("in_size, size", [
    ((H, W), (12, 15)), ((H, W), (4, 5)), ((H, W), (8, 3)), ((H, W), (17, 23)),
    ((321, 321), (41, 41)), ((513, 513), (65, 65)), ((41, 41), (321, 321)), ((37, 13), (81, 81)),
])
def test_resize_label_nearest_matches_pil_nearest(in_size, size):
    from PIL import Image as image_module  # Pillow comes with scikit-image
    label = np.random.default_rng(1).integers(0, 200, in_size).astype(np.uint8)
    ours = resize_label_nearest(label, size)
    pil = np.asarray(image_module.fromarray(label).resize(size[::-1], resample=image_module.NEAREST))
    np.testing.assert_array_equal(ours, pil)


def test_scale_choices_draw_from_the_given_set():
    t = TrainTransform(crop_size=40, scale_choices=(0.5, 1.5), flip=False)
    label = np.zeros((H, W), np.int64)
    sizes = set()
    for seed in range(10):
        _, out = t(_image(), label, np.random.default_rng(seed))
        sizes.add(int((out != 255).sum()))  # labelled area = scaled image area
    assert sizes == {4 * 5, 12 * 15}


def test_train_transform_is_deterministic_given_the_generator():
    t = TrainTransform(crop_size=(6, 6))
    image, label = _image(3), np.random.default_rng(2).integers(0, 5, (H, W))
    a = t(image, label, np.random.default_rng(7))
    b = t(image, label, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(a[0], t(image, label, np.random.default_rng(s))[0]) for s in range(8, 12))


def test_transformed_dataset_is_reproducible_and_epoch_dependent():
    base = ProceduralShapes(4, size=(24, 24))
    t = TrainTransform(crop_size=16)
    a, b = TransformedDataset(base, t, seed=5), TransformedDataset(base, t, seed=5)
    assert a.n_classes == 4 and len(a) == 4
    x1, y1, id1 = a[2]
    x2, y2, _ = b[2]
    assert id1 == "shapes_train_000002" and torch.equal(x1, x2) and torch.equal(y1, y2)
    epochs = []
    for epoch in range(4):
        a.set_epoch(epoch)
        epochs.append(a[2][0])
    assert torch.equal(epochs[0], x1)
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])
    b.set_epoch(3)  # resuming at epoch 3 reproduces epoch 3
    assert torch.equal(b[2][0], epochs[3])
    images, labels, ids = next(iter(torch.utils.data.DataLoader(a, batch_size=4)))
    assert tuple(images.shape) == (4, 3, 16, 16) and tuple(labels.shape) == (4, 16, 16)
    assert len(ids) == 4
