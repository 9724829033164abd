"""converter.topology and converter.checks on the official DeepLab graphs (../shared/data/official).

The graphs are the published prototxts, not ours: the MSC train graph of the COCO-Stuff
repository (copies named ``res2a_branch1_res05`` but ``fc1_<set>_res05_c0``, label and loss
layers) and the TF port's single-scale deploy graph. Mutations of their text show that each
structural check compares the graph with the model rather than with itself.
"""

from __future__ import annotations

import re

import pytest

from deeplab_caffe import models
from deeplab_caffe.converter.checks import check_model
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.graph import derive_config, layers_from_net
from deeplab_caffe.converter.read import read_prototxt
from deeplab_caffe.converter.topology import analyse, evaluation_protocol
from official import DEPLOY, MSC_TRAIN, OFFICIAL, commented_out_after, official_prototxt, official_text


def analysed(path):
    return analyse(layers_from_net(read_prototxt(path)), path)


@pytest.fixture(scope="module")
def msc_voc(tmp_path_factory):
    return analysed(official_prototxt(tmp_path_factory.mktemp("official"), MSC_TRAIN, EXP="voc12", NUM_LABELS="21"))


def test_msc_copies_are_found_by_dataflow_wherever_the_suffix_sits(msc_voc):
    assert msc_voc.input == "data"
    assert [layer.name for layer in msc_voc.pyramid] == ["data_res05", "data_res075"]
    assert msc_voc.original["fc1_voc12_res05_c0"] == "fc1_voc12_c0"
    assert msc_voc.original["fc1_voc12_res075_c3"] == "fc1_voc12_c3"
    assert msc_voc.original["fc1_voc12_res075"] == "fc1_voc12"
    assert msc_voc.original["res4b22_branch2b_res05"] == "res4b22_branch2b"
    assert msc_voc.original["bn_conv1_res075"] == "bn_conv1"
    assert {k: layer.name for k, layer in msc_voc.score_interps.items()} == {
        1: "fc1_voc12_res05_interp", 2: "fc1_voc12_res075_interp"}
    assert msc_voc.output == "fc_fusion"
    assert msc_voc.ignored == ["data", "label_shrink", "loss", "accuracy", "loss_res1", "accuracy_res1", "loss_res075",
                               "accuracy_res075", "label_shrink16", "loss_res05", "accuracy_res05"]
    # 451 layers in the 1x net, each repeated once per scale
    assert len(msc_voc.unique_layers()) == 451
    assert len(msc_voc.original) == 2 * 451


@pytest.mark.parametrize("exp, n_classes", [("voc12", 21), ("coco", 91), ("cocostuff", 182), ("cocostuff", 183)])
def test_official_msc_graph_derives_resnet101_msc(tmp_path, exp, n_classes):
    topo = analysed(official_prototxt(tmp_path, MSC_TRAIN, EXP=exp, NUM_LABELS=str(n_classes)))
    config = derive_config(topo, "graph")
    expected = models.default_config(n_classes, msc=True)
    assert {k: v for k, v in config.items() if k not in ("msc", "freeze_bn")} == \
        {k: v for k, v in expected.items() if k not in ("msc", "freeze_bn")}
    # graph order of the pyramid: data_res05 (shrink 2) before data_res075 (shrink 4, zoom 3)
    assert config["msc"] == {"scales": [{"shrink": 2, "zoom": 1}, {"shrink": 4, "zoom": 3}]}


def test_checks_are_counted_per_unique_layer(msc_voc):
    deploy = analysed(OFFICIAL / DEPLOY)
    msc_checks = check_model(models.build_model(derive_config(msc_voc, "msc")), msc_voc, "msc")
    deploy_checks = check_model(models.build_model(derive_config(deploy, "deploy")), deploy, "deploy")
    count = lambda checks, kind: sum(c.kind == kind for c in checks)  # noqa: E731
    assert count(msc_checks, "hyper-parameter") == count(deploy_checks, "hyper-parameter") == 1137
    assert count(msc_checks, "msc-copy") == 902
    assert count(deploy_checks, "msc-copy") == 0
    # 451 1x layers + the fusion's inputs and operation (MSC) or the output (deploy)
    assert count(msc_checks, "topology") == 453
    assert count(deploy_checks, "topology") == 452
    # scale count; 4 per pyramid Interp; pads and the size at 321 and 513 per score Interp
    assert count(msc_checks, "interp") == 1 + 2 * 4 + 2 * 3
    assert all(c.ok for c in msc_checks + deploy_checks)


