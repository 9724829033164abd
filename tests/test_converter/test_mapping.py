"""converter.mapping: Caffe names -> PyTorch modules by rules, and BatchNorm folding."""

from __future__ import annotations

import numpy as np
import pytest

from deeplab_caffe.converter.mapping import Target, caffe_output_module, caffe_target, classifier_index, fold_batchnorm


@pytest.mark.parametrize(
    "name, target",
    [
        ("conv1", Target("backbone.stem.conv1.conv", "conv")),
        ("bn_conv1", Target("backbone.stem.conv1.bn", "bn")),
        ("scale_conv1", Target("backbone.stem.conv1.bn", "scale")),
        ("res2a_branch1", Target("backbone.res2.a.branch1.conv", "conv")),
        ("bn3b2_branch2a", Target("backbone.res3.b2.branch2a.bn", "bn")),
        ("scale4b22_branch2c", Target("backbone.res4.b22.branch2c.bn", "scale")),
        ("res5c_branch2b", Target("backbone.res5.c.branch2b.conv", "conv")),
        ("fc1_voc12_c3", Target("classifier.branches.3", "conv")),
        ("fc1_c0", Target("classifier.branches.0", "conv")),
        ("fc1_coco", Target("classifier.branches.0", "conv")),
        # DeepLab-VGG16: LargeFOV (v1) and ASPP-L (v2, branches numbered from 1; ${EXP} may be empty)
        ("conv1_1", Target("backbone.conv1_1", "conv")),
        ("conv5_3", Target("backbone.conv5_3", "conv")),
        ("fc6", Target("classifier.branches.0.fc6", "conv")),
        ("fc8_voc12", Target("classifier.branches.0.fc8", "conv")),
        ("fc7_4", Target("classifier.branches.3.fc7", "conv")),
        ("fc8_cocostuff_2", Target("classifier.branches.1.fc8", "conv")),
        ("fc8__3", Target("classifier.branches.2.fc8", "conv")),
        # martinkersner/train-DeepLab's LargeFOV deploy graphs
        ("fc8_exper/voc12", Target("classifier.branches.0.fc8", "conv")),
    ],
)
def test_names_map_by_rule(name, target):
    assert caffe_target(name) == target


@pytest.mark.parametrize("name", ["pool1", "res2a", "res2a_relu", "data", "loss", "res2a_branch3", "fc9", "bn2a",
                                  "fc6_0", "conv6_1", "relu6_1", "drop7"])
def test_layers_without_a_rule_map_to_nothing(name):
    assert caffe_target(name) is None


def test_classifier_index():
    assert classifier_index("fc1_voc12_c2") == 2
    assert classifier_index("fc1_voc12") == 0
    assert classifier_index("fc7") is None


@pytest.mark.parametrize(
    "name, layer_type, module",
    [
        ("res2a_branch2a", "Convolution", "backbone.res2.a.branch2a.conv"),
        ("scale2a_branch2a", "Scale", "backbone.res2.a.branch2a.bn"),
        ("bn2a_branch2a", "BatchNorm", None),
        ("res2a_branch2a_relu", "ReLU", None),
        ("res4b3_relu", "ReLU", "backbone.res4.b3"),
        ("pool1", "Pooling", "backbone.stem.pool1"),
        ("fc1_voc12", "Eltwise", "classifier"),
    ],
)
def test_output_modules_for_forward_parity(name, layer_type, module):
    assert caffe_output_module(name, layer_type) == module


def test_batchnorm_scale_factor_is_divided_out():
    mean, var, factor = np.array([2.0, -4.0]), np.array([8.0, 0.5]), 4.0
    folded = fold_batchnorm([mean * factor, var * factor, np.array([factor])], [np.array([1.5, 2.0]), np.array([0.1, -0.2])], 2)
    np.testing.assert_allclose(folded["running_mean"], [2.0, -4.0])
    np.testing.assert_allclose(folded["running_var"], [8.0, 0.5])
    np.testing.assert_allclose(folded["weight"], [1.5, 2.0])
    np.testing.assert_allclose(folded["bias"], [0.1, -0.2], rtol=1e-6)
    assert all(v.dtype == np.float32 for v in folded.values())


def test_zero_scale_factor_means_zero_statistics():
    folded = fold_batchnorm([np.array([3.0]), np.array([5.0]), np.array([0.0])], None, 1)
    assert folded["running_mean"].tolist() == [0.0] and folded["running_var"].tolist() == [0.0]
    assert folded["weight"].tolist() == [1.0] and folded["bias"].tolist() == [0.0]


def test_legacy_shaped_batchnorm_blobs_fold():
    legacy = [np.full((1, 1, 1, 3), 2.0), np.full((1, 1, 1, 3), 6.0), np.full((1, 1, 1, 1), 2.0)]
    folded = fold_batchnorm(legacy, [np.ones((1, 1, 1, 3)), np.zeros((1, 1, 1, 3))], 3)
    assert folded["running_mean"].tolist() == [1.0] * 3 and folded["running_var"].tolist() == [3.0] * 3
