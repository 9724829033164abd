"""``golden_files``, the comparison of regenerated goldens, on a committed golden: a copy passes,
and each kind of edit it must catch fails (floats beyond their bound, an input value, an integer
label, the graph, a NaN, a file or key more or less)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deeplab_caffe.caffe_proto import caffe_pb2
from golden_files import assert_remade_like_committed, assert_within, relative_difference, remade_differences

ROOT = Path(__file__).resolve().parents[1]
SOLVER = ROOT / "tests" / "data" / "caffe_solver"
BOUNDS = {"batches.npz:data": 0.0, "batches.npz:losses": 1e-6, "step_*.caffemodel:*": 3e-6}


@pytest.fixture()
def remade(tmp_path: Path) -> Path:
    folder = tmp_path / "caffe_solver"
    shutil.copytree(SOLVER, folder)
    return folder


def _edit_batches(folder: Path, key: str, edit) -> None:
    with np.load(folder / "batches.npz") as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    edit(arrays[key])
    np.savez_compressed(folder / "batches.npz", **arrays)


def _edit_caffemodel(folder: Path, edit) -> None:
    path = folder / "step_2.caffemodel"
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    edit(net)
    path.write_bytes(net.SerializeToString())


def _scale_first_blob(net: caffe_pb2.NetParameter, factor: float) -> None:
    blob = next(layer.blobs[0] for layer in net.layer if layer.blobs)
    data = np.array(blob.data, np.float32)
    blob.ClearField("data")
    blob.data.extend((data * np.float32(factor)).tolist())


def test_a_copy_passes_and_reports_every_float_array(remade):
    differences = assert_remade_like_committed(remade, SOLVER, BOUNDS)
    assert set(differences.values()) == {0.0}
    assert {"batches.npz:data", "batches.npz:losses", "step_3.caffemodel:conv1[0]"} <= differences.keys()
    assert not any(where.startswith("batches.npz:label") for where in differences)  # integers: compared exactly


def test_the_machine_records_of_meta_json_are_not_compared(remade):
    record = json.loads((remade / "meta.json").read_text())
    record |= {"command": "elsewhere", "pycaffe": "/home/x/_caffe.so", "pycaffe_sha256": "0" * 64}
    (remade / "meta.json").write_text(json.dumps(record))
    assert_remade_like_committed(remade, SOLVER, BOUNDS)
    (remade / "meta.json").write_text(json.dumps(record | {"seed": record["seed"] + 1}))
    with pytest.raises(AssertionError, match="meta.json differs"):
        remade_differences(remade, SOLVER)


def test_float_drift_within_the_bound_passes_and_beyond_it_fails(remade):
    _edit_caffemodel(remade, lambda net: _scale_first_blob(net, 1 + 1e-6))
    assert_remade_like_committed(remade, SOLVER, BOUNDS)
    _edit_caffemodel(remade, lambda net: _scale_first_blob(net, 1 + 1e-5))
    with pytest.raises(AssertionError, match=r"step_2\.caffemodel:conv1\[0\]: \S+e-05 > 3e-06"):
        assert_remade_like_committed(remade, SOLVER, BOUNDS)


@pytest.mark.parametrize(("key", "edit", "message"), [
    ("data", lambda a: a.__setitem__((0, 0, 0, 0), a[0, 0, 0, 0] + 1), r"batches.npz:data: 0\.00\d+ > 0"),
    ("losses", lambda a: a.__setitem__((0, 0, 0), np.nan), r"batches.npz:losses: nan > 1e-06"),
    ("label", lambda a: a.__setitem__((0, 0, 0), a[0, 0, 0] ^ 1), "batches.npz:label: uint8 values differ"),
])
def test_an_edited_input_label_or_nan_fails(remade, key, edit, message):
    _edit_batches(remade, key, edit)
    with pytest.raises(AssertionError, match=message):
        assert_remade_like_committed(remade, SOLVER, BOUNDS)


def test_a_changed_graph_or_a_missing_file_fails(remade):
    _edit_caffemodel(remade, lambda net: next(layer for layer in net.layer if layer.type == "Convolution")
                     .convolution_param.dilation.append(2))
    with pytest.raises(AssertionError, match="step_2.caffemodel: the graph or the blob shapes differ"):
        remade_differences(remade, SOLVER)
    (remade / "step_2.caffemodel").unlink()
    with pytest.raises(AssertionError, match="other files"):
        remade_differences(remade, SOLVER)


def test_a_float_array_without_a_bound_fails():
    with pytest.raises(AssertionError, match="x.npz:new: 0 > no bound"):
        assert_within({"x.npz:new": 0.0}, {"x.npz:old": 1.0})
    assert relative_difference(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_difference(np.float32([1, 2]), np.float32([1, -4])) == 1.5
