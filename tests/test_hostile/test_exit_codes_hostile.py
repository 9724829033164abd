"""Malformed files and options end in the contract's exit status with one line naming the file,
key or option: never an internal error (exit 1), a traceback, a silent success or a leftover file.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import cv2
import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save

from deeplab_caffe.caffe_proto import caffe_pb2

from hostile import assert_one_error, cli

GHOST_RELU = '  name: "conv1_relu"\n  type: "ReLU"\n  bottom: "conv1"'


@pytest.fixture(scope="session")
def checkpoint(tiny_caffe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    assert cli("deeplab-convert", "--caffemodel", tiny_caffe.caffemodel_path, "--prototxt",
               tiny_caffe.prototxt_path, "-o", out).returncode == 0
    return out


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return path


def _demo(checkpoint, photo, out):
    return cli("deeplab-demo", "--checkpoint", checkpoint, "--image", photo, "--output", out, "--device", "cpu")


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_blob_shape_whose_product_wraps_to_its_data_size_is_refused(tiny_caffe, tmp_path):
    net = caffe_pb2.NetParameter.FromString(tiny_caffe.caffemodel_path.read_bytes())
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    assert len(conv1.blobs[0].data) == 1176
    conv1.blobs[0].shape.ClearField("dim")
    conv1.blobs[0].shape.dim.extend([2**61 + 147, 8])  # 2**64 + 1176: 1176 in int64
    assert int(np.prod([2**61 + 147, 8], dtype=np.int64)) == 1176
    bad = tmp_path / "wrap.caffemodel"
    bad.write_bytes(net.SerializeToString())
    assert_one_error(cli("deeplab-convert", "--caffemodel", bad, "-o", tmp_path / "m.pth"), 2, str(bad),
                     "blob shape (2305843009213694099, 8) holds 18446744073709552792 values but its data has 1176")
    assert _names(tmp_path) == ["wrap.caffemodel"]


@pytest.mark.parametrize("data, kind", [
    (np.array([b"abc", b"def"]), "a string dataset"),
    (np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), "a compound dataset"),
    (np.arange(6, dtype=np.int32), "a int32 dataset"),
])
def test_hdf5_blob_that_is_not_float_data_is_refused(tiny_caffe, tmp_path, data, kind):
    bad = tmp_path / "odd.caffemodel.h5"
    with h5py.File(bad, "w") as h5:
        h5.create_group("data").create_group("conv1").create_dataset("0", data=data)
    result = cli("deeplab-convert", "--caffemodel", bad, "--prototxt", tiny_caffe.prototxt_path, "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(bad), f"data/conv1/0 is {kind}, not float32/float64 blob data")
    assert _names(tmp_path) == ["odd.caffemodel.h5"]


def test_a_bottom_no_layer_produces_is_refused_as_caffe_and_opencv_refuse_it(tiny_caffe, tmp_path,
                                                                              reference_caffe_python):
    text = tiny_caffe.opencv_prototxt_path.read_text()
    assert text.count(GHOST_RELU) == 1
    ghost = tmp_path / "ghost.prototxt"
    ghost.write_text(text.replace(GHOST_RELU, GHOST_RELU.replace('"conv1"', '"ghost"')))

    result = cli("deeplab-convert", "--caffemodel", tiny_caffe.caffemodel_path, "--prototxt", ghost,
                 "-o", tmp_path / "m.pth")
    assert_one_error(result, 2, str(ghost), "layer conv1_relu: bottom 'ghost' is no net input")
    assert _names(tmp_path) == ["ghost.prototxt"]

    # the two references, each on its own: real Caffe (a separate process, its own numpy) and OpenCV
    caffe = subprocess.run([str(reference_caffe_python), "-c", "import sys, caffe; caffe.set_mode_cpu(); "
                            "caffe.Net(sys.argv[1], caffe.TEST)", str(ghost)], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, GLOG_minloglevel="0"))
    assert caffe.returncode != 0 and "Unknown bottom blob 'ghost' (layer 'conv1_relu'" in caffe.stderr
    with pytest.raises(cv2.error, match='output blob "ghost"'):
        cv2.dnn.readNetFromCaffe(str(ghost))
    # and the unedited file passes all three
    assert cv2.dnn.readNetFromCaffe(str(tiny_caffe.opencv_prototxt_path)).empty() is False


@pytest.mark.parametrize("args, fragment", [
    (["--verify", "--verify-size", "0"], "'--verify-size': 0 is not in the range 1<=x<=2048"),
    (["--rtol", "nan"], "'--rtol': 'nan' is not a finite number"),
    (["--rtol", "-1"], "'--rtol': '-1' is not at least 0"),
    (["--layer-rtol", "inf"], "'--layer-rtol': 'inf' is not a finite number"),
])
def test_convert_numeric_options_out_of_range_are_usage_errors(tiny_caffe, tmp_path, args, fragment):
    result = cli("deeplab-convert", "--caffemodel", tiny_caffe.caffemodel_path, "-o", tmp_path / "m.pth", *args)
    assert_one_error(result, 2, fragment)
    assert _names(tmp_path) == []


@pytest.mark.parametrize("args, fragment", [
    (["--format", "torchscript", "--rtol", "nan"], "'--rtol': 'nan' is not a finite number"),
    (["--format", "torchscript", "--rtol", "-0.5"], "'--rtol': '-0.5' is not at least 0"),
    (["--format", "torchscript", "--check-sizes", "99999x99999"], "--check-sizes: 99999x99999 is above the largest"),
    (["--format", "onnx", "--opset", "99"], "--opset 99: the exporter writes opsets 18 to"),
])
def test_export_numeric_options_out_of_range_are_usage_errors(checkpoint, tmp_path, args, fragment):
    result = cli("deeplab-export", "--checkpoint", checkpoint, "--output", tmp_path / "m.out", *args)
    assert_one_error(result, 2, fragment)
    assert _names(tmp_path) == []


@pytest.mark.parametrize("scales", ["nan", "inf", "-1", "0.5,1e6"])
def test_eval_scales_out_of_range_are_usage_errors(checkpoint, scales):
    result = cli("deeplab-parity", "eval", "--checkpoint", checkpoint, "--dataset", "shapes", "--scales", scales)
    assert_one_error(result, 2, f"--scales must be positive numbers, finite and at most 4, got {scales!r}")


def test_safetensors_config_nested_past_the_recursion_limit_is_bad_input(photo, tmp_path):
    bad = tmp_path / "deep.safetensors"
    bad.write_bytes(save({"w": torch.zeros(2)}, metadata={"config": "[" * 100000 + "]" * 100000, "metadata": "{}"}))
    result = _demo(bad, photo, tmp_path / "out")
    assert_one_error(result, 2, str(bad), "header config/metadata is not valid JSON (RecursionError")
    assert _names(tmp_path) == ["deep.safetensors"]


def test_demo_refuses_a_checkpoint_with_nan_weights(checkpoint, photo, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"]["backbone.stem.conv1.conv.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(payload, bad)
    assert_one_error(_demo(bad, photo, tmp_path / "out"), 2, str(bad),
                     "state_dict['backbone.stem.conv1.conv.weight'] holds NaN or Inf")
    assert _names(tmp_path) == ["nan.pth"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_demo_runs_float64_and_float16_checkpoints_in_float32(checkpoint, photo, tmp_path, dtype):
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    other = tmp_path / "other.pth"
    torch.save(payload, other)
    assert _demo(checkpoint, photo, tmp_path / "ref").returncode == 0
    result = _demo(other, photo, tmp_path / "out")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    mask = cv2.imread(str(tmp_path / "out" / "photo.png_mask.png"), cv2.IMREAD_UNCHANGED)
    reference = cv2.imread(str(tmp_path / "ref" / "photo.png_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (120, 160)
    if dtype == torch.float64:  # float32 values widened and narrowed back: the same model exactly
        assert (mask == reference).all()


TRAIN = ["--config", "shapes", "dataset.kwargs.n_images=8", "dataset.kwargs.size=[48, 48]", "input.crop_size=33",
         "solver.batch_size=1", "solver.iter_size=1", "solver.max_iter=200", "log.tensorboard=false",
         "model.init_synthetic_seed=null",
         "--device", "cpu"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workdir after one real update of the tiny shapes recipe (``latest.pth`` at iteration 1)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    result = cli("deeplab-train", *TRAIN, "--workdir", workdir, "--max-iters", "1")
    assert result.returncode == 0, result.stderr
    return workdir


def _edit(payload: dict, how: str) -> None:
    if how == "negative iteration":
        payload["iteration"] = -3
    elif how == "no data":
        del payload["data"]
    elif how == "string model entry":
        payload["model"][next(iter(payload["model"]))] = "weights"
    elif how == "past max_iter":
        payload["iteration"] = 500


@pytest.mark.parametrize("how, fragment", [
    ("negative iteration", "training checkpoint entry 'iteration' is -3, not a count >= 0"),
    ("no data", "training checkpoint has no 'data' entry"),
    ("string model entry", "training checkpoint entry model['"),
    ("past max_iter", "it is at iteration 500, past solver.max_iter 200"),
])
def test_resume_from_a_crafted_latest_pth_is_bad_input(trained, tmp_path, how, fragment):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    latest = workdir / "latest.pth"
    payload = torch.load(latest, weights_only=True)
    _edit(payload, how)
    latest.unlink()  # a hard link to checkpoint_1.pth: replace it alone
    torch.save(payload, latest)
    before = _names(workdir)
    result = cli("deeplab-train", *TRAIN, "--workdir", workdir, "--resume")
    assert_one_error(result, 2, str(latest), fragment)
    assert _names(workdir) == before


@pytest.mark.parametrize("size, fragment", [
    ("[48]", "shapes: size must be [height, width], two integers, got [48]"),
    ("[100000, 100000]", "shapes: size must be 8 to 4096 pixels a side, got [100000, 100000]"),
])
def test_a_shapes_size_that_is_malformed_or_huge_is_bad_input(tmp_path, size, fragment):
    args = [a for a in TRAIN if not a.startswith("dataset.kwargs.size=")]
    result = cli("deeplab-train", *args, f"dataset.kwargs.size={size}", "--workdir", tmp_path / "run", "--max-iters", "1")
    assert_one_error(result, 2, fragment)
    assert not (tmp_path / "run").exists() or _names(tmp_path / "run") == [".lock"]  # the lock file stays
