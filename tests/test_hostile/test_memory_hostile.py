"""Small files that declare huge sizes: each is refused (exit 2, one line naming the file) before
anything is allocated, under an address-space limit of the command's good-run peak + 1 GiB.

Each reader checks the sizes it reads against what the file holds (``models.bounds``, the HDF5
reader, the converter's meta-device model count, the demo's image header). The limit comes from
``memory_limits``: a malformed file that made the command allocate its declared size would fail
that allocation and end as an internal error (exit 1), which every case here rules out.
"""

from __future__ import annotations

import pickle

import cv2
import h5py
import numpy as np
import pytest
import torch

import foreign_detectron2 as d2
from deeplab_caffe import models
from deeplab_caffe.converter.foreign import seed_port

from hostile import assert_one_error
from memory_limits import HEADROOM, run_limited, vm_peak


def _shared_lists(leaf, width: int = 1000, depth: int = 4) -> list:
    """``width ** depth`` leaves in a few KB of pickle: each level repeats one list."""
    tree = [leaf] * width
    for _ in range(depth - 1):
        tree = [tree] * width
    return tree


@pytest.fixture(scope="session")
def good_checkpoint(tiny_caffe, tmp_path_factory):
    """The tiny model converted (``deeplab-convert``) and that good run's VmPeak (bytes)."""
    out = tmp_path_factory.mktemp("good") / "tiny.pth"
    peak = vm_peak("deeplab-convert", "--caffemodel", tiny_caffe.caffemodel_path, "--prototxt",
                   tiny_caffe.prototxt_path, "-o", out)
    return out, peak


@pytest.fixture(scope="session")
def demo_baseline(good_checkpoint, tmp_path_factory):
    """A 300 x 400 photo and the VmPeak (bytes) of ``deeplab-demo`` segmenting it."""
    folder = tmp_path_factory.mktemp("demo")
    photo = folder / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    peak = vm_peak("deeplab-demo", "--checkpoint", good_checkpoint[0], "--image", photo, "--output", folder / "out",
                   "--device", "cpu")
    return photo, peak


def _convert_limited(good_checkpoint, *args):
    return run_limited(good_checkpoint[1] + HEADROOM, "deeplab-convert", *map(str, args))


def test_hdf5_dataset_declaring_149_gib_is_refused_before_reading(tiny_caffe, good_checkpoint, tmp_path):
    bad = tmp_path / "big.caffemodel.h5"
    with h5py.File(bad, "w") as h5:  # chunked and never written: the file holds a header only
        h5.create_group("data").create_group("conv1").create_dataset("0", shape=(200000, 200000), dtype="f4",
                                                                      chunks=(100, 100))
    result = _convert_limited(good_checkpoint, "--caffemodel", bad, "--prototxt", tiny_caffe.prototxt_path,
                              "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(bad), "data/conv1/0 (shape (200000, 200000), float32) declares 149.0 GiB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.caffemodel.h5"]


def test_seed_port_zero_stride_tensor_of_two_million_classes_is_refused(good_checkpoint, tmp_path):
    config = models.default_config(21, n_blocks=(1, 1, 1, 1), aspp_rates=seed_port.ASPP_RATES, msc=True,
                                   stem_channels=8, widths=(8, 16, 32, 64))
    state = seed_port.port_state_dict(models.build_model(config), "tiny")
    for key in [k for k in state if k.startswith("base.aspp.c")]:  # one stored float, 2e6 classes declared
        state[key] = torch.zeros(1).expand(2_000_000, *state[key].shape[1:])
    bad = tmp_path / "seed.pth"
    torch.save(state, bad)
    result = _convert_limited(good_checkpoint, "--from", "deeplab-pytorch", bad, "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(bad), "declares shape (2000000", "over 4 B of stored data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.pth"]


def test_detectron2_pickle_of_shared_lists_is_refused(good_checkpoint, tmp_path):
    nested = _shared_lists(0.0)
    bad = tmp_path / "d2.pkl"
    d2.write_pkl(bad, {key: nested for key in d2.random_state()})  # every key a 1e12-leaf list
    assert bad.stat().st_size < 100_000
    result = _convert_limited(good_checkpoint, "--from", "detectron2", bad, "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(bad), f"expands to more than the file's {bad.stat().st_size} bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d2.pkl"]


def test_num_output_beyond_its_blob_is_refused_before_the_model_is_built(tiny_caffe, good_checkpoint, tmp_path):
    text = tiny_caffe.prototxt_path.read_text()
    assert text.count("num_output: 21\n") == 12  # the classifier branches of the 1x, 0.75x, 0.5x nets
    bad = tmp_path / "huge.prototxt"
    bad.write_text(text.replace("num_output: 21\n", "num_output: 150000000\n"))
    result = _convert_limited(good_checkpoint, "--caffemodel", tiny_caffe.caffemodel_path, "--prototxt", bad,
                              "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(bad), "its graph describes a model of 1,383,000,149,004 values (5.0 TiB",
                     f"{tiny_caffe.caffemodel_path} holds 1,027,872 values")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.prototxt"]


def test_class_names_of_shared_lists_are_refused_by_the_demo(good_checkpoint, demo_baseline, tmp_path):
    payload = torch.load(good_checkpoint[0], weights_only=True)
    payload["metadata"]["class_names"] = _shared_lists("name")
    bad = tmp_path / "names.pth"
    torch.save(payload, bad)
    photo, peak = demo_baseline
    result = run_limited(peak + HEADROOM, "deeplab-demo", "--checkpoint", str(bad), "--image", str(photo),
                         "--output", str(tmp_path / "out"), "--device", "cpu")
    assert_one_error(result, 2, str(bad), "checkpoint expands to more than the file's")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.pth"]


def test_a_16000_pixel_square_png_is_refused_from_its_header(good_checkpoint, demo_baseline, tmp_path):
    huge = tmp_path / "huge.png"
    image = np.zeros((16000, 16000, 3), np.uint8)
    image[::97, :, 1] = 200
    cv2.imwrite(str(huge), image)
    del image
    assert huge.stat().st_size < 2_000_000
    _, peak = demo_baseline
    result = run_limited(peak + HEADROOM, "deeplab-demo", "--checkpoint", str(good_checkpoint[0]), "--image",
                         str(huge), "--output", str(tmp_path / "out"), "--device", "cpu")
    assert_one_error(result, 2, str(huge), "16000 x 16000 pixels (256.0 megapixels) is over the limit of 20 megapixels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.png"]


@pytest.mark.slow
def test_a_12_megapixel_photo_stays_within_the_bound(good_checkpoint, demo_baseline, tmp_path):
    """Under the pixel limit the probabilities are resized one class at a time: 21 classes at
    4000 x 3000 would be 1 GB of float32 at once, the bound's whole headroom."""
    photo = tmp_path / "wide.png"
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[::7, :, 1] = 200
    image[:, ::13, 2] = 90
    cv2.imwrite(str(photo), image)
    _, peak = demo_baseline
    result = run_limited(peak + HEADROOM, "deeplab-demo", "--checkpoint", str(good_checkpoint[0]), "--image",
                         str(photo), "--output", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    mask = cv2.imread(str(tmp_path / "out" / "wide.png_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (3000, 4000) and mask.dtype == np.uint8
