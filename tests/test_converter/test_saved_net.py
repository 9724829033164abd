"""converter.saved_net: the graph Caffe saves (FilterNet, InsertSplits, the phase), checked on the official graphs.

Split names follow Caffe's rule ``<blob>_<last producer>_<top index>_split[_<j>]``; the exact
names below are that rule applied by hand to the official train prototxt.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import text_format

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.saved_net import filter_net, insert_splits, saved_net, upgrade_net_input
from official import DEPLOY, MSC_TRAIN
from official_graphs import VOC12, fork, official_net  # noqa: F401 (fork: a fixture)


def by_name(net) -> dict:
    return {layer.name: layer for layer in net.layer}


def test_insert_splits_on_the_official_train_graph(fork):
    """Caffe's names: ``<blob>_<last producer>_<top index>_split[_<j>]``, consumers in layer order."""
    official = official_net(MSC_TRAIN, fork.NetParameter, VOC12)
    split = insert_splits(filter_net(official, "TRAIN"))
    layers = by_name(split)
    data = layers["data_data_0_split"]
    assert list(data.bottom) == ["data"] and data.type == "Split"
    assert list(data.top) == [f"data_data_0_split_{j}" for j in range(3)]
    assert [list(layers[n].bottom) for n in ("data_res05", "data_res075", "conv1")] == [[t] for t in data.top]
    label = layers["label_data_1_split"]  # ImageSegData's second top
    assert [list(layers[n].bottom) for n in ("label_shrink", "label_shrink16")] == [[t] for t in label.top]
    # in-place chains: the last writer of the name produces it
    assert list(layers["pool1_pool1_0_split"].top) == ["pool1_pool1_0_split_0", "pool1_pool1_0_split_1"]
    assert list(layers["res2b"].bottom) == ["res2a_res2a_relu_0_split_1", "res2b_branch2c"]
    assert list(layers["res2b_branch2a"].bottom) == ["res2a_res2a_relu_0_split_0"]
    assert [list(layers[f"fc1_voc12_c{i}"].bottom) for i in range(4)] == \
           [[f"res5c_res5c_relu_0_split_{i}"] for i in range(4)]
    assert list(layers["res5c_res075_res5c_relu_res075_0_split"].bottom) == ["res5c_res075"]
    assert list(layers["fc_fusion"].bottom) == ["fc1_voc12_fc1_voc12_0_split_0",  # also read by loss_res1, accuracy_res1
                                                "fc1_voc12_res075_interp_fc1_voc12_res075_interp_0_split_0",
                                                "fc1_voc12_res05_interp"]  # read once (loss_res05 reads fc1_voc12_res05)
    assert list(layers["fc1_voc12_res05_interp"].bottom) == ["fc1_voc12_res05_fc1_voc12_res05_0_split_0"]
    assert len(layers["label_shrink_label_shrink_0_split"].top) == 6  # three losses, three accuracies
    _check_split_invariants(filter_net(official, "TRAIN"), split)


def _reads_per_version(net) -> Counter:
    """How often each written version of a blob is read (in-place layers write a new version)."""
    version, reads = {name: ("input", name) for name in net.input}, Counter()
    for i, layer in enumerate(net.layer):
        reads.update(version[b] for b in layer.bottom)
        version.update((t, (i, t)) for t in layer.top)
    return reads


def _check_split_invariants(net, split) -> None:
    """Each version read more than once gets one split, right after its producer; afterwards
    every version is read once; reading each split top as the split's bottom gives ``net`` back."""
    splits = [i for i, layer in enumerate(split.layer) if layer.type == "Split"]
    assert len(splits) == sum(1 for n in _reads_per_version(net).values() if n > 1)
    assert set(_reads_per_version(split).values()) == {1}
    for i in splits:
        producer = next(l for l in reversed(split.layer[:i]) if l.type != "Split")
        assert split.layer[i].bottom[0] in producer.top or split.layer[i].bottom[0] in split.input
    source = {t: split.layer[i].bottom[0] for i in splits for t in split.layer[i].top}
    restored = []
    for layer in split.layer:
        if layer.type != "Split":
            restored.append(type(layer)())
            restored[-1].CopyFrom(layer)
            restored[-1].bottom[:] = [source.get(b, b) for b in layer.bottom]
    assert restored == list(net.layer)


