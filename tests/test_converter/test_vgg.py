"""DeepLab-VGG16 (v1 LargeFOV, v2 ASPP-L) and Caffe's old V1 ``layers`` format.

Held against files and outputs made independently of this code:

- ``tests/data/caffe_goldens_vgg`` (``scripts/make_caffe_goldens_vgg.py`` under real Caffe): a
  LargeFOV net in V1 format whose prototxt and V1 caffemodel real Caffe loads (upgrading them
  itself), the same weights as Caffe's ``net.save`` wrote them, and the official v2 VGG16
  ASPP-L graph reduced; Caffe's output of every layer;
- the official ``cocostuff_deeplabv2_vgg16_train.prototxt`` (../shared/data/official), full size;
- OpenCV's Caffe importer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from deeplab_caffe import models
from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.cli import main
from deeplab_caffe.converter.conversion import convert
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.graph import layers_from_net
from deeplab_caffe.converter.read import read_caffemodel, read_caffemodel_layers, read_prototxt
from deeplab_caffe.converter.saved_net import saved_net
from deeplab_caffe.converter.synthetic import random_blobs, vgg_prototxt, write_prototxt
from deeplab_caffe.converter.verify import (FINAL, ForwardReport, verification_images, verify_with_opencv,
                                            verify_with_reference)
from deeplab_caffe.converter.write import v1_net, write_caffemodel
from golden_files import assert_remade_like_committed
from official import OFFICIAL, official_text

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "data" / "caffe_goldens_vgg"
RTOL = 1e-5
LARGEFOV, ASPP = GOLDENS / "largefov_v1", GOLDENS / "vgg16_aspp_cocostuff"
VGG_TRAIN = "cocostuff_deeplabv2_vgg16_train.prototxt"
#: (golden folder, caffemodel file): the V1 file, and what Caffe saved after upgrading it
CASES = [(LARGEFOV, "net_v1.caffemodel"), (LARGEFOV, "net.caffemodel"), (ASPP, "net.caffemodel")]
#: a regenerated golden against the committed one, max |made - committed| / max |committed| per
#: array (``golden_files``). Measured 2026-12-06 (docs/ci.md, "Golden files on another CPU") over
#: the committed files and 8 regenerations under other OpenBLAS kernels and numpy SIMD limits,
#: every pair: layer outputs up to 9.5e-7 (bound about 4x). The weights (seeded normals scaled in
#: float64, then float32) came out equal everywhere; not exact by construction, they get 1e-6
#: (a few float32 roundings of the largest blob). ``data`` (a uint8 photo minus the mean) is exact.
REMADE_BOUNDS = {"blobs_*.npz:data": 0.0, "blobs_*.npz:*": 4e-6, "*.caffemodel:*": 1e-6}


def dumps(folder: Path) -> list[Path]:
    return sorted(folder.glob("blobs_*.npz"))


def blobs(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files if not key.startswith("_")}


def expected_rows(folder: Path) -> list[str]:
    """Every Convolution and Pooling of the prototxt given to Caffe and the fc8 Eltwise SUM, in
    graph order, then the final output (ReLUs are functional, Dropout the identity)."""
    net = read_prototxt(folder / "net.prototxt")
    return [layer.name for layer in layers_from_net(net) if layer.type in ("Convolution", "Pooling", "Eltwise")] + [FINAL]


def describe(report: ForwardReport) -> str:
    worst = max(report.rows, key=lambda row: row.max_rel)
    return f"first divergent {report.first_divergent}; worst {worst.layer} {worst.max_rel:.2e}"


# ----------------------------------------------------------------------------- V1 as real Caffe wrote and read it


def test_the_v1_golden_is_old_style_and_reads_like_what_caffe_saved():
    """net_v1.caffemodel holds V1 ``layers`` (field 2) with legacy 4-D blobs, and no new-style
    ``layer``; Caffe's own save of the same net is new-style. Both read to the same arrays."""
    v1 = caffe_pb2.NetParameter.FromString((LARGEFOV / "net_v1.caffemodel").read_bytes())
    saved = caffe_pb2.NetParameter.FromString((LARGEFOV / "net.caffemodel").read_bytes())
    assert len(v1.layers) == 39 and not v1.layer and len(saved.layer) == 40 and not saved.layers  # + Input layer
    fc6 = next(layer for layer in v1.layers if layer.name == "fc6")
    assert fc6.type == caffe_pb2.V1LayerParameter.CONVOLUTION and list(fc6.blobs_lr) == [1, 2]
    assert (fc6.blobs[1].num, fc6.blobs[1].channels, fc6.blobs[1].height) == (1, 1, 1) and not fc6.blobs[1].HasField("shape")
    ours_v1, ours_saved = read_caffemodel(LARGEFOV / "net_v1.caffemodel"), read_caffemodel(LARGEFOV / "net.caffemodel")
    assert ours_v1.keys() == ours_saved.keys() and len(ours_v1) == 16
    for name, arrays in ours_v1.items():
        for a, b in zip(arrays, ours_saved[name]):
            assert np.array_equal(a.reshape(-1), b.reshape(-1))
    types = {layer.name: layer.type for layer in read_caffemodel_layers(LARGEFOV / "net_v1.caffemodel")}
    assert (types["pool5a"], types["drop6"], types["relu7"], types["fc8_voc12"]) == ("Pooling", "Dropout", "ReLU", "Convolution")


