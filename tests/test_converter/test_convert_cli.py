"""deeplab-convert: the command end to end, and its one-line errors with no partial output."""

from __future__ import annotations

import json

import cv2  # noqa: F401  (--verify runs OpenCV: a broken install fails here, never skips)
import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe import models
from deeplab_caffe.converter.cli import main
from deeplab_caffe.converter.synthetic import make_synthetic_deeplab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = models.default_config(21, n_blocks=(1, 2, 2, 1), aspp_rates=(2, 4, 6, 8), msc=True, stem_channels=8)
    return make_synthetic_deeplab(tmp_path_factory.mktemp("tiny"), config, seed=7)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_verify_writes_checkpoint_and_reports(tiny, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    result = invoke("--caffemodel", str(tiny.caffemodel_path), "--prototxt", str(tiny.prototxt_path), "--n-classes", "21",
                    "-o", str(out), "--verify", "--verify-size", "97")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert report["accounting"]["unaccounted"] == 0
    assert report["accounting"]["blobs"] == report["accounting"]["mapped"] + report["accounting"]["shared_msc_copies"]
    assert report["verification"]["passed"] and report["verification"]["max_rel"] <= 1e-5
    assert "| `res2a_branch2a` | Convolution | 0 | 8x8x1x1 | mapped |" in (tmp_path / "model.report.md").read_text()

    model = models.load_checkpoint(out)
    assert not model.training
    assert model.metadata["source_sha256"] == report["source"]["caffemodel_sha256"]
    assert model.metadata["class_names"] is None and model.metadata["n_classes"] == 21
    x = torch.randn(1, 3, 65, 65)
    assert model(x).shape == (1, 21, 9, 9)


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_garbage_caffemodel(tmp_path):
    bad = tmp_path / "garbage.caffemodel"
    bad.write_bytes(b"\x08\x96\x01" + bytes(range(200)))
    out = tmp_path / "out.pth"
    _one_line_error(invoke("--caffemodel", str(bad), "-o", str(out)), "garbage.caffemodel", "not a valid caffemodel")
    assert list(tmp_path.iterdir()) == [bad]


def test_truncated_caffemodel(tiny, tmp_path):
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(tiny.caffemodel_path.read_bytes()[:-1000])
    _one_line_error(invoke("--caffemodel", str(cut), "-o", str(tmp_path / "o.pth")), "cut.caffemodel", "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.caffemodel"]


def test_wrong_class_count(tiny, tmp_path):
    _one_line_error(invoke("--caffemodel", str(tiny.caffemodel_path), "--n-classes", "91", "-o", str(tmp_path / "o.pth")),
                    "deeplab_resnet.caffemodel", "21 classes, expected 91")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_hdf5(tmp_path, tiny):
    bad = tmp_path / "w.caffemodel.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    _one_line_error(invoke("--caffemodel", str(bad), "--prototxt", str(tiny.prototxt_path), "-o", str(tmp_path / "o.pth")),
                    "w.caffemodel.h5", "corrupt HDF5")


def test_unwritable_output(tiny, tmp_path):
    blocker = tmp_path / "model.pth"
    blocker.mkdir()  # a folder where the checkpoint should go: unwritable even for root
    _one_line_error(invoke("--caffemodel", str(tiny.caffemodel_path), "-o", str(blocker)), "model.pth")
    assert list(blocker.iterdir()) == []
    assert not any(p.name.startswith(".model.pth") for p in tmp_path.iterdir())


def test_missing_output_folder_and_bad_suffix(tiny, tmp_path):
    _one_line_error(invoke("--caffemodel", str(tiny.caffemodel_path), "-o", str(tmp_path / "nope" / "m.pth")),
                    "output folder does not exist")
    _one_line_error(invoke("--caffemodel", str(tiny.caffemodel_path), "-o", str(tmp_path / "m.onnx")),
                    "must end in .pth or .safetensors")


def test_release_file_missing_names_it(tmp_path):
    _one_line_error(invoke("--dataset", "voc12", "--weights-dir", str(tmp_path), "-o", str(tmp_path / "o.pth")),
                    "train2_iter_20000.caffemodel", "no such file")


def test_dataset_or_caffemodel_is_required():
    _one_line_error(invoke(), "give exactly one of --dataset or --caffemodel")


def test_nonfinite_weights_are_refused_in_one_line_unless_allowed(tiny, tmp_path):
    from deeplab_caffe.caffe_proto import caffe_pb2

    net = caffe_pb2.NetParameter.FromString(tiny.caffemodel_path.read_bytes())
    for layer in net.layer:  # the 1x layer and its MSC copies (Caffe saves each)
        if layer.name.startswith("scale_conv1"):
            layer.blobs[1].data[0] = float("inf")
    poisoned = tmp_path / "inf.caffemodel"
    poisoned.write_bytes(net.SerializeToString())
    out = tmp_path / "inf.pth"
    result = CliRunner().invoke(main, ["--caffemodel", str(poisoned), "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {poisoned}: layer scale_conv1 blob 1 (8,) holds 0 NaN and 1 Inf values "
                                     "(--allow-nonfinite converts it anyway)")
    assert not out.exists()
    assert invoke("--caffemodel", str(poisoned), "-o", str(out), "--allow-nonfinite").exit_code == 0
    assert torch.isinf(models.read_checkpoint(out)[0]["backbone.stem.conv1.bn.bias"]).sum() == 1
