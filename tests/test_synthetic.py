"""converter.synthetic: official DeepLab-ResNet graphs, random caffemodels in every encoding, OpenCV runs them."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_proto import caffe_pb2
from converter.synthetic import (
    caffemodel_bytes,
    deeplab_prototxt,
    deeplab_prototxt_text,
    make_synthetic_deeplab,
    random_blobs,
    random_caffemodel,
    score_size,
    write_caffemodel,
    write_caffemodel_h5,
    write_prototxt,
)

REPO = Path(__file__).resolve().parent.parent


def make_config(n_classes: int = 5, blocks=(1, 1, 1, 1), stem: int = 8, aspp=(2, 4), msc: bool = False) -> dict:
    """A DeepLab v2 config as docs/architecture.md describes it (built here, independent of models/)."""
    stages = []
    for i, (n, stride, dilation) in enumerate(zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4))):
        ids = ["a", "b", "c"][:n] if n <= 3 else ["a"] + [f"b{j}" for j in range(1, n)]
        mid = stem * 2**i
        stages.append({"name": f"res{i + 2}", "blocks": ids, "mid_channels": mid, "out_channels": 4 * mid,
                       "stride": stride, "dilation": dilation})
    branches = ([{"kernel": 3, "dilation": r, "pad": r, "bias": True} for r in aspp] if aspp
                else [{"kernel": 1, "dilation": 1, "pad": 0, "bias": True}])
    return {
        "arch": "deeplab_v2", "n_classes": n_classes, "in_channels": 3, "bn_eps": 1e-5,
        "stem": {"channels": stem, "conv_kernel": 7, "conv_stride": 2, "conv_pad": 3,
                 "pool_kernel": 3, "pool_stride": 2, "pool_pad": 1},
        "stages": stages,
        "classifier": {"branches": branches},
        "msc": {"scales": [{"shrink": 4, "zoom": 3}, {"shrink": 2, "zoom": 1}]} if msc else None,
    }


def resnet101(n_classes: int = 21, aspp=(6, 12, 18, 24), msc: bool = False) -> dict:
    return make_config(n_classes, (3, 4, 23, 3), 64, aspp, msc)


def by_name(net: caffe_pb2.NetParameter) -> dict[str, caffe_pb2.LayerParameter]:
    return {layer.name: layer for layer in net.layer}


def photo(size: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut, else a smooth pattern), BGR minus the DeepLab mean, 1x3xHxW."""
    import cv2

    try:
        from skimage import data

        image = data.astronaut()[:, :, ::-1].astype(np.float32)
    except ImportError:  # pragma: no cover - scikit-image is a test dependency
        yy, xx = np.mgrid[0:256, 0:256]
        image = np.stack([xx, yy, (xx + yy) / 2], axis=-1).astype(np.float32)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    image -= np.array([104.008, 116.669, 122.675], np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


# ------------------------------------------------------------------------------------- graph

def test_resnet101_graph_has_exactly_the_official_layers():
    net = deeplab_prototxt(resnet101())
    types = Counter(layer.type for layer in net.layer)
    # conv1 + 33 blocks x 3 + 4 projections = 104 backbone convolutions, + 4 ASPP branches
    assert types == {"Convolution": 108, "BatchNorm": 104, "Scale": 104, "ReLU": 1 + 33 * 3, "Eltwise": 33 + 1,
                     "Pooling": 1}
    assert len(net.layer) == 108 + 104 + 104 + 100 + 34 + 1
    assert list(net.input) == ["data"] and list(net.input_shape[0].dim) == [1, 3, 513, 513]
    names = [layer.name for layer in net.layer]
    assert len(set(names)) == len(names)
    assert names[:12] == ["conv1", "bn_conv1", "scale_conv1", "conv1_relu", "pool1",
                          "res2a_branch1", "bn2a_branch1", "scale2a_branch1",
                          "res2a_branch2a", "bn2a_branch2a", "scale2a_branch2a", "res2a_branch2a_relu"]
    blocks = [n for n in names if n.startswith("res") and n[-1] != "u" and "_" not in n]
    assert blocks == (["res2a", "res2b", "res2c", "res3a", "res3b1", "res3b2", "res3b3", "res4a"]
                      + [f"res4b{i}" for i in range(1, 23)] + ["res5a", "res5b", "res5c"])
    assert names[-5:] == ["fc1_voc12_c0", "fc1_voc12_c1", "fc1_voc12_c2", "fc1_voc12_c3", "fc1_voc12"]
    for block in blocks:
        for branch in ("2a", "2b", "2c") + (("1",) if block[-1] == "a" else ()):
            assert {f"res{block[3:]}_branch{branch}", f"bn{block[3:]}_branch{branch}", f"scale{block[3:]}_branch{branch}"} <= set(names)
    layers = by_name(net)
    assert {"res4b22_branch2b", "bn4b22_branch2b", "scale5c_branch2c", "res3b3_relu", "res4b22_branch2b_relu"} <= layers.keys()
    assert not any(layer.param for layer in net.layer)  # deploy net: no sharing names

    conv1 = layers["conv1"].convolution_param
    assert (conv1.num_output, conv1.kernel_size[:], conv1.stride[:], conv1.pad[:], conv1.bias_term) == (64, [7], [2], [3], False)
    assert list(layers["bn_conv1"].top) == list(layers["bn_conv1"].bottom) == ["conv1"]
    assert layers["bn_conv1"].batch_norm_param.use_global_stats and layers["bn_conv1"].batch_norm_param.eps == pytest.approx(1e-5)
    assert layers["scale_conv1"].scale_param.bias_term
    pool = layers["pool1"].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride, pool.pad) == (caffe_pb2.PoolingParameter.MAX, 3, 2, 1)
    assert list(layers["res3a_branch1"].convolution_param.stride) == [2]
    assert list(layers["res3a_branch2a"].convolution_param.stride) == [2]
    assert list(layers["res3b1_branch2a"].convolution_param.stride) == []
    for name, d in (("res2b_branch2b", 1), ("res3a_branch2b", 1), ("res4b22_branch2b", 2), ("res5c_branch2b", 4)):
        p = layers[name].convolution_param
        assert list(p.dilation) == ([d] if d > 1 else []) and list(p.pad) == [d] and not p.bias_term
    assert layers["res5c_branch2c"].convolution_param.num_output == 2048
    assert list(layers["res2a"].bottom) == ["res2a_branch1", "res2a_branch2c"]
    assert list(layers["res2b"].bottom) == ["res2a", "res2b_branch2c"]
    assert list(layers["res2b_relu"].bottom) == list(layers["res2b_relu"].top) == ["res2b"]
    assert layers["res2b"].eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
    fc = layers["fc1_voc12_c3"].convolution_param
    assert (fc.num_output, fc.kernel_size[:], fc.dilation[:], fc.pad[:], fc.bias_term) == (21, [3], [24], [24], True)
    assert list(layers["fc1_voc12_c0"].bottom) == ["res5c"]
    assert list(layers["fc1_voc12"].bottom) == [f"fc1_voc12_c{i}" for i in range(4)]


