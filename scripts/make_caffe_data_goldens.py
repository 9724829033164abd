#!/usr/bin/env python3
"""Golden files made by real Caffe's own data layer: DeepLab's ``ImageSegData`` (TEST and TRAIN).

NEEDS A DATA-LAYER REFERENCE CAFFE, which this repository cannot build: the reference Caffe of
``../shared/tools/caffe`` (brocolli-caffe 9.0.2 = BVLC 9b89154, + DeepLab's ``Interp``) plus the
``ImageSegData`` layer, ``DataTransformer::TransformImgAndSeg``, the 6-argument
``ReadImageToCVMat`` and their ``caffe.proto`` fields ported from DrSleep/deeplab-public-ver2 @
a11f8a2 as a local patch (not shipped; see docs/ci.md "Data-layer goldens"), built with
``PREFIX=~/.cache/reference-caffe-data EXTRA_PATCHES=<that patch> bash ../shared/tools/caffe/build.sh``.
Check: ``'ImageSegData' in caffe.layer_type_list()``. Runs under that Caffe's python and imports
nothing of this project (only caffe, numpy, protobuf, scikit-image, Pillow and the sibling
scripts ``make_caffe_goldens.py`` / ``dump_caffe_blobs.py``), so the goldens do not depend on the
code they test:

    OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 ~/.cache/reference-caffe-data/venv/bin/python \\
        scripts/make_caffe_data_goldens.py [--out tests/data/caffe_data_goldens]

What it writes under ``--out`` (``README.md`` there lists it with sizes):

- ``voc12/VOC2012``: real photos (scikit-image's) on the VOC on-disk layout, sizes chosen for the
  edge cases of the 513 test crop (smaller, exactly 513, larger on one side, odd sides,
  grayscale): ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (seeded block labels,
  0-20 and 255), ``ImageSets/SegmentationAug/val.txt`` in DeepLab's list format, which Caffe's
  data layer reads too.
- ``eval_voc12.npz``: the official MSC test net (``cocostuff_deeplabv2_resnet101_test.prototxt``
  with EXP=voc12, NUM_LABELS=21, DeepLab v2's VOC mean; its ``ImageSegData`` TEST layer kept,
  crop 513; ``MatWrite`` cut; reduced like ``make_caffe_goldens.py`` and loaded with the weights of
  the committed golden ``tests/data/caffe_goldens/voc12_msc_train/net.caffemodel``), run by Caffe
  over the list: per image ``<id>/argmax`` (Caffe's ``fc1_interp_argmax``, uint8 513 x 513),
  ``<id>/near_ties`` (row, col of the pixels whose ``fc1_interp`` top-1 minus top-2 is below
  ``NEAR_TIE``) and ``<id>/near_tie_margins`` (those differences),
  ``<id>/data_dim``, ``<id>/data_sha256`` (sha256 of the float32 ``data`` blob) and, for the
  ids in ``KEEP_DATA``, ``<id>/data`` itself.
- ``cocostuff10k``: two photos already 513 x 513 on the COCO-Stuff 10k layout (``images/``,
  ``annotations/<id>.mat`` ``S``, ``imageLists/test.txt``; ``caffe_test.txt`` the same list in
  DeepLab's format) and ``eval_cocostuff10k.npz``: the same test net with EXP=cocostuff,
  NUM_LABELS=182 and its own (COCO) mean, weights of ``caffe_goldens/cocostuff182_msc_train``.
- ``train/``: PNG photos and labels; ``train_exact.npz``: the TRAIN-phase layer with scale 1, no
  mirror, crop 321 on images no larger than the crop (``<id>/data``, ``<id>/label``);
  ``train_random.npz``: the official TRAIN ``transform_param`` (COCO-Stuff train.prototxt: mirror,
  crop 321, scale factors 0.5-1.5, mean) drawn ``N_DRAWS`` times on one image smaller than the
  crop (per draw: content height/width, whether the pad is on the left, i.e. mirrored; plus the
  first unmirrored blobs per scale), and crop offsets drawn ``N_DRAWS`` times on a coordinate-coded
  image larger than the crop (scale 1, no mirror).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_caffe_goldens as goldens  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "caffe_data_goldens"
TEST_PROTOTXT = "cocostuff_deeplabv2_resnet101_test.prototxt"
TRAIN_PROTOTXT = "cocostuff_deeplabv2_resnet101_train.prototxt"
WEIGHTS = REPO / "tests" / "data" / "caffe_goldens" / "voc12_msc_train" / "net.caffemodel"
VOC_MEAN_BGR = (104.008, 116.669, 122.675)  # DeepLab v2's VOC test net
SEED = 20261206
N_DRAWS = 2000
NEAR_TIE = 1e-4  # fc1_interp top-1 minus top-2 below this: a pixel whose argmax round-off may flip
#: eval photos: id -> (scikit-image name, rows, cols, grayscale); crops of the photo, never resized
EVAL_PHOTOS = {
    "2026_000001": ("chelsea", slice(0, 300), slice(0, 451), False),      # smaller than 513
    "2026_000002": ("coffee", slice(0, 333), slice(0, 511), False),       # odd sides, smaller
    "2026_000003": ("hubble_deep_field", slice(0, 513), slice(0, 513), False),  # exactly 513
    "2026_000004": ("camera", slice(0, 385), slice(0, 257), True),        # grayscale, odd
    "2026_000005": ("rocket", slice(0, 427), slice(0, 640), False),       # wider than 513 (last)
}
KEEP_DATA = ("2026_000005",)
#: COCO-Stuff 10k photos: already 513 x 513, so the row's warp to 513 is the identity here
COCO_PHOTOS = {
    "COCO_train2014_000000000001": ("hubble_deep_field", slice(359, 872), slice(487, 1000), False),
    "COCO_train2014_000000000002": ("retina", slice(449, 962), slice(449, 962), False),
}
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, written by scripts/make_caffe_data_goldens.py"
COCO_WEIGHTS = REPO / "tests" / "data" / "caffe_goldens" / "cocostuff182_msc_train" / "net.caffemodel"
#: train photos (PNG): id -> (scikit-image name, rows, cols, grayscale)
TRAIN_PHOTOS = {
    "small": ("astronaut", slice(0, 97), slice(0, 131), False),
    "gray": ("camera", slice(0, 200), slice(0, 321), True),
    "exact": ("coffee", slice(0, 321), slice(0, 321), False),
}
RANDOM_ID = "small"


def photo(name: str, rows: slice, cols: slice, gray: bool) -> np.ndarray:
    """A crop of a scikit-image photo: uint8 RGB ``H x W x 3`` or gray ``H x W``."""
    from skimage import data as skdata

    image = getattr(skdata, name)()[rows, cols]
    if gray and image.ndim == 3:
        raise SystemExit(f"error: {name} is not a grayscale photo")
    return np.ascontiguousarray(image if gray else image[:, :, :3])


def block_label(shape: tuple[int, int], n_classes: int, rng: np.random.Generator, ignore: bool) -> np.ndarray:
    """Seeded class blocks (9 x 11 px, so nearest-neighbour index rounding shows at every block
    edge), with a 255 band (3 px wide, the 'boundary' of VOC labels) when ``ignore``."""
    h, w = shape
    blocks = rng.integers(0, n_classes, ((h + 8) // 9, (w + 10) // 11))
    label = np.repeat(np.repeat(blocks, 9, axis=0), 11, axis=1)[:h, :w].astype(np.uint8)
    if ignore:
        label[h // 3 : h // 3 + 3, :] = 255
    return label


def save_image(path: Path, array: np.ndarray, quality: int | None = None) -> None:
    """Pillow writes ``array`` (RGB or gray) as JPEG (``quality``) or PNG, via a temp file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    if quality is None:
        Image.fromarray(array).save(buffer, format="PNG")
    else:
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def data_layer(net: Any) -> Any:
    (layer,) = [layer for layer in net.layer if layer.type == "ImageSegData"]
    return layer


