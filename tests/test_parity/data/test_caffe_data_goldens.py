"""The evaluation and training data path against real Caffe's own data layer.

``tests/data/caffe_data_goldens`` was written by ``scripts/make_caffe_data_goldens.py`` under a
reference Caffe with DeepLab's ``ImageSegData`` layer (built locally from the DeepLab v2 fork's
sources; not shipped, so these tests compare against the committed goldens only; docs/ci.md).

- Evaluation: the official MSC test net (its ``ImageSegData`` TEST layer, crop 513) on real photos
  laid out as VOC and as COCO-Stuff 10k. Our ``EvalTransform`` gives Caffe's ``data`` blob bit
  for bit; each official Caffe row's protocol (VOC, COCO-Stuff 10k) gives Caffe's
  ``fc1_interp_argmax``; ``deeplab-parity eval`` scores what Caffe's maps score.
- Training: the TRAIN layer. Deterministic (scale 1, no mirror, image within the crop):
  ``TrainTransform`` gives Caffe's blobs exactly. Random: the same output sizes per scale, pad
  side, label interpolation, crop-offset range, and the shares of each scale / mirror
  (chi-square homogeneity tests, false-alarm rate 1e-3 each).
- Mutations (pad on the wrong side, label resized bilinearly, crop offset by one, wrong mean)
  make the comparisons fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

from deeplab_caffe.converter.conversion import convert
from deeplab_caffe.models.checkpoint import save_checkpoint
from deeplab_caffe.parity.commands.eval import eval_command
from deeplab_caffe.parity.data import transforms
from deeplab_caffe.parity.data.datasets import build_dataset, read_image, read_png_label
from deeplab_caffe.parity.data.transforms import MEANS_BGR, EvalTransform, TrainTransform, sample_rng
from deeplab_caffe.parity.evaluation.evaluate import predict_probs
from deeplab_caffe.parity.suite.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[3]
GOLDENS = ROOT / "tests" / "data" / "caffe_data_goldens"
CAFFE_GOLDENS = ROOT / "tests" / "data" / "caffe_goldens"
CROP_TEST = 513
CROP_TRAIN = 321
#: the official COCO-Stuff train.prototxt's data layer (the goldens' TRAIN transform)
OFFICIAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
COCO_MEAN = MEANS_BGR["coco"]
ALPHA = 1e-3  # false-alarm rate of each statistical test
N_OURS = 2000  # our own draws per statistical comparison


@dataclass(frozen=True)
class Case:
    """One official row's protocol against Caffe's run of the official test net on its layout."""

    row: str
    dataset: str
    root: Path
    split: str
    golden: str
    weights: Path
    n_classes: int


CASES = {
    "voc12": Case("voc12-v2-msc-official", "voc12", GOLDENS / "voc12" / "VOC2012", "val", "eval_voc12.npz",
                  CAFFE_GOLDENS / "voc12_msc_train" / "net.caffemodel", 21),
    "cocostuff10k": Case("cocostuff10k-v2-official", "cocostuff10k", GOLDENS / "cocostuff10k", "test",
                         "eval_cocostuff10k.npz", CAFFE_GOLDENS / "cocostuff182_msc_train" / "net.caffemodel", 182),
}


def goldens(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDENS / name) as npz:
        return {key: npz[key] for key in npz.files}


def meta() -> dict:
    return json.loads((GOLDENS / "meta.json").read_text())


def protocol(case: Case) -> dict:
    """The row's evaluation protocol, from the manifest."""
    (row,) = [row for row in load_manifest().rows if row.name == case.row]
    return row.protocol()


def dataset(case: Case):
    """The case's files read as the row reads them (its ``warp_size`` too: the identity here, the
    COCO-Stuff photos being 513 x 513 already)."""
    warp = protocol(case)["warp_size"]
    return build_dataset(case.dataset, case.root, case.split, **({"warp_size": warp} if warp else {}))


def sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def test_the_cases_are_the_official_caffe_rows():
    for case in CASES.values():
        p = protocol(case)
        assert (p["pad_to"], p["upsample"], p["msc"], p["flip"], p["scales"]) == (CROP_TEST, "caffe_interp", True, False, [1.0])
    assert protocol(CASES["voc12"])["mean"] == "voc" and protocol(CASES["cocostuff10k"])["mean"] == "coco"
    assert protocol(CASES["cocostuff10k"])["warp_size"] == CROP_TEST