def test_single_branch_classifier_is_one_conv_named_after_the_set():
    net = deeplab_prototxt(resnet101(91, aspp=None), classifier_set="coco")
    layers = by_name(net)
    fc = layers["fc1_coco"]
    assert fc.type == "Convolution" and list(fc.bottom) == ["res5c"] and net.layer[-1].name == "fc1_coco"
    assert (fc.convolution_param.num_output, fc.convolution_param.kernel_size[:], fc.convolution_param.bias_term) == (91, [1], True)
    assert Counter(layer.type for layer in net.layer)["Eltwise"] == 33


def test_msc_graph_repeats_the_net_with_shared_params():
    config = resnet101(msc=True)
    net = deeplab_prototxt(config, input_size=(321, 321))
    single = deeplab_prototxt(resnet101(), input_size=(321, 321))
    layers = by_name(net)
    n = len(single.layer)
    assert len(net.layer) == 3 * n + 2 + 2 + 1
    data075, data05 = layers["data075"].interp_param, layers["data05"].interp_param
    assert (data075.shrink_factor, data075.zoom_factor, data075.height) == (4, 3, 0)
    assert (data05.shrink_factor, data05.zoom_factor, data05.HasField("zoom_factor")) == (2, 1, False)
    for suffix, data in (("res075", "data075"), ("res05", "data05")):
        assert list(layers[f"conv1_{suffix}"].bottom) == [data]
        for base in single.layer:
            copy = layers[f"{base.name}_{suffix}"]
            assert copy.type == base.type
            assert list(copy.top) == [f"{t}_{suffix}" for t in base.top]
            assert [p.name for p in copy.param] == [p.name for p in layers[base.name].param]
    assert [p.name for p in layers["res4b22_branch2b_res05"].param] == ["res4b22_branch2b_w"]
    assert [p.name for p in layers["fc1_voc12_c1_res075"].param] == ["fc1_voc12_c1_w", "fc1_voc12_c1_b"]
    assert [p.name for p in layers["bn_conv1"].param] == ["bn_conv1_mean", "bn_conv1_var", "bn_conv1_factor"]
    assert [p.name for p in layers["scale5c_branch2c_res075"].param] == ["scale5c_branch2c_w", "scale5c_branch2c_b"]
    for suffix in ("res075", "res05"):
        resized = layers[f"fc1_voc12_{suffix}_interp"]
        assert list(resized.bottom) == [f"fc1_voc12_{suffix}"]
        assert (resized.interp_param.height, resized.interp_param.width) == (41, 41)
    fusion = layers["fc_fusion"]
    assert net.layer[-1].name == "fc_fusion" and fusion.eltwise_param.operation == caffe_pb2.EltwiseParameter.MAX
    assert list(fusion.bottom) == ["fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05_interp"]

    opencv = deeplab_prototxt(config, flavour="opencv", input_size=(321, 321))
    cv_layers = by_name(opencv)
    assert [l.name for l in opencv.layer] == [l.name for l in net.layer]
    for name, size in (("data075", 241), ("data05", 161)):
        p = cv_layers[name].interp_param
        assert (p.height, p.width, p.shrink_factor, p.zoom_factor) == (size, size, 1, 1)
    differing = [a.name for a, b in zip(net.layer, opencv.layer) if a != b]
    assert differing == ["data075", "data05"]
    with pytest.raises(ValueError, match="flavour"):
        deeplab_prototxt(config, flavour="tf")


