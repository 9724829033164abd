"""converter.conversion + converter.verify: synthetic DeepLab caffemodels -> PyTorch, proven against OpenCV."""

from __future__ import annotations

import cv2  # noqa: F401  (OpenCV is the reference these tests compare with: a broken install fails here)
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from deeplab_caffe import models
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter import ConversionError, read_caffemodel
from deeplab_caffe.converter.conversion import convert, load_graph
from deeplab_caffe.converter.read import read_prototxt
from deeplab_caffe.converter.topology import Topology
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab, write_caffemodel_h5
from deeplab_caffe.converter.verify import verify_with_opencv


def tiny_config(n_classes: int = 5, *, msc: bool = False, aspp=(2, 4)) -> dict:
    return models.default_config(n_classes, n_blocks=(2, 1, 4, 1), aspp_rates=aspp, msc=msc, stem_channels=8)


def photos(size: int = 65) -> dict[str, np.ndarray]:
    from deeplab_caffe.converter.verify import verification_images

    return verification_images(("astronaut", "coffee"), size)


def graph_of(synthetic) -> Topology:
    return load_graph(synthetic.caffemodel_path, synthetic.prototxt_path)[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic_deeplab(tmp_path_factory.mktemp("tiny"), tiny_config(), seed=3)


@pytest.fixture(scope="module")
def tiny_msc(tmp_path_factory):
    return make_synthetic_deeplab(tmp_path_factory.mktemp("msc"), tiny_config(msc=True), seed=4)


def _strip(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "freeze_bn"}


def test_config_is_derived_from_the_graph(tiny):
    conversion = convert(tiny.caffemodel_path, tiny.prototxt_path)
    assert _strip(conversion.config) == _strip(tiny_config())


def test_every_blob_is_accounted_for(tiny):
    conversion = convert(tiny.caffemodel_path, tiny.prototxt_path)
    n_blobs = sum(len(b) for b in read_caffemodel(tiny.caffemodel_path).values())
    assert len(conversion.records) == n_blobs
    assert {r.status for r in conversion.records} == {"mapped"}
    assert set(conversion.filled) == set(conversion.model.state_dict())


def test_forward_matches_opencv_layer_by_layer_on_real_photos(tiny):
    conversion = convert(tiny.caffemodel_path, tiny.prototxt_path)
    report = verify_with_opencv(conversion.model, graph_of(tiny), tiny.caffemodel_path, photos(), rtol=1e-5)
    assert report.passed, report.to_dict()["worst"]
    compared = {row.layer for row in report.rows}
    assert {"conv1", "scale_conv1", "pool1", "res2b_relu", "res4b3_relu", "fc1_voc12_c1", "fc1_voc12"} <= compared
    assert report.first_divergent is None and report.max_rel <= 1e-5


def test_msc_copies_are_shared_not_double_counted(tiny_msc):
    conversion = convert(tiny_msc.caffemodel_path, tiny_msc.prototxt_path)
    shared = [r for r in conversion.records if r.status == "shared"]
    mapped = [r for r in conversion.records if r.status == "mapped"]
    assert len(shared) == 2 * len(mapped)
    assert conversion.config["msc"] == {"scales": [{"shrink": 2, "zoom": 1}, {"shrink": 4, "zoom": 3}]}
    report = verify_with_opencv(conversion.model, graph_of(tiny_msc), tiny_msc.caffemodel_path, photos(97), rtol=1e-5)
    assert report.passed, report.to_dict()["worst"]
    assert {"fc1_voc12_res075", "res2b_relu_res05"} & {row.layer for row in report.rows}


def test_wrong_batchnorm_folding_is_caught_at_the_first_scale_layer(tiny, monkeypatch):
    from deeplab_caffe.converter import conversion as convert_module

    def fold_without_dividing(bn, scale, channels):
        return {"running_mean": bn[0].reshape(-1).astype(np.float32), "running_var": bn[1].reshape(-1).astype(np.float32),
                "weight": scale[0].reshape(-1).astype(np.float32), "bias": scale[1].reshape(-1).astype(np.float32)}

    monkeypatch.setattr(convert_module, "fold_batchnorm", fold_without_dividing)
    conversion = convert(tiny.caffemodel_path, tiny.prototxt_path)
    report = verify_with_opencv(conversion.model, graph_of(tiny), tiny.caffemodel_path, photos(), rtol=1e-5)
    assert not report.passed
    assert report.first_divergent == "scale_conv1"


def test_graph_stored_in_the_caffemodel_is_enough(tiny):
    with_prototxt = convert(tiny.caffemodel_path, tiny.prototxt_path)
    alone = convert(tiny.caffemodel_path)
    assert alone.config == with_prototxt.config
    x = torch.randn(1, 3, 49, 49)
    assert torch.equal(alone.model(x), with_prototxt.model(x))


def test_hdf5_weights_convert_like_the_binary_file(tiny, tmp_path):
    h5 = tmp_path / "tiny.caffemodel.h5"
    write_caffemodel_h5(h5, read_caffemodel(tiny.caffemodel_path))
    a = convert(tiny.caffemodel_path, tiny.prototxt_path)
    b = convert(h5, tiny.prototxt_path)
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key
    with pytest.raises(ConversionError, match=r"tiny\.caffemodel\.h5: HDF5 weights carry no layer graph"):
        convert(h5)


def test_coco_init_single_classifier(tmp_path):
    config = models.default_config(91, n_blocks=(1, 1, 2, 1), aspp_rates=None, stem_channels=8)
    synthetic = make_synthetic_deeplab(tmp_path, config, seed=1, classifier_set="coco")
    conversion = convert(synthetic.caffemodel_path, n_classes=91)
    assert conversion.config["classifier"] == {"branches": [{"kernel": 1, "dilation": 1, "pad": 0, "bias": True}]}
    report = verify_with_opencv(conversion.model, load_graph(synthetic.caffemodel_path, None)[0],
                                synthetic.caffemodel_path, photos(), rtol=1e-5)
    assert report.passed, report.to_dict()["worst"]


# ----------------------------------------------------------------------------------- bad input


def _edit_caffemodel(src, dst, edit) -> None:
    net = caffe_pb2.NetParameter.FromString(src.read_bytes())
    edit(net)
    dst.write_bytes(net.SerializeToString())


def test_wrong_class_count_is_named(tiny):
    with pytest.raises(ConversionError, match=r"classifier has 5 classes, expected 21"):
        convert(tiny.caffemodel_path, tiny.prototxt_path, n_classes=21)


def test_missing_blobs_are_named(tiny, tmp_path):
    path = tmp_path / "missing.caffemodel"

    def drop(net):
        keep = [layer for layer in net.layer if layer.name != "res3a_branch2b"]
        del net.layer[:]
        net.layer.extend(keep)

    _edit_caffemodel(tiny.caffemodel_path, path, drop)
    with pytest.raises(ConversionError, match=r"missing\.caffemodel: no blobs for the model's backbone\.res3\.a\.branch2b\.conv\.weight"):
        convert(path, tiny.prototxt_path)


def test_extra_blobs_are_named(tiny, tmp_path):
    path = tmp_path / "extra.caffemodel"

    def add(net):
        layer = net.layer.add(name="fc8_extra", type="InnerProduct")
        layer.blobs.add().data.extend([1.0, 2.0])

    _edit_caffemodel(tiny.caffemodel_path, path, add)
    with pytest.raises(ConversionError, match=r"extra\.caffemodel: layer fc8_extra is not in the prototxt"):
        convert(path, tiny.prototxt_path)
    with pytest.raises(ConversionError, match=r"unknown layer type 'InnerProduct'"):
        convert(path)


def test_prototxt_that_does_not_match_the_weights(tiny, tmp_path):
    other = make_synthetic_deeplab(tmp_path, tiny_config(n_classes=5, aspp=(2, 4, 6)), seed=3)
    with pytest.raises(ConversionError, match=r"tiny.*\.caffemodel: layer fc1_voc12_c2 is not in the prototxt|no blobs for the model's classifier\.branches\.2"):
        convert(tiny.caffemodel_path, other.prototxt_path)
    wider = make_synthetic_deeplab(tmp_path / "w", models.default_config(5, n_blocks=(2, 1, 4, 1), aspp_rates=(2, 4), stem_channels=16), seed=3)
    with pytest.raises(ConversionError, match=r"conv1\[0\]: shape \(8, 3, 7, 7\) but the model's backbone\.stem\.conv1\.conv\.weight is \(16, 3, 7, 7\)"):
        convert(tiny.caffemodel_path, wider.prototxt_path)


def test_unknown_layer_type_is_named(tiny, tmp_path):
    net = read_prototxt(tiny.prototxt_path)
    layer = net.layer.add(name="upscore", type="Deconvolution", bottom=["fc1_voc12"], top=["upscore"])
    path = tmp_path / "deconv.prototxt"
    path.write_text(text_format.MessageToString(net))
    with pytest.raises(ConversionError, match=r"deconv\.prototxt: layer upscore: unknown layer type 'Deconvolution'"):
        convert(tiny.caffemodel_path, path)
    assert layer.name == "upscore"


def test_hyperparameter_mismatch_is_named(tiny, tmp_path):
    net = read_prototxt(tiny.prototxt_path)
    for layer in net.layer:
        if layer.name == "res4b1_branch2b":
            layer.convolution_param.ClearField("dilation")
            layer.convolution_param.dilation.append(3)
            layer.convolution_param.ClearField("pad")
            layer.convolution_param.pad.append(3)
    path = tmp_path / "dil.prototxt"
    path.write_text(text_format.MessageToString(net))
    with pytest.raises(ConversionError, match=r"dil\.prototxt: layer res4b1_branch2b: pad is 3 in the graph but 2 in the model"):
        convert(tiny.caffemodel_path, path)


def test_nan_weights_are_named(tiny, tmp_path):
    path = tmp_path / "nan.caffemodel"

    def poison(net):
        for layer in net.layer:
            if layer.name == "scale2b_branch2a":
                layer.blobs[0].data[1] = float("nan")

    _edit_caffemodel(tiny.caffemodel_path, path, poison)
    with pytest.raises(ConversionError, match=r"nan\.caffemodel: layer scale2b_branch2a blob 0 \(8,\) holds 1 NaN and 0 Inf values"):
        convert(path, tiny.prototxt_path)
    allowed = convert(path, tiny.prototxt_path, allow_nonfinite=True)
    assert torch.isnan(allowed.state_dict["backbone.res2.b.branch2a.bn.weight"]).sum() == 1


def test_msc_copy_that_differs_is_named(tiny_msc, tmp_path):
    path = tmp_path / "diverged.caffemodel"

    def change(net):
        for layer in net.layer:
            if layer.name == "res2a_branch2a_res05":
                layer.blobs[0].data[0] += 1.0

    _edit_caffemodel(tiny_msc.caffemodel_path, path, change)
    with pytest.raises(ConversionError, match=r"layer res2a_branch2a_res05 blob 0 differs from the shared res2a_branch2a blob 0"):
        convert(path, tiny_msc.prototxt_path)


@pytest.mark.slow
def test_full_resnet101_matches_opencv_within_1e5(tmp_path):
    config = models.default_config(21)
    synthetic = make_synthetic_deeplab(tmp_path, config, seed=0)
    conversion = convert(synthetic.caffemodel_path, synthetic.prototxt_path, n_classes=21)
    assert sum(p.numel() for p in conversion.model.parameters()) == 44_048_532
    report = verify_with_opencv(conversion.model, graph_of(synthetic), synthetic.caffemodel_path, photos(161), rtol=1e-5)
    assert report.passed, report.to_dict()["worst"]
    # per photo: 108 convolutions, 104 Scale (BN+Scale) outputs, pool1, 33 block ReLUs, the ASPP sum, the output
    assert len(report.rows) == 2 * (108 + 104 + 1 + 33 + 1 + 1)


def test_msc_file_without_copies_converts_and_verifies(tmp_path):
    synthetic = make_synthetic_deeplab(tmp_path, tiny_config(msc=True), seed=5, msc_copies=False)
    conversion = convert(synthetic.caffemodel_path, synthetic.prototxt_path)
    assert {r.status for r in conversion.records} == {"mapped"}
    report = verify_with_opencv(conversion.model, graph_of(synthetic), synthetic.caffemodel_path, photos(97), rtol=1e-5)
    assert report.passed, report.to_dict()["worst"]