# ----------------------------------------------------------------------------- evaluation input


def eval_input_problems(case: Case, mean_bgr) -> list[str]:
    """Where our eval input differs from Caffe's ``data`` blob (TEST crop 513), per image:
    images within 513 padded bottom/right (hash of the whole blob), larger ones centre-cropped
    by Caffe (the stored blob vs our padded input's centre)."""
    caffe = goldens(case.golden)
    transform = EvalTransform(mean_bgr=mean_bgr, pad_to=CROP_TEST)
    problems = []
    for image, label, image_id in dataset(case):
        x = transform(image, label)[0].numpy()[None]
        h, w = image.shape[:2]
        if f"{image_id}/data" in caffe:
            top, left = (x.shape[2] - CROP_TEST) // 2, (x.shape[3] - CROP_TEST) // 2
            x = x[:, :, top : top + CROP_TEST, left : left + CROP_TEST]
            if not np.array_equal(x, caffe[f"{image_id}/data"]):
                problems.append(f"{image_id} ({h}x{w}): centre crop differs")
        elif sha256(x) != str(caffe[f"{image_id}/data_sha256"]):
            problems.append(f"{image_id} ({h}x{w}): padded input differs")
    return problems


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_input_is_caffes_data_blob(name):
    case = CASES[name]
    assert eval_input_problems(case, protocol(case)["mean_bgr"]) == []


def test_caffe_centre_crops_an_image_larger_than_the_crop():
    """The fact behind docs/data.md: TEST phase pads bottom/right to 513, then takes the centre
    513 x 513 (h_off = (H - 513) / 2); ``data_dim`` is ``min(513, size)``."""
    case = CASES["voc12"]
    caffe = goldens(case.golden)
    sizes = {image_id: image.shape[:2] for image, _, image_id in dataset(case)}
    assert sorted(sizes.values()) == [(300, 451), (333, 511), (385, 257), (427, 640), (513, 513)]
    for image_id, (h, w) in sizes.items():
        assert caffe[f"{image_id}/data_dim"].tolist() == [min(h, CROP_TEST), min(w, CROP_TEST)]
    (wide,) = [i for i, (h, w) in sizes.items() if w > CROP_TEST]
    assert f"{wide}/data" in caffe
    assert eval_input_problems(case, protocol(case)["mean_bgr"]) == []  # the centre, (640 - 513) // 2 = 63


def test_eval_input_with_pad_on_the_wrong_side_fails(monkeypatch):
    def pad_top_left(array, size, value):
        h, w = array.shape[:2]
        out = np.full((max(size[0], h), max(size[1], w)) + array.shape[2:], value, dtype=array.dtype)
        out[out.shape[0] - h :, out.shape[1] - w :] = array
        return out

    monkeypatch.setattr(transforms, "pad_bottom_right", pad_top_left)
    case = CASES["voc12"]
    assert eval_input_problems(case, protocol(case)["mean_bgr"]) == [
        "2026_000001 (300x451): padded input differs", "2026_000002 (333x511): padded input differs",
        "2026_000004 (385x257): padded input differs", "2026_000005 (427x640): centre crop differs"]


def test_eval_input_with_the_wrong_mean_fails():
    assert len(eval_input_problems(CASES["voc12"], COCO_MEAN)) == 5
    assert len(eval_input_problems(CASES["cocostuff10k"], MEANS_BGR["voc"])) == 2


# ----------------------------------------------------------------------------- evaluation output