@pytest.mark.parametrize("size, expected", [(513, 65), (321, 41), (385, 49), (257, 33), (241, 31), (161, 21), (65, 9), (97, 13)])
def test_score_map_size_follows_caffe_arithmetic(size, expected):
    assert score_size(size, resnet101()) == expected


@pytest.mark.parametrize("hw, params, expected", [
    ((513, 513), {"shrink": 4, "zoom": 3}, (385, 385)),
    ((513, 321), {"shrink": 2}, (257, 161)),
    ((65, 65), {"shrink": 4, "zoom": 3}, (49, 49)),
    ((8, 10), {"zoom": 3}, (22, 28)),
    ((9, 9), {"height": 4, "width": 5}, (4, 5)),
    ((10, 10), {"shrink": 2, "pad_beg": -1, "pad_end": -1}, (4, 4)),
])
def test_interp_size_follows_the_deeplab_fork(hw, params, expected):
    from models import caffe_interp_size

    assert caffe_interp_size(*hw, **params) == expected


def test_prototxt_text_round_trips(tmp_path):
    config = make_config(msc=True)
    text = deeplab_prototxt_text(config, input_size=(97, 81), classifier_set="coco")
    parsed = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == deeplab_prototxt(config, input_size=(97, 81), classifier_set="coco")
    assert 'name: "fc1_coco_res05_interp"' in text and "dilation" in text
    path = write_prototxt(tmp_path / "x.prototxt", parsed)
    assert path.read_text() == text


# ------------------------------------------------------------------------------ caffemodels

ENCODINGS = [
    {},
    {"double_data": True},
    {"legacy_shapes": True},
    {"legacy_shapes": True, "double_data": True},
    {"unpacked": True},
    {"unpacked": True, "double_data": True},
    {"unpacked": True, "legacy_shapes": True},
]


def _stored(net: caffe_pb2.NetParameter, v1: bool = False) -> dict[str, list[np.ndarray]]:
    """Blobs as protobuf parses them: {layer: [arrays]} (shape, else legacy 4-D; data or double_data)."""
    out = {}
    for layer in (net.layers if v1 else net.layer):
        arrays = []
        for b in layer.blobs:
            values = np.array(b.double_data, np.float64) if len(b.double_data) else np.array(b.data, np.float32)
            shape = tuple(b.shape.dim) if b.HasField("shape") else (b.num, b.channels, b.height, b.width)
            arrays.append(values.reshape(shape))
        if arrays:
            out[layer.name] = arrays
    return out


