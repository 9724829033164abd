"""Forward parity: blob dumps, reference choice, and deliberately wrong conversions caught by layer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from deeplab_caffe import models
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter import convert
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab
from deeplab_caffe.converter.verify import (FINAL, caffe_input, comparison_points, deploy_net, opencv_outputs,
                              pytorch_outputs)
from deeplab_caffe.parity.suite import forward
from deeplab_caffe.parity.suite.forward import (BlobDumpError, ReferenceUnavailable, caffe_graph, check_forward,
                                  load_blob_dump)

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ("astronaut", "coffee")
SIZE = 97


def tiny_config(msc: bool = True) -> dict:
    return models.default_config(5, n_blocks=(1, 1, 2, 1), aspp_rates=(2, 4), msc=msc, stem_channels=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny MSC DeepLab-ResNet caffemodel with the official naming (MSC copies written, as Caffe does)."""
    return make_synthetic_deeplab(tmp_path_factory.mktemp("tiny"), tiny_config(), seed=11)


def converted(synthetic) -> torch.nn.Module:
    return convert(synthetic.caffemodel_path, synthetic.prototxt_path).model


def opencv_dump(synthetic, image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-layer outputs of OpenCV's Caffe run, shaped like a real Caffe dump (keys = layer names)."""
    graph = caffe_graph(synthetic.caffemodel_path, synthetic.prototxt_path)
    model = converted(synthetic)
    x = caffe_input(image)
    points = comparison_points(graph)
    final = pytorch_outputs(model, x, [])[FINAL]
    net = deploy_net(graph, tuple(x.shape), tuple(final.shape[-2:]))
    prototxt = synthetic.caffemodel_path.parent / "dump_deploy.prototxt"
    prototxt.write_text(text_format.MessageToString(net))
    names = [layer for layer, _, _ in points] + ["fc_fusion"]
    return {"data": x, **opencv_outputs(prototxt, synthetic.caffemodel_path, x, names)}


@pytest.fixture(scope="module")
def dump_npz(tiny, tmp_path_factory) -> Path:
    image = forward.photos(IMAGES[:1], SIZE)[IMAGES[0]]
    path = tmp_path_factory.mktemp("dump") / "tiny_astronaut.npz"
    np.savez(path, _meta=np.array('{"caffemodel": "tiny"}'), **opencv_dump(tiny, image))
    return path


def check(synthetic, model, **kwargs):
    graph = caffe_graph(synthetic.caffemodel_path, synthetic.prototxt_path)
    return check_forward(model, graph, synthetic.caffemodel_path, images=IMAGES, size=SIZE, **kwargs)


# ----------------------------------------------------------------------------- faithful conversion


def test_faithful_conversion_matches_opencv_layer_by_layer(tiny):
    report = check(tiny, converted(tiny))
    assert report.passed, report.first_divergent
    assert report.first_divergent is None
    assert report.max_rel < 1e-5
    compared = {row.layer for row in report.rows}
    assert {"conv1", "scale_conv1", "pool1", "res5a_relu", "fc1_voc12", "conv1_res075", "fc1_voc12_res05"} <= compared


def test_faithful_conversion_matches_a_caffe_blob_dump(tiny, dump_npz):
    report = check(tiny, converted(tiny), reference=dump_npz)
    assert report.passed, report.first_divergent
    assert report.reference == f"Caffe blob dump ({dump_npz.name})"
    assert len(report.rows) > 40


def test_streamed_opencv_check_equals_one_whole_net_forward(tiny, dump_npz):
    """The chunked OpenCV reference of --verify gives the rows one whole-net OpenCV forward gives."""
    graph = caffe_graph(tiny.caffemodel_path, tiny.prototxt_path)
    streamed = check_forward(converted(tiny), graph, tiny.caffemodel_path, images=IMAGES[:1], size=SIZE)
    held = check(tiny, converted(tiny), reference=dump_npz)
    assert [(r.layer, r.module, r.shape) for r in streamed.rows] == [(r.layer, r.module, r.shape) for r in held.rows]
    assert [r.max_abs for r in streamed.rows] == pytest.approx([r.max_abs for r in held.rows], rel=1e-6, abs=1e-9)
    assert len(streamed.rows) == len(comparison_points(graph)) + 1


def test_dump_is_used_even_without_opencv(tiny, dump_npz, monkeypatch):
    monkeypatch.setattr(forward, "opencv_available", lambda: None)
    assert check(tiny, converted(tiny), reference=dump_npz).passed
    with pytest.raises(ReferenceUnavailable, match="dump_caffe_blobs.py"):
        check(tiny, converted(tiny))


# ----------------------------------------------------------------------------- wrong conversions


def _bn_scale_factor_not_divided_out(model: torch.nn.Module, synthetic, layer: str, module: str) -> None:
    """What a port that forgets BatchNorm's third blob does: statistics stay multiplied by s."""
    factor = float(synthetic.blobs[layer][2][0])
    assert abs(factor - 1.0) > 0.2
    bn = model.get_submodule(module)
    with torch.no_grad():
        bn.running_mean.mul_(factor)
        bn.running_var.mul_(factor)


@pytest.mark.parametrize("reference", ["opencv", "dump"])
def test_batchnorm_scale_factor_not_divided_out_is_caught_at_its_scale_layer(tiny, dump_npz, reference):
    model = converted(tiny)
    _bn_scale_factor_not_divided_out(model, tiny, "bn3a_branch2b", "backbone.res3.a.branch2b.bn")
    report = check(tiny, model, reference=dump_npz if reference == "dump" else None)
    assert not report.passed
    assert report.first_divergent == "scale3a_branch2b"  # BN + Scale output: the first blob that differs
    first = next(row for row in report.rows if not row.ok)
    assert first.module == "backbone.res3.a.branch2b.bn"
    assert first.max_rel > 1e-3


def _interp_without_aligned_corners(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def test_msc_resized_without_aligned_corners_is_caught_at_the_first_scaled_layer(tiny, monkeypatch):
    monkeypatch.setattr("deeplab_caffe.models.deeplab_v2.caffe_interp", _interp_without_aligned_corners)
    report = check(tiny, converted(tiny))
    assert not report.passed
    # the 1x branch is untouched; the first pyramid copy (0.5x in the official graph order) sees a
    # differently resized input from its first conv
    assert report.first_divergent == "conv1_res05"
    copies = caffe_graph(tiny.caffemodel_path, tiny.prototxt_path).original
    assert all(row.ok for row in report.rows if row.layer not in copies and row.layer != FINAL)
    assert any(not row.ok for row in report.rows if row.layer in copies)


def test_wrong_conversion_is_named_by_the_suite(tiny, monkeypatch, tmp_path):
    from deeplab_caffe.parity.suite.manifest import Row, WeightsSpec
    from deeplab_caffe.parity.suite.runner import RunContext, run_row

    original = forward.check_forward

    def broken(model, *args, **kwargs):
        _bn_scale_factor_not_divided_out(model, tiny, "bn_conv1", "backbone.stem.conv1.bn")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(forward, "check_forward", broken)
    row = Row(name="tiny-forward", kind="forward", tags=(), model="tiny", weights=WeightsSpec(key="tiny"),
              options={"images": list(IMAGES), "size": SIZE, "rtol": 1e-5})
    ctx = RunContext(data_roots={}, weights={"tiny": tiny.caffemodel_path}, outdir=tmp_path, workdir=tmp_path, seed=0,
                     device="cpu")
    result = run_row(row, ctx)
    assert result.status == "fail"
    assert result.details["first_divergent"] == "scale_conv1"
    assert "first divergent layer scale_conv1" in result.reason


# ----------------------------------------------------------------------------- dump files


def test_npz_and_hdf5_dumps_load_alike(tmp_path):
    blobs = {"data": np.ones((1, 3, 4, 4), np.float32), "conv1": np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)}
    np.savez(tmp_path / "a.npz", _meta=np.array("{}"), **blobs)
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as h5:
        for key, value in blobs.items():
            h5.create_dataset(key, data=value)
        h5.attrs["_meta"] = '{"caffemodel_sha256": "abc"}'
    a, b = load_blob_dump(tmp_path / "a.npz"), load_blob_dump(tmp_path / "a.h5")
    assert set(a) == set(b) == {"data", "conv1"}
    assert a["conv1"].dtype == np.float32 and np.array_equal(a["conv1"], b["conv1"])
    assert forward.dump_metadata(tmp_path / "a.h5") == {"caffemodel_sha256": "abc"}


@pytest.mark.parametrize("content, problem", [
    ({"conv1": np.zeros((1, 2, 2, 2))}, "no 'data' blob"),
    ({"data": np.zeros((3, 4, 4))}, "expected N x 3 x H x W"),
    ({"data": np.zeros((1, 3, 4, 4))}, "only the input"),
])
def test_bad_dumps_are_named(tmp_path, content, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(BlobDumpError, match=problem) as info:
        load_blob_dump(path)
    assert str(path) in str(info.value)


def test_dump_suffix_and_existence_are_checked(tmp_path):
    with pytest.raises(BlobDumpError, match="not found"):
        load_blob_dump(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(BlobDumpError, match=r"\.npz, \.h5 or \.hdf5"):
        load_blob_dump(tmp_path / "x.txt")
    (tmp_path / "broken.h5").write_text("not hdf5")
    with pytest.raises(BlobDumpError, match="not a readable HDF5"):
        load_blob_dump(tmp_path / "broken.h5")


# ----------------------------------------------------------------------------- scripts/dump_caffe_blobs.py


@pytest.fixture(scope="module")
def dump_script():
    spec = importlib.util.spec_from_file_location("dump_caffe_blobs", ROOT / "scripts" / "dump_caffe_blobs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dump_caffe_blobs"] = module
    spec.loader.exec_module(module)
    return module


def test_dump_script_makes_a_deploy_net_from_a_test_prototxt(dump_script):
    net = caffe_pb2.NetParameter(name="test")
    data = net.layer.add(name="data", type="ImageData", top=["data", "label"])
    data.include.add(phase=caffe_pb2.TEST)
    net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"]).convolution_param.num_output = 4
    net.layer.add(name="conv1_relu", type="ReLU", bottom=["conv1"], top=["conv1"])
    net.layer.add(name="label_shrink", type="Interp", bottom=["label"], top=["label_shrink"])
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["conv1", "label_shrink"], top=["loss"])
    net.layer.add(name="drop", type="Dropout", bottom=["conv1"], top=["conv1"]).include.add(phase=caffe_pb2.TRAIN)
    deploy = dump_script.deploy_net(net, (1, 3, 65, 65), caffe_pb2)
    assert list(deploy.input) == ["data"] and list(deploy.input_shape[0].dim) == [1, 3, 65, 65]
    assert [layer.name for layer in deploy.layer] == ["conv1", "conv1_relu"]


class _FakeBlob:
    def __init__(self, shape):
        self.data = np.zeros(shape, np.float32)

    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)


class _FakeNet:
    """The slice of pycaffe's Net the script uses: conv (x 2) then an in-place ReLU on its blob."""

    _layer_names = ["input", "conv1", "conv1_split", "conv1_relu"]
    layers = [type("Layer", (), {"type": kind})() for kind in ("Input", "Convolution", "Split", "ReLU")]
    top_names = {"input": ["data"], "conv1": ["conv1"], "conv1_split": ["conv1_split_0", "conv1_split_1"],
                 "conv1_relu": ["conv1"]}

    def __init__(self):
        self.blobs = {"data": _FakeBlob((1, 3, 2, 2)), "conv1": _FakeBlob((1, 3, 2, 2))}
        self.ran: list[str] = []

    def reshape(self):
        self.blobs["conv1"].reshape(*self.blobs["data"].data.shape)

    def forward(self, start, end):
        assert start == end
        self.ran.append(start)
        if start == "conv1":
            self.blobs["conv1"].data[...] = 2 * self.blobs["data"].data - 1
        elif start == "conv1_relu":
            np.maximum(self.blobs["conv1"].data, 0, out=self.blobs["conv1"].data)


def test_dump_script_keeps_each_in_place_layers_own_output(dump_script, tmp_path):
    data = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    net = _FakeNet()
    blobs = dump_script.run_layers(net, data)
    assert net.ran == ["conv1", "conv1_split", "conv1_relu"]  # every layer runs, in order
    assert set(blobs) == {"data", "conv1", "conv1_relu"}  # Caffe's Split copies are not recorded
    np.testing.assert_array_equal(blobs["conv1"], 2 * data - 1)  # before the in-place ReLU
    np.testing.assert_array_equal(blobs["conv1_relu"], np.maximum(2 * data - 1, 0))
    for suffix in ("npz", "h5"):
        path = dump_script.save_dump(tmp_path / f"fake.{suffix}", blobs, {"caffemodel_sha256": "0" * 64})
        loaded = load_blob_dump(path)
        assert set(loaded) == set(blobs)
        np.testing.assert_array_equal(loaded["conv1_relu"], blobs["conv1_relu"])
        assert forward.dump_metadata(path)["caffemodel_sha256"] == "0" * 64


def test_dump_script_prepares_photos_exactly_like_the_suite(dump_script):
    ours = forward.photos(["coffee"], 65)["coffee"]
    theirs = dump_script.load_image(None, "coffee", 65)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(dump_script.caffe_input(theirs), caffe_input(ours))


def test_forward_row_without_any_reference_is_not_run(tiny, monkeypatch, tmp_path):
    from deeplab_caffe.parity.suite.manifest import Row, WeightsSpec
    from deeplab_caffe.parity.suite.runner import RunContext, run_row

    monkeypatch.setattr(forward, "opencv_available", lambda: None)
    row = Row(name="tiny-forward", kind="forward", tags=(), model="tiny", weights=WeightsSpec(key="tiny"))
    ctx = RunContext(data_roots={}, weights={"tiny": tiny.caffemodel_path}, outdir=tmp_path, workdir=tmp_path, seed=0,
                     device="cpu")
    result = run_row(row, ctx)
    assert result.status == "not_run"
    assert "no --reference blob dump" in result.reason and "scripts/dump_caffe_blobs.py" in result.reason