@lru_cache(maxsize=None)
def conversion(name: str):
    """The case's golden weights (saved by Caffe) converted by this project."""
    return convert(CASES[name].weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_official_protocol_gives_caffes_argmax(name):
    """>= 99.99 % of the pixels of every image the official rows can meet (within 513); the rest
    are near-ties in Caffe's own scores (top-1 minus top-2 of ``fc1_interp`` below 1e-4; measured
    on VOC: 2 of 667577 pixels, 2026_000002 at (60, 345) and (129, 305), margins 4.8e-7 and 2.4e-7)."""
    case = CASES[name]
    p = protocol(case)
    caffe = goldens(case.golden)
    transform = EvalTransform(mean_bgr=p["mean_bgr"], pad_to=p["pad_to"])
    total, differ = 0, []
    for image, label, image_id in dataset(case):
        h, w = image.shape[:2]
        if max(h, w) > CROP_TEST:
            continue
        x = transform(image, label)[0][None]
        with torch.no_grad():
            probs = predict_probs(conversion(name).model, x, (h, w), p["scales"], p["flip"], p["upsample"])
        ours = probs[0].argmax(0).numpy()
        near = {tuple(rc) for rc in caffe[f"{image_id}/near_ties"].tolist()}
        diff = np.nonzero(ours != caffe[f"{image_id}/argmax"][:h, :w])
        differ += [(image_id, int(r), int(c), (int(r), int(c)) in near) for r, c in zip(*diff)]
        total += h * w
    assert total == {"voc12": 300 * 451 + 333 * 511 + 385 * 257 + 513 * 513, "cocostuff10k": 2 * 513 * 513}[name]
    assert len(differ) <= 1e-4 * total, differ[:20]
    assert all(near for *_, near in differ), differ


def caffe_confusion(case: Case, n_images: int) -> np.ndarray:
    """Confusion matrix (rows GT) of Caffe's argmax, cropped to each image, vs the labels."""
    caffe = goldens(case.golden)
    n = case.n_classes
    hist = np.zeros((n, n), np.int64)
    for image, label, image_id in list(dataset(case))[:n_images]:
        h, w = label.shape
        pred = caffe[f"{image_id}/argmax"][:h, :w].astype(np.int64)
        keep = label != 255
        hist += np.bincount(n * label[keep] + pred[keep], minlength=n * n).reshape(n, n)
    return hist


def scores(hist: np.ndarray) -> dict[str, float]:
    """PA, MA, mIoU (classes present in GT), FWIoU, in percent."""
    tp, gt, pred = np.diag(hist).astype(float), hist.sum(1).astype(float), hist.sum(0).astype(float)
    present = gt > 0
    iou = tp[present] / (gt + pred - tp)[present]
    return {"PA": 100 * tp.sum() / hist.sum(), "MA": 100 * np.mean(tp[present] / gt[present]),
            "mIoU": 100 * iou.mean(), "FWIoU": 100 * np.sum(gt[present] / hist.sum() * iou)}


@pytest.mark.slow
@pytest.mark.parametrize("name, n_images", [("voc12", 4), ("cocostuff10k", 2)])
def test_deeplab_parity_eval_scores_what_caffes_maps_score(name, n_images, tmp_path):
    """The CLI with the row's protocol on the dataset's layout, over the images within 513 (VOC's
    wide one is listed last; the official rows never meet it: VOC images are at most 500 px).
    The CLI has no ``warp_size``; on these 513 x 513 COCO-Stuff photos the warp is the identity."""
    case = CASES[name]
    p = protocol(case)
    checkpoint = save_checkpoint(tmp_path / "golden.pth", conversion(name).model, conversion(name).config)
    out = tmp_path / "results.json"
    args = ["--checkpoint", str(checkpoint), "--dataset", case.dataset, "--root", str(case.root), "--split", case.split,
            "--scales", ",".join(map(str, p["scales"])), "--pad-to", str(p["pad_to"]), "--upsample", p["upsample"],
            "--mean", p["mean"], "--device", "cpu", "--max-images", str(n_images), "--output", str(out), "--no-progress"]
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())["scores"]
    keys = {"PA": "Pixel Accuracy", "MA": "Mean Accuracy", "mIoU": "Mean IoU", "FWIoU": "Frequency Weighted IoU"}
    expected = scores(caffe_confusion(case, n_images))
    for short, key in keys.items():
        assert abs(100 * ours[key] - expected[short]) < 1e-4, (short, 100 * ours[key], expected[short])


# ----------------------------------------------------------------------------- training, deterministic