def _assert_same_blobs(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, arrays in want.items():
        assert len(got[name]) == len(arrays), name
        for g, w in zip(got[name], arrays):
            assert g.shape == w.shape, name
            np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("options", ENCODINGS, ids=lambda o: "+".join(o) or "packed")
def test_caffemodel_parses_back_to_the_returned_blobs(options):
    net = deeplab_prototxt(make_config(blocks=(2, 1, 2, 1)))
    model = random_caffemodel(net, seed=3, **options)
    parsed = model.message()
    _assert_same_blobs(_stored(parsed), model.blobs)
    assert len(model.blobs) == 3 * (1 + 3 * 6 + 4) + 2  # conv/bn/scale of conv1, 6 blocks, 4 projections; 2 ASPP
    assert all(a.dtype == np.float32 for arrays in model.blobs.values() for a in arrays)
    layers = by_name(parsed)
    assert [layer.name for layer in parsed.layer] == [layer.name for layer in net.layer]  # the graph travels along
    for layer in net.layer:
        stripped = caffe_pb2.LayerParameter()
        stripped.CopyFrom(layers[layer.name])
        stripped.ClearField("blobs")
        assert stripped == layer
    blob = layers["res2a_branch2b"].blobs[0]
    assert blob.HasField("shape") != bool(options.get("legacy_shapes"))
    assert bool(len(blob.double_data)) == bool(options.get("double_data")) and bool(len(blob.data)) != bool(options.get("double_data"))
    if options.get("legacy_shapes"):
        assert model.blobs["bn_conv1"][0].shape == (1, 1, 1, 8) and model.blobs["bn_conv1"][2].shape == (1, 1, 1, 1)
    else:
        assert model.blobs["bn_conv1"][0].shape == (8,) and model.blobs["bn_conv1"][2].shape == (1,)
    assert model.blobs["res2a_branch2b"][0].shape == (8, 8, 3, 3)  # OIHW
    assert model.blobs["fc1_voc12_c1"][1].shape[-1] == 5
    if not options.get("unpacked"):
        # byte for byte what protobuf (hence Caffe) serialises: fields in number order, blobs before params
        assert parsed.SerializeToString() == model.data


def test_unpacked_floats_are_one_record_per_value():
    net = deeplab_prototxt(make_config())
    packed = random_caffemodel(net, seed=1)
    unpacked = random_caffemodel(net, seed=1, unpacked=True)
    _assert_same_blobs(unpacked.blobs, packed.blobs)
    assert unpacked.message() == packed.message()
    # each blob loses its packed key + length prefix and gains one key byte per value; the
    # size changes propagate into the blob's, the layer's varint length prefixes
    weight = packed.blobs["res2a_branch2b"][0]
    raw = weight.astype("<f4").tobytes()
    records = b"".join(b"\x2d" + raw[i:i + 4] for i in range(0, len(raw), 4))
    assert records in unpacked.data and raw not in unpacked.data and raw in packed.data
    n_values = sum(a.size for arrays in packed.blobs.values() for a in arrays)
    assert len(packed.data) < len(unpacked.data) < len(packed.data) + n_values
    double = random_caffemodel(net, seed=1, unpacked=True, double_data=True)
    records = b"".join(b"\x41" + v.tobytes() for v in weight.astype("<f8").ravel()[:3])
    assert records in double.data


def test_other_readers_agree(tmp_path):
    """converter.read's wire-level reader and h5py get back exactly what was written."""
    from converter.read import read_caffemodel, read_caffemodel_layers

    net = deeplab_prototxt(make_config(msc=True, aspp=None), classifier_set="coco")
    for i, options in enumerate(ENCODINGS):
        model = random_caffemodel(net, seed=i, **options)
        path = tmp_path / f"{i}.caffemodel"
        path.write_bytes(model.data)
        _assert_same_blobs(read_caffemodel(path), model.blobs)
    v1 = random_caffemodel(net, v1_layers=True)
    (tmp_path / "v1.caffemodel").write_bytes(v1.data)
    _assert_same_blobs(read_caffemodel(tmp_path / "v1.caffemodel"), v1.blobs)
    assert {layer.type for layer in read_caffemodel_layers(tmp_path / "v1.caffemodel")} == {"Convolution"}
    h5 = write_caffemodel_h5(tmp_path / "w.caffemodel.h5", model.blobs)
    _assert_same_blobs(dict(sorted(read_caffemodel(h5).items())), dict(sorted(model.blobs.items())))


def test_v1_layers_hold_only_the_convolutions():
    net = deeplab_prototxt(make_config())
    model = random_caffemodel(net, seed=5, v1_layers=True)
    parsed = model.message()
    assert not parsed.layer and len(parsed.layers) == 1 + 3 * 4 + 4 + 2
    assert {layer.type for layer in parsed.layers} == {caffe_pb2.V1LayerParameter.CONVOLUTION}
    _assert_same_blobs(_stored(parsed, v1=True), model.blobs)
    full = random_caffemodel(net, seed=5)
    assert model.blobs.keys() == {n for n, layer in by_name(net).items() if layer.type == "Convolution"}
    for name, arrays in model.blobs.items():
        _assert_same_blobs({name: arrays}, {name: full.blobs[name]})
    conv = {layer.name: layer for layer in parsed.layers}["res5a_branch2b"]
    assert list(conv.bottom) == ["res5a_branch2a"] and list(conv.convolution_param.dilation) == [4]
    assert parsed.SerializeToString() == model.data


def test_batchnorm_blobs_carry_a_scale_factor():
    net = deeplab_prototxt(make_config(blocks=(2, 1, 2, 1)))
    blobs = random_blobs(net, seed=0)
    bns = [layer.name for layer in net.layer if layer.type == "BatchNorm"]
    factors = np.array([blobs[name][2][0] for name in bns])
    assert np.all(factors != 1.0) and np.all((factors >= 0.5) & (factors <= 5.0)) and len(set(factors)) == len(bns)
    for name in bns:
        mean, var, s = blobs[name]
        assert s.shape == (1,) and mean.shape == var.shape == (blobs[name.replace("bn", "scale", 1)][0].size,)
        assert np.all(var / s[0] >= 0.5 * (1 - 1e-6)) and np.all(var / s[0] <= 2.0 * (1 + 1e-6))
    # a fixed factor multiplies the same statistics (same seed): stored = statistic * s in float32
    plain = random_blobs(net, seed=0, bn_scale_factor=1.0)
    scaled = random_blobs(net, seed=0, bn_scale_factor=2.5)
    for name in bns:
        assert scaled[name][2][0] == np.float32(2.5) and plain[name][2][0] == 1.0
        np.testing.assert_array_equal(scaled[name][0], plain[name][0] * np.float32(2.5))
        np.testing.assert_array_equal(scaled[name][1], plain[name][1] * np.float32(2.5))
        assert np.all(plain[name][1] > 0)
    convs = [layer.name for layer in net.layer if layer.type == "Convolution"]
    for name in convs:
        np.testing.assert_array_equal(scaled[name][0], plain[name][0])


def test_msc_copies_repeat_the_shared_blobs():
    net = deeplab_prototxt(make_config(msc=True))
    blobs = random_blobs(net, seed=4)
    base = {name for name in blobs if not name.endswith(("_res075", "_res05"))}
    assert set(blobs) == base | {f"{n}_{s}" for n in base for s in ("res075", "res05")}
    for name in base:
        for suffix in ("res075", "res05"):
            _assert_same_blobs({name: blobs[f"{name}_{suffix}"]}, {name: blobs[name]})
    lean = random_caffemodel(net, seed=4, include_msc_copies=False)
    assert set(lean.blobs) == base
    full = random_caffemodel(net, seed=4)
    _assert_same_blobs(_stored(full.message()), full.blobs)
    assert {layer.name for layer in lean.message().layer} == {layer.name for layer in net.layer}
    assert 2 * len(lean.data) < len(full.data) < 3 * len(lean.data)


def test_seed_makes_the_file_reproducible():
    net = deeplab_prototxt(make_config())
    assert random_caffemodel(net, seed=7).data == random_caffemodel(net, seed=7).data
    assert random_caffemodel(net, seed=7).data != random_caffemodel(net, seed=8).data


def test_h5_snapshot_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    blobs = random_blobs(deeplab_prototxt(make_config(aspp=None)), seed=2)
    path = write_caffemodel_h5(tmp_path / "x.caffemodel.h5", blobs)
    with h5py.File(path, "r") as h5:
        assert set(h5["data"].keys()) == set(blobs)
        for name, arrays in blobs.items():
            assert sorted(h5[f"data/{name}"].keys()) == [str(i) for i in range(len(arrays))]
            for i, array in enumerate(arrays):
                dataset = h5[f"data/{name}/{i}"]
                assert dataset.dtype == np.float32
                np.testing.assert_array_equal(dataset[()], array)


def test_make_synthetic_deeplab_writes_matching_files(tmp_path):
    config = make_config(msc=True)
    model = make_synthetic_deeplab(tmp_path / "m", config, seed=2, input_size=(97, 97), classifier_set="coco", name="fx")
    assert model.prototxt_path == tmp_path / "m" / "fx.prototxt"
    assert model.opencv_prototxt_path == tmp_path / "m" / "fx_opencv.prototxt"
    assert model.caffemodel_path == tmp_path / "m" / "fx.caffemodel"
    caffe = text_format.Parse(model.prototxt_path.read_text(), caffe_pb2.NetParameter())
    assert caffe == deeplab_prototxt(config, input_size=(97, 97), classifier_set="coco")
    opencv = text_format.Parse(model.opencv_prototxt_path.read_text(), caffe_pb2.NetParameter())
    assert opencv == deeplab_prototxt(config, flavour="opencv", input_size=(97, 97), classifier_set="coco")
    data = model.caffemodel_path.read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    _assert_same_blobs(_stored(net), model.blobs)
    assert data == caffemodel_bytes(caffe, random_blobs(caffe, seed=2))
    lean = make_synthetic_deeplab(tmp_path / "lean", config, seed=2, msc_copies=False)
    assert not any(name.endswith(("_res075", "_res05")) for name in lean.blobs)
    assert write_caffemodel(tmp_path / "w.caffemodel", caffe, model.blobs).keys() == model.blobs.keys()
    assert (tmp_path / "w.caffemodel").read_bytes() == data


# ---------------------------------------------------------------------------------- OpenCV

@pytest.mark.parametrize("msc", [False, True], ids=["single", "msc"])
def test_opencv_runs_the_opencv_flavour(tmp_path, msc):
    cv2 = pytest.importorskip("cv2")
    config = make_config(n_classes=5, blocks=(2, 1, 2, 1), msc=msc)
    model = make_synthetic_deeplab(tmp_path, config, seed=2, input_size=(65, 65))
    net = cv2.dnn.readNetFromCaffe(str(model.opencv_prototxt_path), str(model.caffemodel_path))
    net.setInput(photo(65))
    side = score_size(65, config)  # conv1 -> 33, ceil pool -> 17, res3 stride 2 -> 9
    assert side == 9
    if not msc:
        out = net.forward()
        assert out.shape == (1, 5, side, side)
    else:
        out, single = net.forward(["fc_fusion", "fc1_voc12"])
        assert out.shape == single.shape == (1, 5, side, side)
        assert np.all(out >= single) and np.any(out > single)  # max fusion over the three scales
    assert np.all(np.isfinite(out)) and 0.01 < out.std() < 1e3


@pytest.mark.slow
def test_resnet101_forward_in_opencv_is_moderate(tmp_path):
    """The full ResNet-101 with random weights stays O(1)-O(10) on a real photo, no inf/nan/zeros."""
    cv2 = pytest.importorskip("cv2")
    model = make_synthetic_deeplab(tmp_path, resnet101(), seed=0, input_size=(161, 161))
    size = model.caffemodel_path.stat().st_size
    assert 170e6 < size < 180e6  # the size of the release files
    assert sum(a.size for arrays in model.blobs.values() for a in arrays) * 4 < size
    net = cv2.dnn.readNetFromCaffe(str(model.opencv_prototxt_path), str(model.caffemodel_path))
    net.setInput(photo(161))
    names = ["res2c", "res3b3", "res4b22", "res5c", "fc1_voc12"]
    for name, out in zip(names, net.forward(names)):
        assert np.all(np.isfinite(out)), name
        assert 0.1 < np.abs(out).mean() < 20 and np.abs(out).max() < 1e3, name
    assert out.shape == (1, 21, 21, 21) and len(np.unique(out.argmax(1))) > 1


@pytest.mark.slow  # a subprocess that imports torch (via models.default_config)
def test_fixture_script(tmp_path):
    pytest.importorskip("torch")
    cmd = [sys.executable, str(REPO / "scripts" / "make_fixture_caffemodel.py"), "--blocks", "1,1,2,1",
           "--stem-channels", "8", "--classes", "3", "--no-aspp", "--msc", "--seed", "4", "--input-size", "65",
           "--out", str(tmp_path), "--name", "fx", "--h5"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    net = caffe_pb2.NetParameter.FromString((tmp_path / "fx.caffemodel").read_bytes())
    layers = by_name(net)
    assert layers["fc1_coco"].convolution_param.num_output == 3 and "res4b_branch2b_res05" in layers
    assert (tmp_path / "fx_opencv.prototxt").exists() and (tmp_path / "fx.caffemodel.h5").exists()
    assert "fx.caffemodel" in result.stdout