def test_the_golden_generator_reproduces_the_committed_files(reference_caffe_python, tmp_path):
    """``scripts/make_caffe_goldens_vgg.py`` under real Caffe rewrites every committed file (so real
    Caffe made, loaded and ran them, and nobody edited them): text, graphs and inputs exactly,
    Caffe's floats within ``REMADE_BOUNDS`` on any CPU."""
    command = [str(reference_caffe_python), str(ROOT / "scripts" / "make_caffe_goldens_vgg.py"),
               "--official", str(OFFICIAL), "--out", str(tmp_path)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    for folder in (LARGEFOV, ASPP):
        assert_remade_like_committed(tmp_path / folder.name, folder, REMADE_BOUNDS)


# ----------------------------------------------------------------------------- conversion vs real Caffe


@pytest.mark.parametrize("with_prototxt", [False, True], ids=["stored-graph", "prototxt"])
@pytest.mark.parametrize(("folder", "caffemodel"), CASES, ids=[f"{f.name}-{c}" for f, c in CASES])
def test_goldens_match_caffe_on_every_layer(folder, caffemodel, with_prototxt):
    conversion = convert(folder / caffemodel, folder / "net.prototxt" if with_prototxt else None)
    assert conversion.config["n_classes"] == (21 if folder == LARGEFOV else 182)
    assert sum(r.status == "mapped" for r in conversion.records) == len(conversion.records) == 2 * (16 if folder == LARGEFOV else 25)
    for dump in dumps(folder):
        report = verify_with_reference(conversion.model, conversion.graph, blobs(dump), rtol=RTOL, name=dump.name)
        assert report.passed, describe(report)
        assert [row.layer for row in report.rows] == expected_rows(folder)
        assert all(row.max_rel <= RTOL for row in report.rows)


def test_the_derived_configs_are_the_official_architectures():
    """The goldens' graphs give the published layouts (widths reduced by 32 in the goldens)."""
    largefov = convert(LARGEFOV / "net_v1.caffemodel").config
    aspp = convert(ASPP / "net.caffemodel").config
    expected_largefov = models.default_vgg_config(21, width_divisor=32)
    expected_aspp = models.default_vgg_config(182, aspp=True, width_divisor=32)
    assert largefov == expected_largefov
    assert aspp == expected_aspp
    assert [b["dilation"] for b in aspp["classifier"]["branches"]] == [6, 12, 18, 24]
    assert largefov["pool5a"] == {"kind": "ave", "kernel": 3, "stride": 1, "pad": 1} and aspp["pool5a"] is None


@pytest.mark.parametrize("dump", dumps(LARGEFOV), ids=lambda path: path.stem)
def test_opencv_reads_the_v1_golden_itself_and_agrees(dump):
    """OpenCV's importer upgrades the V1 prototxt and V1 caffemodel with its own code (our upgrade
    is not involved): every layer within 1e-5 of Caffe, and its output within 1e-5 of ours."""
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(LARGEFOV / "net.prototxt"), str(LARGEFOV / "net_v1.caffemodel"))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    caffe = blobs(dump)
    net.setInput(caffe["data"])
    names = [name for name in expected_rows(LARGEFOV) if name != FINAL]
    outputs = dict(zip(names, net.forward(names)))
    for name in names:
        assert np.abs(outputs[name] - caffe[name]).max() <= RTOL * np.abs(caffe[name]).max(), name
    with torch.no_grad():
        ours = convert(LARGEFOV / "net_v1.caffemodel").model(torch.from_numpy(caffe["data"])).numpy()
    assert np.abs(ours - outputs["fc8_voc12"]).max() <= RTOL * np.abs(outputs["fc8_voc12"]).max()