# ----------------------------------------------------------------------------- evaluation


def write_voc(root: Path, rng: np.random.Generator) -> list[str]:
    """The eval photos on VOC's layout; returns the list lines (DeepLab's format)."""
    lines = []
    for image_id, (name, rows, cols, gray) in EVAL_PHOTOS.items():
        image = photo(name, rows, cols, gray)
        save_image(root / "JPEGImages" / f"{image_id}.jpg", image, quality=90)
        save_image(root / "SegmentationClassAug" / f"{image_id}.png", block_label(image.shape[:2], 21, rng, True))
        lines.append(f"/JPEGImages/{image_id}.jpg /SegmentationClassAug/{image_id}.png")
    (root / "ImageSets" / "SegmentationAug").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "SegmentationAug" / "val.txt").write_text("\n".join(lines) + "\n")
    return lines


def write_coco10k(root: Path, rng: np.random.Generator) -> Path:
    """The COCO-Stuff 10k photos on its layout (``images/<id>.jpg``, ``annotations/<id>.mat``
    with ``S`` 0 = unlabeled, 1..182; ``imageLists/test.txt``); returns Caffe's list (DeepLab's
    format) beside it, ``caffe_test.txt``."""
    import scipy.io

    lines = []
    for image_id, (name, rows, cols, gray) in COCO_PHOTOS.items():
        image = photo(name, rows, cols, gray)
        save_image(root / "images" / f"{image_id}.jpg", image, quality=90)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"S": block_label(image.shape[:2], 183, rng, False)})
        mat = bytearray(buffer.getvalue())
        mat[:116] = MAT_HEADER.ljust(116)  # savemat's header text holds the time: fixed, so reruns match
        (root / "annotations" / f"{image_id}.mat").write_bytes(bytes(mat))
        lines.append(f"/images/{image_id}.jpg")
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    (root / "imageLists" / "test.txt").write_text("\n".join(COCO_PHOTOS) + "\n")
    (root / "caffe_test.txt").write_text("\n".join(lines) + "\n")
    return root / "caffe_test.txt"


