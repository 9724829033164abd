"""converter.synthetic: the official DeepLab-ResNet graph and its seeded random caffemodel."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import models
from caffe_proto import caffe_pb2
from converter.synthetic import deeplab_prototxt, make_synthetic_deeplab, score_size


def test_resnet101_graph_has_the_official_layers():
    net = deeplab_prototxt(models.default_config(21))
    types = Counter(layer.type for layer in net.layer)
    # 33 bottlenecks x 3 convs + 4 projections + conv1 = 104 backbone convs, + 4 ASPP branches
    assert types["Convolution"] == 108
    assert types["BatchNorm"] == types["Scale"] == 104
    assert types["Eltwise"] == 33 + 1
    assert types["ReLU"] == 1 + 33 * 3
    names = {layer.name: layer for layer in net.layer}
    for name in ("res4b22_branch2b", "bn4b22_branch2b", "scale5c_branch2c", "res3b3_relu", "res5a_branch1", "pool1"):
        assert name in names
    fc = names["fc1_voc12_c3"].convolution_param
    assert (fc.dilation[0], fc.pad[0], fc.kernel_size[0], fc.num_output) == (24, 24, 3, 21)
    assert names["res3a_branch2a"].convolution_param.stride[0] == 2
    assert names["res5b_branch2b"].convolution_param.dilation[0] == 4
    assert names["pool1"].pooling_param.pad == 1


def test_msc_graph_repeats_the_net_with_shared_params():
    net = deeplab_prototxt(models.default_config(21, msc=True), input_size=(321, 321))
    names = {layer.name: layer for layer in net.layer}
    assert names["data075"].interp_param.shrink_factor == 4 and names["data075"].interp_param.zoom_factor == 3
    assert names["data05"].interp_param.shrink_factor == 2
    assert names["res4b22_branch2b_res05"].param[0].name == names["res4b22_branch2b"].param[0].name
    resized = names["fc1_voc12_res075_interp"].interp_param
    assert (resized.height, resized.width) == (41, 41)
    assert names["fc_fusion"].eltwise_param.operation == caffe_pb2.EltwiseParameter.MAX
    opencv = {layer.name: layer for layer in deeplab_prototxt(models.default_config(21, msc=True), flavour="opencv",
                                                               input_size=(321, 321)).layer}
    assert (opencv["data075"].interp_param.height, opencv["data075"].interp_param.shrink_factor) == (241, 1)
    assert opencv["data05"].interp_param.height == 161


@pytest.mark.parametrize("size, expected", [(513, 65), (321, 41), (241, 31), (161, 21), (65, 9)])
def test_score_map_size_follows_caffe_arithmetic(size, expected):
    assert score_size(size, models.default_config(21)) == expected


def test_caffemodel_holds_exactly_the_returned_blobs(tmp_path):
    config = models.default_config(5, n_blocks=(1, 1, 2, 1), aspp_rates=(2, 4), stem_channels=8, msc=True)
    synthetic = make_synthetic_deeplab(tmp_path, config, seed=2)
    net = caffe_pb2.NetParameter.FromString(synthetic.caffemodel_path.read_bytes())
    stored = {layer.name: [np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in layer.blobs]
              for layer in net.layer if layer.blobs}
    assert stored.keys() == synthetic.blobs.keys()
    for name, arrays in synthetic.blobs.items():
        for got, want in zip(stored[name], arrays, strict=True):
            np.testing.assert_array_equal(got, want)
    factor = synthetic.blobs["bn_conv1"][2][0]
    assert factor != 1.0 and np.all(synthetic.blobs["bn_conv1"][1] / factor > 0)
    assert any(layer.type == "Pooling" for layer in net.layer)  # the graph travels with the weights

    lean = make_synthetic_deeplab(tmp_path / "lean", config, seed=2, msc_copies=False)
    assert not any(name.endswith(("_res075", "_res05")) for name in lean.blobs)
    assert lean.caffemodel_path.stat().st_size < synthetic.caffemodel_path.stat().st_size / 2


def test_opencv_runs_the_opencv_flavour(tmp_path):
    cv2 = pytest.importorskip("cv2")
    config = models.default_config(5, n_blocks=(1, 1, 2, 1), aspp_rates=(2, 4), stem_channels=8, msc=True)
    synthetic = make_synthetic_deeplab(tmp_path, config, seed=2, input_size=(65, 65))
    net = cv2.dnn.readNetFromCaffe(str(synthetic.opencv_prototxt_path), str(synthetic.caffemodel_path))
    net.setInput(np.random.default_rng(0).normal(0, 50, (1, 3, 65, 65)).astype(np.float32))
    out = net.forward()
    assert out.shape == (1, 5, 9, 9) and np.all(np.isfinite(out)) and out.std() > 0