def train_sample(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    folder = GOLDENS / "train"
    return read_image(folder / f"{image_id}.png"), read_png_label(folder / f"{image_id}_label.png")


def exact_problems(mean_bgr=COCO_MEAN) -> list[str]:
    """Scale 1, no mirror, image within the crop: our blobs vs Caffe's, bit for bit."""
    caffe = goldens("train_exact.npz")
    transform = TrainTransform(CROP_TRAIN, scale_choices=(1.0,), flip=False, mean_bgr=mean_bgr, resize="caffe")
    problems = []
    for image_id in meta()["train_photos"]:
        image, label = train_sample(image_id)
        x, y = transform(image, label, np.random.default_rng(0))
        if not np.array_equal(x.numpy(), caffe[f"{image_id}/data"]):
            problems.append(f"{image_id}: data differs")
        if not np.array_equal(y.numpy(), caffe[f"{image_id}/label"].astype(np.int64)):
            problems.append(f"{image_id}: label differs")
    return problems


def test_train_transform_gives_caffes_blobs_exactly():
    shapes = {k: train_sample(k)[0].shape[:2] for k in meta()["train_photos"]}
    assert shapes == {"small": (97, 131), "gray": (200, 321), "exact": (321, 321)}
    assert exact_problems() == []


def test_train_blobs_with_pad_on_the_wrong_side_fail(monkeypatch):
    monkeypatch.setattr(transforms, "pad_bottom_right",
                        lambda a, size, v: np.pad(a, [(size[0] - a.shape[0], 0), (size[1] - a.shape[1], 0)]
                                                  + [(0, 0)] * (a.ndim - 2), constant_values=v))
    assert sorted(exact_problems()) == ["gray: data differs", "gray: label differs",
                                        "small: data differs", "small: label differs"]


def test_train_blobs_with_a_crop_offset_by_one_fail(monkeypatch):
    real = transforms.random_crop_offset
    monkeypatch.setattr(transforms, "random_crop_offset", lambda size, crop, rng: tuple(o + 1 for o in real(size, crop, rng)))
    assert len(exact_problems()) == 6


def test_train_blobs_with_the_wrong_mean_fail():
    assert sorted(exact_problems(MEANS_BGR["voc"])) == ["exact: data differs", "gray: data differs", "small: data differs"]


# ----------------------------------------------------------------------------- training, random


def content_box(label: np.ndarray) -> tuple[int, int, int]:
    """(rows, cols, 1 if the pad is on the left) of the non-255 block (the source has no 255)."""
    keep = label != 255
    return int(keep.any(axis=1).sum()), int(keep.any(axis=0).sum()), int(not keep[0, 0])


def our_draws(n: int) -> np.ndarray:
    """Our official TRAIN transform drawn ``n`` times on the golden's random-draw image."""
    image, label = train_sample("small")
    transform = TrainTransform(CROP_TRAIN, scale_choices=OFFICIAL_SCALES, flip=True, mean_bgr=COCO_MEAN, resize="caffe")
    return np.array([content_box(transform(image, label, sample_rng(7, 0, i))[1].numpy()) for i in range(n)])


def test_random_draws_have_caffes_sizes_pad_sides_and_shares():
    """Per draw (rows, cols, pad on the left): the same cells (one size per scale factor, the pad
    right/bottom unmirrored and left/bottom mirrored), and shares that a chi-square homogeneity
    test cannot tell apart at 1e-3; Caffe's alone are uniform over scales and mirror (1e-3)."""
    caffe = goldens("train_random.npz")["draws"].astype(np.int64)
    ours = our_draws(N_OURS)
    h, w = 97, 131
    sizes = {(int(h * s), int(w * s)) for s in OFFICIAL_SCALES}
    cells = sorted({tuple(d) for d in caffe.tolist()})
    assert cells == sorted({(r, c, left) for r, c in sizes for left in (0, 1)})
    assert sorted({tuple(d) for d in ours.tolist()}) == cells
    table = np.array([[np.sum(np.all(d == cell, axis=1)) for cell in cells] for d in (caffe, ours)])
    assert scipy.stats.chi2_contingency(table).pvalue > ALPHA
    by_scale = [np.sum(caffe[:, 0] == r) for r, _ in sorted(sizes)]
    assert scipy.stats.chisquare(by_scale).pvalue > ALPHA
    assert scipy.stats.binomtest(int(caffe[:, 2].sum()), len(caffe), 0.5).pvalue > ALPHA


def scaled_problems(resize: str = "caffe") -> list[str]:
    """For each scale: our unmirrored label (exactly) and image (exactly) vs Caffe's first
    unmirrored draw of that size."""
    caffe = goldens("train_random.npz")
    image, label = train_sample("small")
    problems = []
    for s in OFFICIAL_SCALES:
        rows, cols = int(97 * s), int(131 * s)
        transform = TrainTransform(CROP_TRAIN, scale_choices=(s,), flip=False, mean_bgr=COCO_MEAN, resize=resize)
        x, y = transform(image, label, np.random.default_rng(0))
        if not np.array_equal(y.numpy()[:rows, :cols], caffe[f"scaled_{rows}x{cols}/label"].astype(np.int64)):
            problems.append(f"{s}: label differs")
        if not np.array_equal(x.numpy()[:, :rows, :cols], caffe[f"scaled_{rows}x{cols}/data"]):
            problems.append(f"{s}: data differs")
    return problems


def test_scaled_image_and_label_are_caffes():
    assert scaled_problems() == []


def test_the_seed_ports_resize_is_not_caffes():
    """The default ``resize="seed_port"`` (float image, PIL-style nearest labels) differs from
    Caffe's at every scale != 1: the reason the official recipes need ``resize="caffe"``."""
    assert scaled_problems("seed_port") == [f"{s}: {what} differs" for s in (0.5, 0.75, 1.25, 1.5)
                                            for what in ("label", "data")]


def test_label_resized_bilinearly_fails(monkeypatch):
    def bilinear(label, size):
        return cv2.resize(label.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR).round().astype(label.dtype)

    monkeypatch.setattr(transforms, "resize_label_caffe", bilinear)
    assert sorted(scaled_problems()) == [f"{s}: label differs" for s in (0.5, 0.75, 1.25, 1.5)]


def our_offsets(n: int) -> np.ndarray:
    """(top, left) of our crop, ``n`` draws (scale 1, no mirror), read from the coordinate-coded
    image as the generator reads Caffe's: the crop's corner pixel is (B, G) = (left, top)."""
    image, label = train_sample("offsets")
    transform = TrainTransform(CROP_TRAIN, scale_choices=(1.0,), flip=False, mean_bgr=COCO_MEAN, resize="caffe")
    rng = np.random.default_rng(11)
    corners = [transform(image, label, rng)[0][:, 0, 0].numpy() for _ in range(n)]
    corners = np.rint(np.array(corners) + np.asarray(COCO_MEAN, np.float32)).astype(np.int64)
    return corners[:, [1, 0]]


def offset_problems(caffe: np.ndarray, ours: np.ndarray) -> list[str]:
    """Range of each offset (0..80 rows, 0..40 columns) and the row-offset shares (chi-square
    homogeneity, 1e-3)."""
    problems = []
    for axis, top in ((0, 80), (1, 40)):
        for who, d in (("caffe", caffe), ("ours", ours)):
            if (d[:, axis].min(), d[:, axis].max()) != (0, top):
                problems.append(f"{who} axis {axis}: {d[:, axis].min()}..{d[:, axis].max()}")
    table = np.array([np.bincount(d[:, 0], minlength=82) for d in (caffe, ours)])
    table = table[:, table.sum(0) > 0]
    if scipy.stats.chi2_contingency(table).pvalue <= ALPHA:
        problems.append("row offsets: shares differ")
    return problems


@pytest.mark.slow
def test_crop_offsets_cover_caffes_range_with_caffes_shares():
    """Scale 1, no mirror, a 401 x 361 image, crop 321: Caffe's offsets span 0..80 x 0..40
    inclusive; ours the same, with shares a chi-square test cannot tell apart."""
    caffe = goldens("train_random.npz")["offsets"].astype(np.int64)
    assert offset_problems(caffe, our_offsets(N_OURS)) == []


@pytest.mark.slow
def test_crop_offsets_off_by_one_fail(monkeypatch):
    caffe = goldens("train_random.npz")["offsets"].astype(np.int64)
    real = transforms.random_crop_offset
    monkeypatch.setattr(transforms, "random_crop_offset", lambda size, crop, g: tuple(o + 1 for o in real(size, crop, g)))
    problems = offset_problems(caffe, our_offsets(N_OURS))
    assert "ours axis 0: 1..81" in problems and "ours axis 1: 1..41" in problems


def test_generator_refuses_a_caffe_without_imagesegdata(reference_caffe_python, tmp_path):
    """The default reference (Interp, no data layer) cannot make these goldens: one line, no files."""
    script = ROOT / "scripts" / "make_caffe_data_goldens.py"
    result = subprocess.run([str(reference_caffe_python), str(script), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=dict(os.environ, GLOG_minloglevel="2"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: this Caffe has no ImageSegData layer (see this script's docstring)"
    assert not (tmp_path / "out").exists()