def eval_net(official: Path, root: Path, source: Path, folder: Path, exp: str, n_classes: int,
             mean: tuple[float, float, float] | None) -> Path:
    """The official test net, reduced, reading ``source`` under ``root`` (``mean`` replaces the
    data layer's when given); written to ``folder/eval_<exp>.prototxt``."""
    from google.protobuf import text_format

    values = dict(goldens.TRAIN_VARS, EXP=exp, NUM_LABELS=str(n_classes))
    net, lenient = goldens.load_official(official / TEST_PROTOTXT, values)
    kept = [layer for layer in net.layer if layer.type != "MatWrite"]
    del net.layer[:]
    net.layer.extend(kept)
    if sorted(lenient & {(layer.name, layer.type) for layer in net.layer}):
        raise SystemExit(f"error: layers {sorted(lenient)} hold fields this Caffe cannot parse")
    layer = data_layer(net)
    if mean is not None:
        del layer.transform_param.mean_value[:]
        layer.transform_param.mean_value.extend(mean)
    layer.image_data_param.root_folder = str(root)
    layer.image_data_param.source = str(source)
    goldens.reduce_depth(net, goldens.KEEP_BLOCKS)
    goldens.reduce_width(net, goldens.DIVISORS)
    path = folder / f"eval_{exp}.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path