def _mutated(tmp_path, old: str, new: str, *, count: int = 1):
    text = official_text(MSC_TRAIN, EXP="voc12", NUM_LABELS="21")
    assert text.count(old) >= count, old
    path = tmp_path / "mutated.prototxt"
    path.write_text(text.replace(old, new, count))
    topo = analysed(path)
    return check_model(models.build_model(derive_config(topo, path)), topo, path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        # an ASPP branch never summed
        ('  bottom: "fc1_voc12_c3"\n  top: "fc1_voc12"', '  top: "fc1_voc12"',
         "layer fc1_voc12: inputs is ['classifier.branches.0', 'classifier.branches.1', 'classifier.branches.2'] in "
         "the graph but ['classifier.branches.0', 'classifier.branches.1', 'classifier.branches.2', "
         "'classifier.branches.3'] in the model"),
        # res2b's shortcut taken from inside res2a instead of its output
        ('\tbottom: "res2a"\n\tbottom: "res2b_branch2c"', '\tbottom: "res2a_branch2a"\n\tbottom: "res2b_branch2c"',
         "layer res2b: inputs is"),
        # the fusion adds instead of taking the max
        ('top: "fc_fusion"\n  name: "fc_fusion"\n  type: "Eltwise"\n  eltwise_param {\n    operation: MAX',
         'top: "fc_fusion"\n  name: "fc_fusion"\n  type: "Eltwise"\n  eltwise_param {\n    operation: SUM',
         "layer fc_fusion: operation is SUM in the graph but MAX in the model"),
        # the 0.75x scores resized by the wrong factor: no longer the 1x map's size
        ("zoom_factor: 4\n    shrink_factor: 3", "zoom_factor: 3\n    shrink_factor: 3",
         "layer fc1_voc12_res075_interp: output size at 321x321 (the 1x score map) is (31, 31) in the graph but (41, 41)"),
        # a 0.5x classifier copy that shares the weights of another branch
        ('  name: "fc1_voc12_res05_c1"\n  type: "Convolution"\n  bottom: "res5c_res05"\n  top: "fc1_voc12_res05_c1"\n'
         '  param {\n    name: "fc1_voc12_c1_w"',
         '  name: "fc1_voc12_res05_c1"\n  type: "Convolution"\n  bottom: "res5c_res05"\n  top: "fc1_voc12_res05_c1"\n'
         '  param {\n    name: "fc1_voc12_c2_w"', "layer fc1_voc12_res05_c1 shares params"),
        # a ReLU the model does not have: on branch2c before the sum (the block's own ReLU renamed away)
        ('\tbottom: "res2a"\n\ttop: "res2a"\n\tname: "res2a_relu"', '\tbottom: "res2a_branch2c"\n\ttop: "res2a_branch2c"\n\tname: "res2a_relu"',
         "layer res2a_relu: inputs is ['backbone.res2.a.branch2c.bn'] in the graph but ['(a value the model does not rectify)']"),
    ],
    ids=["aspp-branch-not-summed", "shortcut-miswired", "fusion-sum", "score-interp-size", "copy-shares-wrong-params",
         "relu-on-branch2c"],
)
def test_graph_mutations_are_refused(tmp_path, old, new, message):
    with pytest.raises(ConversionError, match=re.escape(message)):
        _mutated(tmp_path, old, new)


def test_the_official_vgg16_graph_is_analysed_as_vgg(tmp_path):
    """DeepLab v2 VGG16 ASPP-L: the data layer, label Interp, loss, SegAccuracy and Silence stay
    outside the model; the four fc6-fc8 branches end in the Eltwise sum."""
    path = official_prototxt(tmp_path, "cocostuff_deeplabv2_vgg16_train.prototxt", EXP="cocostuff", NUM_LABELS="182")
    topo = analysed(path)
    assert (topo.family, topo.input, topo.output, topo.pyramid) == ("vgg", "data", "fc8_cocostuff", [])
    assert set(topo.ignored) == {"data", "label_shrink", "loss", "accuracy", "silence"}


# ----------------------------------------------------------------------------- the released test nets

VOC_TEST = "deeplabv2_resnet101_voc12_test.prototxt"
VOC_TEST_SCALE1 = "deeplabv2_resnet101_voc12_test_scale1.prototxt"
COCOSTUFF_TEST = "cocostuff_deeplabv2_resnet101_test.prototxt"
ZOOM8 = "fc1_interp: Interp zoom 8 (bilinear, aligned corners)"
SEG_ACCURACY = "accuracy: SegAccuracy against label (ignore label 255)"