def _diverges(model: torch.nn.Module, conversion, folder: Path, first: str) -> None:
    report = verify_with_reference(model, conversion.graph, blobs(dumps(folder)[0]), rtol=RTOL)
    assert not report.passed and report.first_divergent == first, describe(report)
    assert next(row for row in report.rows if not row.ok).max_rel > 1e-3


@pytest.mark.parametrize(("module", "attribute", "value", "first"), [
    ("pool2", "ceil_mode", False, "pool2"),               # floor rounding: 34 -> 17, Caffe 18
    ("pool5a", "count_include_pad", False, "pool5a"),     # AVE divisor without the padding
    ("pool4", "stride", (2, 2), "pool4"),                 # the stride-1 pools keep the size
])
def test_pooling_mistakes_are_caught_at_their_layer(module, attribute, value, first):
    conversion = convert(LARGEFOV / "net_v1.caffemodel")
    setattr(getattr(conversion.model.backbone, module), attribute, value)
    _diverges(conversion.model, conversion, LARGEFOV, first)


def test_a_wrong_atrous_rate_is_caught_at_its_layer():
    """fc6_1 (rate 6) at rate 2. On the golden's 8x7 score map a rate of 8 or more leaves only the
    centre tap inside the map, so rates 12/18/24 are told apart by the structural checks (the
    graph's dilation against the module's), not by the forward comparison."""
    conversion = convert(ASPP / "net.caffemodel")
    conversion.model.classifier.branches[0].fc6.dilation = conversion.model.classifier.branches[0].fc6.padding = (2, 2)
    _diverges(conversion.model, conversion, ASPP, "fc6_1")


def test_the_atrous_rates_are_checked_against_the_model():
    checks = [c for c in convert(ASPP / "net.caffemodel").checks if c.what == "dilation" and c.layer.startswith("fc6")]
    assert [(c.layer, c.caffe, c.model) for c in checks] == [(f"fc6_{k}", r, r) for k, r in enumerate((6, 12, 18, 24), 1)]


# ----------------------------------------------------------------------------- V1 details


def test_deeplab_v1_hole_reads_as_dilation(tmp_path):
    """DeepLab v1's fork wrote the atrous rate as ``hole`` (ConvolutionParameter field 17): the
    golden's V1 prototxt with ``hole`` instead of ``dilation`` gives the same model."""
    text = (LARGEFOV / "net.prototxt").read_text()
    assert text.count("dilation: ") == 4  # conv5_1..5_3 and fc6
    holes = tmp_path / "hole.prototxt"
    holes.write_text(text.replace("dilation: ", "hole: "))
    reference = convert(LARGEFOV / "net_v1.caffemodel", LARGEFOV / "net.prototxt")
    conversion = convert(LARGEFOV / "net_v1.caffemodel", holes)
    assert conversion.config == reference.config
    report = verify_with_reference(conversion.model, conversion.graph, blobs(dumps(LARGEFOV)[0]), rtol=RTOL)
    assert report.passed, describe(report)


def test_deeplab_v1_test_graph_layers_are_read(tmp_path):
    """The rest of the public LargeFOV test.prototxt: the fork's V1 enums (IMAGE_SEG_DATA = 39,
    BVLC's DECONVOLUTION number, told apart by having no bottoms; INTERP, SEG_ACCURACY,
    MAT_WRITE), ``strict_dim`` and ``interp_param``. ``fc8_interp`` (zoom 8) only upsamples the
    scores for MatWrite / SegAccuracy: it stays outside the model, as the data and output layers do."""
    text = (LARGEFOV / "net.prototxt").read_text()
    # the data layer first (Caffe builds layers in order; the golden's net-level input stands last)
    text = re.sub(r'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: \d+\ninput_dim: \d+\n', '', text)
    text = text.replace('layers {', 'layers { name: "data" type: IMAGE_SEG_DATA top: "data" top: "label" '
                        'transform_param { crop_size: 67 } include { phase: TEST } }\nlayers {', 1)
    text += ('layers { bottom: "fc8_voc12" top: "fc8_interp" name: "fc8_interp" type: INTERP interp_param { zoom_factor: 8 } }\n'
             'layers { name: "fc8_mat" type: MAT_WRITE bottom: "fc8_interp" include: { phase: TEST } }\n'
             'layers { name: "accuracy" type: SEG_ACCURACY bottom: "fc8_interp" bottom: "label" top: "accuracy" }\n')
    text = text.replace('name: "fc7"\n', 'name: "fc7"\n  strict_dim: false\n', 1)
    path = tmp_path / "test.prototxt"
    path.write_text(text)
    layers = {layer.name: layer for layer in layers_from_net(read_prototxt(path))}
    assert (layers["data"].type, layers["fc8_interp"].type, layers["fc8_mat"].type) == ("ImageSegData", "Interp", "MatWrite")
    assert layers["fc8_interp"].params.interp_param.zoom_factor == 8
    conversion = convert(LARGEFOV / "net_v1.caffemodel", path)
    assert conversion.graph.output == "fc8_voc12" and conversion.graph.input_size == (67, 67)
    assert sorted(conversion.graph.ignored) == ["accuracy", "data", "fc8_interp", "fc8_mat"]
    report = verify_with_reference(conversion.model, conversion.graph, blobs(dumps(LARGEFOV)[0]), rtol=RTOL)
    assert report.passed, describe(report)


