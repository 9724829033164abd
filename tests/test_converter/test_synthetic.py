"""converter.synthetic + converter.saved_net: the official DeepLab graphs, what Caffe saves, every encoding, OpenCV runs them.

Expected graphs come from the official prototxts (``../shared/data/official/``), read with the
DeepLab fork's own schema: the synthetic writer must reproduce them layer for layer.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from google.protobuf import text_format
from skimage import data as skimage_data

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.saved_net import saved_net
from deeplab_caffe.converter.synthetic import (
    caffemodel_bytes,
    deeplab_prototxt,
    deeplab_prototxt_text,
    make_synthetic_deeplab,
    random_blobs,
    random_caffemodel,
    write_caffemodel,
    write_caffemodel_h5,
    write_prototxt,
)
from deeplab_caffe.models import score_map_size
from official import DEPLOY, MSC_TRAIN
from official_graphs import COCOSTUFF, VOC12, fork, official_net  # noqa: F401 (fork: a fixture)

REPO = Path(__file__).resolve().parents[2]


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


def by_name(net) -> dict:
    return {layer.name: layer for layer in net.layer}


def photo(size: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut), BGR minus the DeepLab mean, 1x3xHxW."""
    image = skimage_data.astronaut()[:, :, ::-1].astype(np.float32)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    image -= np.array([104.008, 116.669, 122.675], np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def model_layers(net) -> list:
    """The official train net without what depends on the label: the data layer (ImageSegData,
    tops ``data`` and ``label``) becomes the net input, label Interps, losses, accuracies go."""
    label_blobs, kept = {"label"}, []
    for layer in net.layer:
        if label_blobs & set(layer.bottom):
            label_blobs |= set(layer.top)
        elif layer.type != "ImageSegData":
            kept.append(layer)
    return kept


def assert_same_layers(ours: list, official: list, message_class) -> None:
    """Layer by layer: name, type, bottoms, tops, params (names, lr/decay mults) and every
    layer parameter, compared as the fork's messages; the first difference is shown as text."""
    assert [l.name for l in ours] == [l.name for l in official]
    for mine, theirs in zip(ours, official):
        mine = message_class.FromString(mine.SerializeToString())
        assert text_format.MessageToString(mine) == text_format.MessageToString(theirs), mine.name


# ------------------------------------------------------------------------------------- graph

@pytest.mark.parametrize("variables", [VOC12, COCOSTUFF], ids=["voc12", "cocostuff"])
def test_msc_graph_is_the_official_train_graph(fork, variables):
    official = official_net(MSC_TRAIN, fork.NetParameter, variables)
    config = resnet101(int(variables["NUM_LABELS"]), msc=True)
    net = deeplab_prototxt(config, input_size=(321, 321), classifier_set=variables["EXP"], name=variables["NET_ID"])
    expected = model_layers(official)
    assert len(expected) == 3 * 451 + 2 + 2 + 1  # three nets, the pyramid, two resizes, the fusion
    assert_same_layers(list(net.layer), expected, fork.LayerParameter)
    assert net.name == official.name == "deeplabv2_resnet101"
    assert list(net.input) == ["data"] and list(net.input_dim) == [1, 3, 321, 321]


def test_single_scale_graph_is_the_official_deploy_graph(fork):
    official = official_net(DEPLOY, fork.NetParameter)
    net = deeplab_prototxt(resnet101(), input_size=(321, 321))
    assert_same_layers(list(net.layer), list(official.layer), fork.LayerParameter)
    assert fork.NetParameter.FromString(net.SerializeToString()) == official  # input, input_dim, no name


def test_smaller_nets_keep_the_official_names(fork):
    """A reduced config writes a subset of the official layers with the same names, types and
    param specs; what is missing is exactly the blocks it does not have."""
    official = by_name(official_net(MSC_TRAIN, fork.NetParameter, VOC12))
    net = deeplab_prototxt(make_config(5, blocks=(2, 4, 4, 2), msc=True), input_size=(97, 97))
    for layer in net.layer:
        theirs = official[layer.name]
        assert layer.type == theirs.type, layer.name
        assert [(p.name, p.lr_mult, p.decay_mult) for p in layer.param] == \
               [(p.name, p.lr_mult, p.decay_mult) for p in theirs.param], layer.name
    ours = {layer.name for layer in net.layer}
    missing = {n for n in set(official) - ours if official[n].type == "Eltwise" and "_" not in n}
    assert missing == {"res2c", "res5c"} | {f"res4b{i}" for i in range(4, 23)}
    layers = by_name(net)
    assert list(layers["fc1_voc12_res05_c0"].bottom) == ["res5b_res05"]
    assert list(layers["res3a_branch1_res075"].bottom) == ["res2b_res075"]


def test_single_branch_classifier_is_one_conv_named_after_the_set():
    net = deeplab_prototxt(resnet101(91, aspp=None), classifier_set="coco")
    layers = by_name(net)
    fc = layers["fc1_coco"]
    assert fc.type == "Convolution" and list(fc.bottom) == ["res5c"] and net.layer[-1].name == "fc1_coco"
    assert (fc.convolution_param.num_output, fc.convolution_param.kernel_size[:], fc.convolution_param.bias_term) == (91, [1], True)
    assert [p.name for p in fc.param] == ["fc1_coco_w", "fc1_coco_b"]
    assert Counter(layer.type for layer in net.layer)["Eltwise"] == 33


def test_bn_eps_is_written_only_when_not_caffes_default():
    config = make_config()
    assert not any(l.batch_norm_param.HasField("eps") for l in deeplab_prototxt(config).layer)
    config["bn_eps"] = 1e-3
    eps = {l.batch_norm_param.eps for l in deeplab_prototxt(config).layer if l.type == "BatchNorm"}
    assert eps == {np.float32(1e-3)}


def test_opencv_flavour_sizes_the_shrinking_interps():
    """Every Interp with a shrink_factor gets the explicit height/width Caffe computes from the
    Caffe flavour's factors; nothing else differs."""
    from deeplab_caffe.models import caffe_interp_size

    config = resnet101(msc=True)
    caffe = deeplab_prototxt(config, input_size=(321, 289))
    opencv = deeplab_prototxt(config, flavour="opencv", input_size=(321, 289))
    assert [l.name for l in opencv.layer] == [l.name for l in caffe.layer]
    differing = [a.name for a, b in zip(caffe.layer, opencv.layer) if a != b]
    assert differing == ["data_res05", "data_res075", "fc1_voc12_res075_interp"]
    caffe_layers, opencv_layers = by_name(caffe), by_name(opencv)

    def caffe_size(name: str, bottom_hw: tuple[int, int]) -> tuple[int, int]:
        p = caffe_layers[name].interp_param
        return caffe_interp_size(*bottom_hw, shrink=p.shrink_factor, zoom=p.zoom_factor)

    data075 = caffe_size("data_res075", (321, 289))
    score075 = score_map_size(config, data075)
    for name, bottom_hw in (("data_res05", (321, 289)), ("data_res075", (321, 289)), ("fc1_voc12_res075_interp", score075)):
        p = opencv_layers[name].interp_param
        assert (p.height, p.width) == caffe_size(name, bottom_hw), name
        assert not p.HasField("shrink_factor") and not p.HasField("zoom_factor"), name
    assert caffe_size("fc1_voc12_res075_interp", score075) == score_map_size(config, (321, 289))
    with pytest.raises(ValueError, match="flavour"):
        deeplab_prototxt(config, flavour="tf")


@pytest.mark.parametrize("size, expected", [(513, 65), (321, 41), (385, 49), (257, 33), (241, 31), (161, 21), (65, 9), (97, 13)])
def test_score_map_size_follows_caffe_arithmetic(size, expected):
    assert score_map_size(resnet101(), (size, size)) == (expected, expected)


@pytest.mark.parametrize("hw, params, expected", [
    ((513, 513), {"shrink": 4, "zoom": 3}, (385, 385)),
    ((513, 321), {"shrink": 2}, (257, 161)),
    ((65, 65), {"shrink": 4, "zoom": 3}, (49, 49)),
    ((8, 10), {"zoom": 3}, (22, 28)),
    ((9, 9), {"height": 4, "width": 5}, (4, 5)),
    ((10, 10), {"shrink": 2, "pad_beg": -1, "pad_end": -1}, (4, 4)),
])
def test_interp_size_follows_the_deeplab_fork(hw, params, expected):
    from deeplab_caffe.models import caffe_interp_size

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


def _stored(net, v1: bool = False, names: set[str] | None = None) -> dict[str, list[np.ndarray]]:
    """Blobs as protobuf parses them: {layer: [arrays]} (shape, else legacy 4-D; data or double_data),
    of every layer or of the layers ``names``."""
    out = {}
    for layer in (net.layers if v1 else net.layer):
        if names is not None and layer.name not in names:
            continue
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


def _without_blobs(net) -> list:
    layers = []
    for layer in net.layer:
        copy = type(layer)()
        copy.CopyFrom(layer)
        copy.ClearField("blobs")
        layers.append(copy)
    return layers


@pytest.mark.parametrize("options", ENCODINGS, ids=lambda o: "+".join(o) or "packed")
def test_caffemodel_parses_back_to_the_returned_blobs(options):
    net = saved_net(deeplab_prototxt(make_config(blocks=(2, 1, 2, 1))))
    model = random_caffemodel(net, seed=3, **options)
    parsed = model.message()
    _assert_same_blobs(_stored(parsed), model.blobs)
    assert len(model.blobs) == 3 * (1 + 3 * 6 + 4) + 2  # conv/bn/scale of conv1, 6 blocks, 4 projections; 2 ASPP
    assert all(a.dtype == np.float32 for arrays in model.blobs.values() for a in arrays)
    assert _without_blobs(parsed) == list(net.layer)  # the graph travels along
    assert parsed.name == net.name and list(parsed.input) == ["data"]
    layers = by_name(parsed)
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
    from deeplab_caffe.converter.read import read_caffemodel, read_caffemodel_layers

    net = saved_net(deeplab_prototxt(make_config(msc=True, aspp=None), classifier_set="coco"))
    for i, options in enumerate(ENCODINGS):
        model = random_caffemodel(net, seed=i, **options)
        path = tmp_path / f"{i}.caffemodel"
        path.write_bytes(model.data)
        _assert_same_blobs(read_caffemodel(path), model.blobs)
    v1 = random_caffemodel(net, v1_layers=True)
    (tmp_path / "v1.caffemodel").write_bytes(v1.data)
    _assert_same_blobs(read_caffemodel(tmp_path / "v1.caffemodel"), v1.blobs)
    no_v1_enum = {"BatchNorm", "Scale"}
    assert {layer.type for layer in read_caffemodel_layers(tmp_path / "v1.caffemodel")} == {
        layer.type for layer in net.layer} - no_v1_enum
    h5 = write_caffemodel_h5(tmp_path / "w.caffemodel.h5", model.blobs)
    _assert_same_blobs(dict(sorted(read_caffemodel(h5).items())), dict(sorted(model.blobs.items())))


def test_v1_layers_hold_every_type_with_a_v1_enum():
    """BatchNorm and Scale have no V1 type enum and are left out; blobs only on the convolutions."""
    net = deeplab_prototxt(make_config())
    model = random_caffemodel(net, seed=5, v1_layers=True)
    parsed = model.message()
    assert not parsed.layer and len(parsed.layers) == sum(layer.type not in ("BatchNorm", "Scale") for layer in net.layer)
    assert {layer.type for layer in parsed.layers} == {caffe_pb2.V1LayerParameter.LayerType.Value(t) for t in (
        "CONVOLUTION", "RELU", "POOLING", "ELTWISE")}
    _assert_same_blobs(_stored(parsed, v1=True), model.blobs)
    full = random_caffemodel(net, seed=5)
    assert model.blobs.keys() == {n for n, layer in by_name(net).items() if layer.type == "Convolution"}
    for name, arrays in model.blobs.items():
        _assert_same_blobs({name: arrays}, {name: full.blobs[name]})
    conv = {layer.name: layer for layer in parsed.layers}["res5a_branch2b"]
    assert list(conv.bottom) == ["res5a_branch2a"] and list(conv.convolution_param.dilation) == [4]
    assert list(conv.param) == ["res5a_branch2b_0"] and list(conv.blobs_lr) == [1] and list(conv.weight_decay) == [1]
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
    """Sharing follows ``param { name }``: every copy (``res2a_branch1_res05``, ``fc1_voc12_res05_c0``)
    holds its 1x layer's arrays, as Caffe saves them; the lean file leaves the copies' blobs out."""
    net = deeplab_prototxt(make_config(msc=True))
    blobs = random_blobs(net, seed=4)
    single = random_blobs(deeplab_prototxt(make_config()), seed=4)
    _assert_same_blobs({n: blobs[n] for n in single}, single)  # the 1x net draws the same weights
    owner = {}
    for layer in net.layer:
        if layer.name in single:
            owner.update((p.name, layer.name) for p in layer.param)
    copies = {l.name: owner[l.param[0].name] for l in net.layer if l.param and l.name not in single}
    assert len(copies) == 2 * len(single) and copies["fc1_voc12_res05_c1"] == "fc1_voc12_c1"
    assert set(blobs) == set(single) | set(copies)
    for copy, base in copies.items():
        assert blobs[copy] is blobs[base]
    lean = random_caffemodel(saved_net(net), seed=4, include_msc_copies=False)
    assert set(lean.blobs) == set(single)
    full = random_caffemodel(saved_net(net), seed=4)
    _assert_same_blobs(_stored(full.message()), full.blobs)
    assert {layer.name for layer in lean.message().layer} == {layer.name for layer in saved_net(net).layer}
    assert 2 * len(lean.data) < len(full.data) < 3 * len(lean.data)


def test_seed_makes_the_file_reproducible():
    net = deeplab_prototxt(make_config())
    assert random_caffemodel(net, seed=7).data == random_caffemodel(net, seed=7).data
    assert random_caffemodel(net, seed=7).data != random_caffemodel(net, seed=8).data


def test_h5_snapshot_layout(tmp_path):
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


def test_make_synthetic_deeplab_writes_what_caffe_saves(tmp_path):
    config = make_config(msc=True)
    model = make_synthetic_deeplab(tmp_path / "m", config, seed=2, input_size=(97, 97), classifier_set="coco", name="fx")
    assert model.prototxt_path == tmp_path / "m" / "fx.prototxt"
    assert model.opencv_prototxt_path == tmp_path / "m" / "fx_opencv.prototxt"
    assert model.caffemodel_path == tmp_path / "m" / "fx.caffemodel"
    caffe = text_format.Parse(model.prototxt_path.read_text(), caffe_pb2.NetParameter())
    assert caffe == deeplab_prototxt(config, input_size=(97, 97), classifier_set="coco", name="fx")
    opencv = text_format.Parse(model.opencv_prototxt_path.read_text(), caffe_pb2.NetParameter())
    assert opencv == deeplab_prototxt(config, flavour="opencv", input_size=(97, 97), classifier_set="coco", name="fx")
    data = model.caffemodel_path.read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    _assert_same_blobs(_stored(net), model.blobs)
    assert _without_blobs(net) == list(saved_net(caffe, "TRAIN").layer)
    assert net.name == "fx" and list(net.input) == ["data"] and "Split" in {l.type for l in net.layer}
    assert data == caffemodel_bytes(saved_net(caffe), random_blobs(caffe, seed=2))
    lean = make_synthetic_deeplab(tmp_path / "lean", config, seed=2, msc_copies=False)
    assert not any(name.endswith(("_res075", "_res05")) or "_res05_" in name or "_res075_" in name for name in lean.blobs)
    assert write_caffemodel(tmp_path / "w.caffemodel", net, model.blobs).keys() == model.blobs.keys()
    assert (tmp_path / "w.caffemodel").read_bytes() == data


# ------------------------------------------------------------- train snapshots, fork schema

def _train_snapshot(fork, variables: dict, *, mat_write: bool, msc_copies: bool):
    """The official MSC train net as the fork's Solver snapshots it: TRAIN phase, splits, blobs,
    serialised with the fork's field numbers; optionally with a MatWrite layer on fc_fusion."""
    net = official_net(MSC_TRAIN, fork.NetParameter, variables)
    if mat_write:  # as the official test prototxt writes one (field 145: strings in the fork)
        text_format.Parse('layer { name: "fc1_mat" type: "MatWrite" bottom: "fc_fusion" mat_write_param '
                          '{ prefix: "features/fc8/" source: "list/val_id.txt" strip: 0 period: 1 } }',
                          net)
    saved = saved_net(net, "TRAIN")
    blobs = random_blobs(net, seed=1, include_msc_copies=msc_copies)
    return saved, blobs, caffemodel_bytes(saved, blobs)


@pytest.mark.parametrize("variables", [VOC12, COCOSTUFF], ids=["voc12", "cocostuff"])
def test_train_snapshot_in_the_fork_schema(fork, variables, tmp_path):
    from deeplab_caffe.converter.read import read_caffemodel

    saved, blobs, data = _train_snapshot(fork, variables, mat_write=True, msc_copies=False)
    parsed = fork.NetParameter.FromString(data)
    assert _without_blobs(parsed) == list(saved.layer) and parsed.name == "deeplabv2_resnet101"
    sample = {"conv1", "bn_conv1", "scale5c_branch2c", f"fc1_{variables['EXP']}_c3"}  # protobuf decodes float by float
    _assert_same_blobs(_stored(parsed, names=sample), {n: a for n, a in blobs.items() if n in sample})
    layers = by_name(parsed)
    assert layers["data"].type == "ImageSegData" and list(layers["data"].transform_param.scale_factors) == [0.5, 0.75, 1, 1.25, 1.5]
    assert list(layers["data"].top) == ["data", "label"] and list(layers["data_res05"].bottom) == ["data_data_0_split_0"]
    assert list(layers["accuracy"].seg_accuracy_param.ignore_label) == [255]
    assert layers["fc1_mat"].mat_write_param.prefix == "features/fc8/"
    assert len(blobs["fc1_voc12_c0" if variables is VOC12 else "fc1_cocostuff_c0"][1]) == int(variables["NUM_LABELS"])
    # fork-only fields survive our schema as unknown fields, and the wire-level reader sees every blob
    ours = caffe_pb2.NetParameter.FromString(data)
    assert [l.name for l in ours.layer] == [l.name for l in parsed.layer]
    assert ours.SerializeToString() == data
    path = tmp_path / "train_iter_20000.caffemodel"
    path.write_bytes(data)
    _assert_same_blobs(read_caffemodel(path), blobs)


@pytest.mark.slow  # ~530 MB: every weight three times, as in the released snapshots
def test_full_train_snapshot_holds_every_weight_three_times(fork):
    saved, blobs, data = _train_snapshot(fork, VOC12, mat_write=False, msc_copies=True)
    assert 500e6 < len(data) < 560e6
    parsed = fork.NetParameter.FromString(data)
    params = [l for l in parsed.layer if l.blobs]
    assert len(params) == 3 * 316 and sum(len(l.blobs) for l in params) == 3 * 632
    pairs = (("fc1_voc12_res05_c3", "fc1_voc12_c3"), ("bn5c_branch2c_res075", "bn5c_branch2c"))
    stored = _stored(parsed, names={n for pair in pairs for n in pair})
    for copy, base in pairs:
        _assert_same_blobs({copy: stored[copy]}, {copy: stored[base]})


@pytest.mark.slow  # converts the full ResNet-101 MSC twice
@pytest.mark.parametrize("with_prototxt", [False, True], ids=["stored-graph", "prototxt"])
def test_the_converter_reads_a_fork_train_snapshot(fork, tmp_path, with_prototxt):
    from deeplab_caffe.converter import convert
    from official import official_prototxt

    _, blobs, data = _train_snapshot(fork, VOC12, mat_write=True, msc_copies=False)
    path = tmp_path / "train_iter_20000.caffemodel"
    path.write_bytes(data)
    prototxt = official_prototxt(tmp_path, MSC_TRAIN, **VOC12) if with_prototxt else None
    conversion = convert(path, prototxt, n_classes=21)
    assert conversion.config["msc"] and conversion.config["n_classes"] == 21
    assert len(conversion.records) == sum(len(arrays) for arrays in blobs.values()) == 632
    assert {r.status for r in conversion.records} == {"mapped"}
    if not with_prototxt:  # what --verify runs: OpenCV on a file whose MatWrite (field 145) its schema rejects
        from deeplab_caffe.converter.verify import verification_images
        from deeplab_caffe.converter.verify import comparison_points, verify_with_opencv

        check = verify_with_opencv(conversion.model, conversion.graph, path, verification_images(("chelsea",), 65))
        assert check.passed, check.first_divergent
        # every mapped layer output of the three scales (247 a scale), then the model output
        assert len(check.rows) == len(comparison_points(conversion.graph)) + 1 == 3 * 247 + 1


# ---------------------------------------------------------------------------------- OpenCV

@pytest.mark.parametrize("msc", [False, True], ids=["single", "msc"])
def test_opencv_runs_the_opencv_flavour(tmp_path, msc):
    config = make_config(n_classes=5, blocks=(2, 1, 2, 1), msc=msc)
    model = make_synthetic_deeplab(tmp_path, config, seed=2, input_size=(65, 65))
    net = cv2.dnn.readNetFromCaffe(str(model.opencv_prototxt_path), str(model.caffemodel_path))
    net.setInput(photo(65))
    side = score_map_size(config, (65, 65))[0]  # conv1 -> 33, ceil pool -> 17, res3 stride 2 -> 9
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
    cmd = [sys.executable, str(REPO / "scripts" / "make_fixture_caffemodel.py"), "--blocks", "1,1,2,1",
           "--stem-channels", "8", "--classes", "3", "--no-aspp", "--msc", "--seed", "4", "--input-size", "65",
           "--out", str(tmp_path), "--name", "fx", "--h5"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    net = caffe_pb2.NetParameter.FromString((tmp_path / "fx.caffemodel").read_bytes())
    layers = by_name(net)
    assert layers["fc1_coco"].convolution_param.num_output == 3 and "res4b_branch2b_res05" in layers
    assert "data_input_0_split" in layers
    assert (tmp_path / "fx_opencv.prototxt").exists() and (tmp_path / "fx.caffemodel.h5").exists()
    assert "fx.caffemodel" in result.stdout