def run_eval(prototxt: Path, weights: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Caffe's outputs for each image of the list (``ids``, in list order)."""
    import caffe

    caffe.set_mode_cpu()
    net = caffe.Net(str(prototxt), str(weights), caffe.TEST)
    out = {}
    for image_id in ids:
        net.forward()
        scores = net.blobs["fc1_interp"].data[0]
        top2 = np.sort(scores, axis=0)[-2:]
        data = np.array(net.blobs["data"].data, dtype=np.float32, copy=True)
        out[f"{image_id}/argmax"] = net.blobs["fc1_interp_argmax"].data[0, 0].astype(np.uint8)
        margin = (top2[1] - top2[0]).astype(np.float32)
        out[f"{image_id}/near_ties"] = np.argwhere(margin < NEAR_TIE).astype(np.int16)
        out[f"{image_id}/near_tie_margins"] = margin[margin < NEAR_TIE]
        out[f"{image_id}/data_dim"] = np.array(net.blobs["data_dim"].data, dtype=np.float32).reshape(-1)
        out[f"{image_id}/data_sha256"] = np.array(hashlib.sha256(data.tobytes()).hexdigest())
        if image_id in KEEP_DATA:
            out[f"{image_id}/data"] = data
    return out


# ----------------------------------------------------------------------------- training


def train_layer_net(official: Path, source: Path, root: Path, transform: dict[str, Any] | None,
                    label_type: str) -> Any:
    """A net of the official TRAIN data layer alone (``transform`` overrides its
    ``transform_param``; None keeps it), reading ``source``."""
    from caffe.proto import caffe_pb2

    values = dict(goldens.TRAIN_VARS, EXP="cocostuff", NUM_LABELS="182")
    official_net, _ = goldens.load_official(official / TRAIN_PROTOTXT, values)
    layer = data_layer(official_net)
    if transform is not None:
        layer.transform_param.Clear()
        for key, value in transform.items():
            if isinstance(value, (list, tuple)):
                getattr(layer.transform_param, key).extend(value)
            else:
                setattr(layer.transform_param, key, value)
    layer.image_data_param.root_folder = str(root)
    layer.image_data_param.source = str(source)
    layer.image_data_param.shuffle = False
    layer.image_data_param.label_type = getattr(caffe_pb2.ImageDataParameter, label_type)
    net = caffe_pb2.NetParameter(name="imagesegdata")
    net.layer.add().CopyFrom(layer)
    return net


def make_net(net_param: Any, folder: Path, name: str, seed: int) -> Any:
    import caffe
    from google.protobuf import text_format

    path = folder / f"{name}.prototxt"
    path.write_text(text_format.MessageToString(net_param))
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    return caffe.Net(str(path), caffe.TRAIN)


def write_train(root: Path, rng: np.random.Generator) -> None:
    """Train photos + labels (PNG, lossless) and the offset-coded image."""
    for image_id, (name, rows, cols, gray) in TRAIN_PHOTOS.items():
        image = photo(name, rows, cols, gray)
        save_image(root / f"{image_id}.png", image)
        save_image(root / f"{image_id}_label.png", block_label(image.shape[:2], 21, rng, image_id != RANDOM_ID))
        (root / f"{image_id}.txt").write_text(f"/{image_id}.png /{image_id}_label.png\n")
    y, x = np.mgrid[0:401, 0:361]
    coded = np.stack([np.full_like(x, 128), y % 256, x % 256], axis=2).astype(np.uint8)  # RGB: B = x, G = y
    save_image(root / "offsets.png", coded)
    save_image(root / "offsets_label.png", np.zeros((401, 361), np.uint8))
    (root / "offsets.txt").write_text("/offsets.png /offsets_label.png\n")


def run_train_exact(official: Path, root: Path, folder: Path) -> dict[str, np.ndarray]:
    transform = {"mirror": False, "crop_size": 321, "mean_value": [104.0, 114.1, 120.1], "scale_factors": [1.0]}
    out = {}
    for image_id in TRAIN_PHOTOS:
        net = make_net(train_layer_net(official, root / f"{image_id}.txt", root, transform, "PIXEL"),
                       folder, "train_exact", SEED)
        net.forward()
        out[f"{image_id}/data"] = np.array(net.blobs["data"].data[0], dtype=np.float32, copy=True)
        out[f"{image_id}/label"] = net.blobs["label"].data[0, 0].astype(np.uint8)
    return out


def content_box(label: np.ndarray) -> tuple[int, int, int]:
    """(rows, cols, pad on the left) of the non-255 block of a label blob (the source has no 255)."""
    keep = label != 255
    rows, cols = int(keep.any(axis=1).sum()), int(keep.any(axis=0).sum())
    return rows, cols, int(not keep[0, 0])


def run_train_random(official: Path, root: Path, folder: Path) -> dict[str, np.ndarray]:
    net = make_net(train_layer_net(official, root / f"{RANDOM_ID}.txt", root, None, "PIXEL"), folder, "train_random", SEED)
    boxes, out = [], {}
    for _ in range(N_DRAWS):
        net.forward()
        label = net.blobs["label"].data[0, 0].astype(np.uint8)
        rows, cols, left = content_box(label)
        boxes.append((rows, cols, left))
        key = f"scaled_{rows}x{cols}"
        if not left and f"{key}/label" not in out:
            out[f"{key}/label"] = label[:rows, :cols].copy()
            out[f"{key}/data"] = np.array(net.blobs["data"].data[0, :, :rows, :cols], dtype=np.float32, copy=True)
    out["draws"] = np.array(boxes, dtype=np.int16)
    transform = {"mirror": False, "crop_size": 321, "mean_value": [104.0, 114.1, 120.1]}
    net = make_net(train_layer_net(official, root / "offsets.txt", root, transform, "PIXEL"), folder, "train_offsets", SEED)
    offsets = []
    for _ in range(N_DRAWS):
        net.forward()
        corner = np.rint(net.blobs["data"].data[0, :, 0, 0] + np.array([104.0, 114.1, 120.1], np.float32))
        offsets.append((int(corner[1]), int(corner[0])))  # (G = row, B = col) of the crop's corner
    out["offsets"] = np.array(offsets, dtype=np.int16)
    return out


# ----------------------------------------------------------------------------- main


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=goldens.DEFAULT_OFFICIAL)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import caffe

    if "ImageSegData" not in caffe.layer_type_list():
        raise SystemExit("error: this Caffe has no ImageSegData layer (see this script's docstring)")
    official = args.official.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(args.out)  # the nets name their files relative to --out
    out = Path(".")
    rng = np.random.default_rng(SEED)
    voc_root = Path("voc12") / "VOC2012"
    write_voc(voc_root, rng)
    work = Path("nets")
    work.mkdir(exist_ok=True)
    voc_list = voc_root / "ImageSets" / "SegmentationAug" / "val.txt"
    voc_net = eval_net(official, voc_root, voc_list, work, "voc12", 21, VOC_MEAN_BGR)
    save_npz(out / "eval_voc12.npz", run_eval(voc_net, WEIGHTS, list(EVAL_PHOTOS)))
    coco_root = Path("cocostuff10k")
    coco_list = write_coco10k(coco_root, rng)
    coco_net = eval_net(official, coco_root, coco_list, work, "cocostuff", 182, None)
    save_npz(out / "eval_cocostuff10k.npz", run_eval(coco_net, COCO_WEIGHTS, list(COCO_PHOTOS)))
    train_root = Path("train")
    write_train(train_root, rng)
    save_npz(out / "train_exact.npz", run_train_exact(official, train_root, work))
    save_npz(out / "train_random.npz", run_train_random(official, train_root, work))
    meta = {"seed": SEED, "n_draws": N_DRAWS, "eval_photos": {k: [v[0], v[1].stop, v[2].stop, v[3]] for k, v in EVAL_PHOTOS.items()},
            "train_photos": {k: [v[0], v[1].stop, v[2].stop, v[3]] for k, v in TRAIN_PHOTOS.items()},
            "coco_photos": {k: [v[0], v[1].start, v[1].stop, v[2].start, v[2].stop] for k, v in COCO_PHOTOS.items()},
            "weights": str(WEIGHTS.relative_to(REPO)), "official": str(official), "weights_sha256": goldens.dump.sha256_file(WEIGHTS),
            "coco_weights": str(COCO_WEIGHTS.relative_to(REPO)), "coco_weights_sha256": goldens.dump.sha256_file(COCO_WEIGHTS),
            "voc_mean_bgr": list(VOC_MEAN_BGR), "command": goldens.command_line()} | goldens.caffe_version()
    meta["caffe"] += " + ImageSegData/TransformImgAndSeg from the same fork (local patch)"
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    write_readme(out)
    return 0


def write_readme(out: Path) -> None:
    """README.md: how the files were made and what each holds, with sizes."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    rows = "\n".join(f"| `{p.as_posix()}` | {p.stat().st_size} |" for p in files)
    total = sum(p.stat().st_size for p in files)
    doc = __doc__.split("\n\n", 1)[1]
    (out / "README.md").write_text(
        "# Golden files made by real Caffe's ImageSegData layer\n\n"
        "Written by `scripts/make_caffe_data_goldens.py` (never by hand: rerun it). From its docstring:\n\n"
        + "\n".join(line[0:] for line in doc.splitlines()) + "\n\n"
        f"| file | bytes |\n| --- | --- |\n{rows}\n\n{total} bytes in all.\n")


if __name__ == "__main__":
    sys.exit(main())