@pytest.mark.parametrize("name, variables, output, classes, pyramid, protocol", [
    (VOC_TEST, {}, "fc_fusion", 21, 2, f"{ZOOM8}, then {SEG_ACCURACY}"),
    (VOC_TEST_SCALE1, {}, "fc1_voc12", 21, 0, f"{ZOOM8}, then {SEG_ACCURACY}"),
    (COCOSTUFF_TEST, {"EXP": "cocostuff", "NUM_LABELS": "182"}, "fc_fusion", 182, 2,
     f"{ZOOM8}, then fc1_interp_argmax: ArgMax over axis 1, then fc1_mat: MatWrite of fc1_interp_argmax to ///fc8/"),
], ids=["voc12-msc", "voc12-scale1", "cocostuff-msc"])
def test_the_released_test_nets_keep_their_evaluation_outside_the_model(tmp_path, name, variables, output, classes,
                                                                         pyramid, protocol):
    """The official test nets end in ``fc1_interp`` (zoom 8) after the fusion or the classifier,
    then SegAccuracy or ArgMax + MatWrite: the model ends at the scores, the rest is reported."""
    topo = analysed(official_prototxt(tmp_path, name, **variables))
    assert (topo.output, len(topo.pyramid)) == (output, pyramid)
    assert derive_config(topo, name)["n_classes"] == classes
    assert evaluation_protocol(topo) == protocol
    assert "fc1_interp" in topo.ignored and "fc1_interp" not in topo.branch
    checks = check_model(models.build_model(derive_config(topo, name)), topo, name)
    assert checks and all(c.ok for c in checks)


def test_the_commented_out_evaluation_of_the_voc_test_net_is_recognised_when_live(tmp_path):
    """The VOC MSC test net with its commented-out ArgMax, MatWrite, DenseCRF, CRF ArgMax, CRF
    MatWrite and CRF SegAccuracy made live: each is post-processing, in graph order, with its
    parameters (the CRF's from ``dense_crf_param``)."""
    path = tmp_path / VOC_TEST
    text = official_text(VOC_TEST)
    path.write_text(text + commented_out_after(text, 'name: "fc1_interp"'))
    topo = analysed(path)
    assert [(layer.name, layer.type) for layer in topo.post_processing] == [
        ("fc1_interp", "Interp"), ("accuracy", "SegAccuracy"), ("fc1_interp_argmax", "ArgMax"), ("fc1_mat", "MatWrite"),
        ("crf", "DenseCRF"), ("crf_inf_argmax", "ArgMax"), ("crf_mat", "MatWrite"), ("crf_accuracy", "SegAccuracy")]
    assert evaluation_protocol(topo) == (
        f"{ZOOM8}, then {SEG_ACCURACY}, then fc1_interp_argmax: ArgMax over axis 1, then fc1_mat: MatWrite of "
        "fc1_interp to //fc1/, then crf: DenseCRF (10 iterations, positional w 4 xy std 1, bilateral w 5 xy std 21 "
        "rgb std 3), then crf_inf_argmax: ArgMax over axis 1, then crf_mat: MatWrite of crf_inf_argmax to //crf/, "
        "then crf_accuracy: SegAccuracy against label (ignore label 255)")
    assert topo.output == "fc_fusion"


@pytest.mark.parametrize("extra, message", [
    # a convolution on the upsampled scores: the model would have to run it
    ('layer { name: "refine" type: "Convolution" bottom: "fc1_interp" top: "refine" '
     'convolution_param { num_output: 21 kernel_size: 1 } }',
     "layer fc1_interp (Interp) reads the scores fused by fc_fusion but is not post-processing"),
    # a crop that does not follow the scores (it crops the input)
    ('layer { name: "crop" type: "Crop" bottom: "data" bottom: "label" top: "crop" }',
     "layer crop: a Crop layer fits only after the model's output"),
    # a learned upsampling after the scores: weights the model would need
    ('layer { name: "upscore" type: "Deconvolution" bottom: "fc_fusion" top: "upscore" '
     'convolution_param { num_output: 21 kernel_size: 16 stride: 8 } }',
     "layer upscore: unknown layer type 'Deconvolution'"),
], ids=["conv-after-fusion", "crop-of-the-input", "deconvolution-after-fusion"])
def test_what_follows_the_fusion_must_be_post_processing(tmp_path, extra, message):
    path = tmp_path / VOC_TEST
    path.write_text(official_text(VOC_TEST) + extra + "\n")
    with pytest.raises(ConversionError, match=re.escape(message)) as error:
        analysed(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["Crop", "Padding"])
def test_a_layer_type_the_model_lacks_fits_after_the_scores(tmp_path, kind):
    """DeepLab v1's test nets crop the upsampled scores with the fork's Padding layer: such a
    weightless crop (Padding, Crop) that follows the output is post-processing, reported with its
    parameters unread."""
    path = tmp_path / VOC_TEST
    path.write_text(official_text(VOC_TEST) + f'layer {{ name: "crop" type: "{kind}" bottom: "fc1_interp" top: "crop" }}\n'
                    'layer { name: "crop_argmax" type: "ArgMax" bottom: "crop" top: "crop_argmax" argmax_param { axis: 1 } }\n')
    topo = analysed(path)
    assert evaluation_protocol(topo) == (f"{ZOOM8}, then {SEG_ACCURACY}, then crop: {kind} (its parameters are not read "
                                         "here), then crop_argmax: ArgMax over axis 1")