def test_filter_net_follows_the_include_rules(fork):
    official = official_net(MSC_TRAIN, fork.NetParameter, VOC12)
    train_only = {l.name for l in official.layer if any(r.HasField("phase") for r in l.include)}
    assert train_only == {"data", "loss", "loss_res1", "loss_res075", "loss_res05"}
    assert filter_net(official, "TRAIN").layer[:] == official.layer[:]
    test = filter_net(official, "TEST")
    assert [l.name for l in test.layer] == [l.name for l in official.layer if l.name not in train_only]
    with pytest.raises(ValueError, match="unknown bottom blob 'data' .layer 'data_res05', bottom index 0."):
        insert_splits(test)  # the train net has no data in the TEST phase


def test_filter_net_levels_stages_and_exclude_rules():
    net = text_format.Parse("""
        state { phase: TEST level: 2 stage: "a" }
        layer { name: "all" }
        layer { name: "train" include { phase: TRAIN } }
        layer { name: "not_test" exclude { phase: TEST } }
        layer { name: "level_ok" include { min_level: 1 max_level: 2 } }
        layer { name: "level_low" include { max_level: 1 } }
        layer { name: "stage_a" include { stage: "a" } }
        layer { name: "stage_b" include { stage: "b" } include { phase: TEST stage: "a" } }
        layer { name: "not_a" include { not_stage: "a" } }
        layer { name: "either" include { phase: TRAIN } include { phase: TEST } }
    """, caffe_pb2.NetParameter())
    assert [l.name for l in filter_net(net).layer] == ["all", "level_ok", "stage_a", "stage_b", "either"]
    assert [l.name for l in filter_net(net, "TRAIN").layer] == ["all", "train", "not_test", "level_ok", "stage_a", "either"]
    both = text_format.Parse('layer { name: "x" include { phase: TEST } exclude { phase: TRAIN } }', caffe_pb2.NetParameter())
    with pytest.raises(ValueError, match="either include rules or exclude rules"):
        filter_net(both)
    with pytest.raises(ValueError, match="TRAIN or TEST"):
        filter_net(net, "VAL")


def test_insert_splits_moves_a_loss_weight_onto_the_split():
    """A top with a loss weight counts as one more use: the split keeps the weight on its top 0
    (unread) and the producer loses it, as ``InsertSplits`` does."""
    net = text_format.Parse("""
        input: "x"
        layer { name: "a" type: "ReLU" bottom: "x" top: "y" loss_weight: 0.5 }
        layer { name: "b" type: "ReLU" bottom: "y" top: "z" }
    """, caffe_pb2.NetParameter())
    split = insert_splits(net)
    assert [l.name for l in split.layer] == ["a", "y_a_0_split", "b"]
    a, s, b = split.layer
    assert list(a.loss_weight) == [] and list(s.loss_weight) == [0.5, 0.0]
    assert list(s.top) == ["y_a_0_split_0", "y_a_0_split_1"] and list(b.bottom) == ["y_a_0_split_1"]
    assert list(split.input) == ["x"]  # a net input read once needs no split


def test_saved_net_is_what_the_fork_and_bvlc_write(fork):
    """The official deploy net saved in TEST: the fork keeps ``input: "data"`` (names only), BVLC
    makes an ``Input`` layer named ``input`` and drops BatchNorm's params; both set the phase."""
    deploy = official_net(DEPLOY, fork.NetParameter)
    saved = saved_net(deploy, "TEST")
    assert saved.HasField("name") and saved.name == ""  # Caffe sets it, even empty
    assert list(saved.input) == ["data"] and not saved.input_dim and not saved.input_shape
    assert all(l.HasField("phase") and l.phase == 1 for l in saved.layer)
    assert [l.phase for l in saved_net(deploy).layer] == [0] * len(saved.layer)
    split = insert_splits(deploy)
    for ours, layer in zip(saved.layer, split.layer):
        layer.phase = 1
        assert ours == layer

    bvlc = saved_net(deploy, "TEST", caffe="bvlc")
    assert not bvlc.input and not bvlc.input_dim
    assert (bvlc.layer[0].name, bvlc.layer[0].type, list(bvlc.layer[0].top)) == ("input", "Input", ["data"])
    assert [l.name for l in bvlc.layer[1:]] == [l.name for l in saved.layer]
    for ours, theirs in zip(saved.layer, bvlc.layer[1:]):
        if ours.type == "BatchNorm":
            assert len(ours.param) == 3 and not theirs.param
            ours.ClearField("param")
        assert ours == theirs
    with pytest.raises(ValueError, match="fork' or 'bvlc"):
        saved_net(deploy, caffe="caffe2")