def test_a_deeplab_v1_train_snapshot_converts_from_its_stored_graph(tmp_path):
    """What DeepLab v1's fork saved in a train snapshot, V1 throughout: its IMAGE_SEG_DATA layer
    (enum 39, no bottoms), ``hole``, the label Interp (``interp_param`` at the fork's field 43),
    SOFTMAX_LOSS and SEG_ACCURACY. The model comes out of the stored graph alone."""
    config = models.default_vgg_config(21, width_divisor=32)
    net = vgg_prototxt(config)
    net.ClearField("input")
    net.ClearField("input_dim")
    data = caffe_pb2.LayerParameter(name="data", type="ImageSegData", top=["data", "label"])
    data.transform_param.crop_size = 321
    shrink = caffe_pb2.LayerParameter(name="label_shrink", type="Interp", bottom=["label"], top=["label_shrink"])
    shrink.interp_param.shrink_factor = 8
    layers = [data] + list(net.layer) + [shrink] + [
        caffe_pb2.LayerParameter(name=name, type=kind, bottom=["fc8_voc12", "label_shrink"], top=[name])
        for name, kind in (("loss", "SoftmaxWithLoss"), ("accuracy", "SegAccuracy"))]
    del net.layer[:]
    net.layer.extend(layers)
    write_caffemodel(tmp_path / "train_iter_6000.caffemodel", net, random_blobs(net, seed=4), v1_layers=True, hole=True)
    stored = caffe_pb2.NetParameter.FromString((tmp_path / "train_iter_6000.caffemodel").read_bytes())
    assert stored.layers[0].type == 39 and not stored.layers[0].bottom
    conversion = convert(tmp_path / "train_iter_6000.caffemodel")
    assert conversion.config == config and conversion.graph.input_size == (321, 321)
    assert sorted(layer.name for layer in conversion.ignored) == ["accuracy", "data", "label_shrink", "loss"]
    assert [layer.type for layer in conversion.ignored if layer.name in ("data", "label_shrink")] == ["ImageSegData", "Interp"]
    assert next(layer for layer in conversion.ignored if layer.name == "label_shrink").params.interp_param.shrink_factor == 8


def test_written_v1_files_read_back_with_every_type(tmp_path):
    """Our V1 writer (``converter.write.v1_net``) against our reader: every layer and blob back."""
    config = models.default_vgg_config(21, aspp=True, width_divisor=32)
    net = vgg_prototxt(config, input_size=(53, 43))
    arrays = random_blobs(net, seed=3)
    written = write_caffemodel(tmp_path / "v1.caffemodel", net, arrays, v1_layers=True, legacy_shapes=True)
    layers = read_caffemodel_layers(tmp_path / "v1.caffemodel")
    assert [(layer.name, layer.type) for layer in layers] == [(layer.name, layer.type) for layer in net.layer]
    for layer in layers:
        for a, b in zip(layer.blobs, written.get(layer.name, [])):
            assert np.array_equal(a, b)
    assert convert(tmp_path / "v1.caffemodel").config == config


# ----------------------------------------------------------------------------- the official graph, OpenCV