def test_a_net_input_read_twice_is_split_as_the_input_layers_top():
    net = text_format.Parse("""
        input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5
        layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
        layer { name: "b" type: "ReLU" bottom: "data" top: "b" }
    """, caffe_pb2.NetParameter())
    fork_saved, bvlc = saved_net(net), saved_net(net, caffe="bvlc")
    assert [l.name for l in fork_saved.layer] == ["data_input_0_split", "a", "b"]
    assert [l.name for l in bvlc.layer] == ["input", "data_input_0_split", "a", "b"]
    for saved in (fork_saved, bvlc):
        layers = {l.name: l for l in saved.layer}
        assert list(layers["data_input_0_split"].top) == ["data_input_0_split_0", "data_input_0_split_1"]
        assert [list(layers[n].bottom) for n in "ab"] == [["data_input_0_split_0"], ["data_input_0_split_1"]]


def test_upgrade_net_input_keeps_a_shapeless_input_out():
    upgraded = upgrade_net_input(text_format.Parse('input: "data" input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }',
                                                   caffe_pb2.NetParameter()))
    assert [(l.name, l.type, list(l.top)) for l in upgraded.layer] == [("input", "Input", ["data"])]
    assert not upgraded.input and not upgraded.input_shape  # our schema has no input_param: the shape goes
    bare = text_format.Parse('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }', caffe_pb2.NetParameter())
    assert [l.name for l in upgrade_net_input(bare).layer] == ["r"] and not upgrade_net_input(bare).input


GOLDENS = sorted((Path(__file__).resolve().parents[1] / "data" / "caffe_goldens").glob("*/net.caffemodel"))


def _structure(layer) -> object:
    """A layer without what one side cannot read: blobs, Interp parameters (field 147 in the
    reference Caffe, 143 here) and unknown fields (its Input layer's ``input_param``)."""
    copy = caffe_pb2.LayerParameter()
    copy.CopyFrom(layer)
    for name in ("blobs", "interp_param"):
        copy.ClearField(name)
    copy.DiscardUnknownFields()
    return copy


@pytest.mark.parametrize("caffemodel", GOLDENS or [None], ids=lambda p: p.parent.name if p else "none")
def test_saved_net_is_what_real_caffe_saved(caffemodel):
    """The reference Caffe's ``net.save`` (tests/data/caffe_goldens) against ``saved_net`` of the
    prototxt it was given: same layers, Split layers, bottoms, tops, phase, params."""
    if caffemodel is None:  # the goldens are committed: their absence is a broken checkout, not a skip
        pytest.fail("no golden files in tests/data/caffe_goldens (scripts/make_caffe_goldens.py makes them)")
    meta = json.loads((caffemodel.parent / "meta.json").read_text())
    prototxt = text_format.Parse((caffemodel.parent / "net.prototxt").read_text(), caffe_pb2.NetParameter(),
                                 allow_unknown_field=True)  # the Input layer's input_param
    expected = saved_net(prototxt, meta["phase"], caffe="bvlc")
    saved = caffe_pb2.NetParameter.FromString(caffemodel.read_bytes())
    assert saved.name == expected.name and not saved.input
    assert [_structure(l) for l in saved.layer] == [_structure(l) for l in expected.layer]
    assert any(l.type == "Split" for l in saved.layer)