@pytest.fixture(scope="module")
def official_vgg(tmp_path_factory):
    """The official v2 VGG16 ASPP-L train graph, full size (VOC: 21 classes), seeded weights, and
    the caffemodel Caffe would save from it (Split layers, data/loss layers, phase TRAIN)."""
    folder = tmp_path_factory.mktemp("official_vgg")
    prototxt = folder / VGG_TRAIN
    prototxt.write_text(official_text(VGG_TRAIN, EXP="voc12", NUM_LABELS="21"))
    net = caffe_pb2.NetParameter()
    text_format.Parse(prototxt.read_text(), net, allow_unknown_field=True)
    caffemodel = folder / "train_iter.caffemodel"
    write_caffemodel(caffemodel, saved_net(net, "TRAIN"), random_blobs(net, seed=5))
    return prototxt, caffemodel


@pytest.mark.slow
def test_the_official_vgg16_aspp_graph_converts_every_blob_and_matches_opencv(official_vgg):
    prototxt, caffemodel = official_vgg
    conversion = convert(caffemodel, prototxt, n_classes=21)
    assert conversion.config == models.default_vgg_config(21, aspp=True)
    assert len(conversion.records) == 2 * 25 and all(r.status == "mapped" for r in conversion.records)
    assert {r.layer for r in conversion.records} == {f"conv{s}_{i}" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                                                     for i in range(1, n + 1)} | {
        f"fc{k}{'_voc12' if k == 8 else ''}_{b}" for k in (6, 7, 8) for b in range(1, 5)}
    assert sorted(layer.name for layer in conversion.ignored if layer.type != "Split") == [
        "accuracy", "data", "label_shrink", "loss", "silence"]
    report = verify_with_opencv(conversion.model, conversion.graph, caffemodel, verification_images(("astronaut",), 75),
                                rtol=RTOL)
    assert report.passed, describe(report)
    assert len(report.rows) == 13 + 5 + 12 + 1 + 1  # convs, pools, 4 x fc6-fc8, the sum, the output


def test_largefov_v1_files_verify_against_opencv(tmp_path):
    """A LargeFOV net written as V1 prototxt + V1 caffemodel by our writer, ``hole`` for the atrous
    rates as DeepLab v1 wrote them: converted and compared layer by layer with OpenCV."""
    config = models.default_vgg_config(21, width_divisor=16)
    net = vgg_prototxt(config, input_size=(97, 75))
    write_prototxt(tmp_path / "test.prototxt", v1_net(net, hole=True))
    write_caffemodel(tmp_path / "v1.caffemodel", net, random_blobs(net, seed=2), v1_layers=True, hole=True)
    assert "hole: 12" in (tmp_path / "test.prototxt").read_text() and "dilation" not in (tmp_path / "test.prototxt").read_text()
    conversion = convert(tmp_path / "v1.caffemodel", tmp_path / "test.prototxt")
    assert conversion.config == config == convert(tmp_path / "v1.caffemodel").config  # the V1 graph stored inside too
    report = verify_with_opencv(conversion.model, conversion.graph, tmp_path / "v1.caffemodel",
                                verification_images(("astronaut", "coffee"), 97), rtol=RTOL)
    assert report.passed and report.max_rel <= RTOL, describe(report)
    assert len(report.rows) == 2 * (13 + 6 + 3 + 1)


def test_cli_converts_and_verifies_the_v1_golden(tmp_path):
    out = tmp_path / "largefov.pth"
    result = CliRunner().invoke(main, ["--caffemodel", str(LARGEFOV / "net_v1.caffemodel"), "--prototxt",
                                       str(LARGEFOV / "net.prototxt"), "-o", str(out), "--verify", "--verify-size", "67"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "largefov.report.json").read_text())
    assert report["accounting"]["unaccounted"] == 0 and report["verification"]["passed"]
    model = models.load_checkpoint(out)
    assert model.config["arch"] == "deeplab_vgg"
    x = torch.from_numpy(blobs(dumps(LARGEFOV)[0])["data"])
    with torch.no_grad():
        assert torch.allclose(model(x), convert(LARGEFOV / "net_v1.caffemodel").model(x))


def test_a_vgg_graph_that_misses_a_branch_layer_is_named(tmp_path):
    path = tmp_path / "renamed.prototxt"
    path.write_text((ASPP / "net.prototxt").read_text().replace('name: "fc7_2"', 'name: "fc7x_2"'))
    with pytest.raises(ConversionError, match=re.escape("classifier branches fc6 [0, 1, 2, 3], fc7 [0, 2, 3]")):
        convert(ASPP / "net.caffemodel", path)
