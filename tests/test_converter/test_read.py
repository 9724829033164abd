"""converter.read: the wire-level caffemodel reader, HDF5 weights and prototxt parsing."""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter import ConversionError, read_caffemodel, read_caffemodel_layers, read_prototxt
from deeplab_caffe.converter.write import length_delimited


def _net_with_blobs(arrays: dict[str, list[np.ndarray]], *, legacy: bool = False, double: bool = False) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name="t")
    for name, blobs in arrays.items():
        layer = net.layer.add(name=name, type="Convolution")
        layer.convolution_param.num_output = 3
        for array in blobs:
            blob = layer.blobs.add()
            if legacy:
                shape = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = shape
            else:
                blob.shape.dim.extend(array.shape)
            (blob.double_data if double else blob.data).extend(array.ravel().tolist())
    return net


ARRAYS = {
    "conv_a": [np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.5, np.array([0.5, -1.25], np.float32)],
    "conv_b": [np.linspace(-1, 1, 9, dtype=np.float32).reshape(1, 1, 3, 3)],
}


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("double", [False, True])
def test_blobs_decode_to_the_written_values(tmp_path, legacy, double):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_net_with_blobs(ARRAYS, legacy=legacy, double=double).SerializeToString())
    blobs = read_caffemodel(path)
    assert list(blobs) == ["conv_a", "conv_b"]
    for name, arrays in ARRAYS.items():
        for got, want in zip(blobs[name], arrays, strict=True):
            expected_shape = ((1,) * (4 - want.ndim) + want.shape) if legacy else want.shape
            assert got.shape == expected_shape
            assert got.dtype == (np.float64 if double else np.float32)
            np.testing.assert_array_equal(got.reshape(-1), want.reshape(-1))


def _unpacked_blob_bytes(shape: tuple[int, ...], values: np.ndarray) -> bytes:
    """A BlobProto with `data` written as unpacked fixed32 elements (key 0x2D each)."""
    shape_msg = caffe_pb2.BlobShape(dim=list(shape)).SerializeToString()
    out = bytes([0x3A, len(shape_msg)]) + shape_msg
    records = np.zeros(values.size, dtype=[("key", "u1"), ("value", "<f4")])
    records["key"] = 0x2D
    records["value"] = values.ravel()
    return out + records.tobytes()


def test_unpacked_float_elements_are_decoded(tmp_path):
    values = np.arange(300, dtype=np.float32) / 7
    layer = length_delimited(1, b"u") + length_delimited(2, b"Convolution") + length_delimited(7, _unpacked_blob_bytes((3, 100), values))
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(length_delimited(100, layer))
    # protobuf's own parser agrees on what the bytes hold
    assert np.array_equal(np.array(caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[0].blobs[0].data, np.float32), values)
    blob = read_caffemodel(path)["u"][0]
    assert blob.shape == (3, 100)
    np.testing.assert_array_equal(blob.ravel(), values)


def test_v1_layers_are_read_with_new_style_type_names(tmp_path):
    net = caffe_pb2.NetParameter()
    layer = net.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    blob = layer.blobs.add(num=1, channels=1, height=1, width=2)
    blob.data.extend([1.0, 2.0])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    [read] = read_caffemodel_layers(path)
    assert (read.name, read.type) == ("conv1", "Convolution")
    np.testing.assert_array_equal(read.blobs[0], np.array([[[[1.0, 2.0]]]], np.float32))


def test_layer_parameters_survive_without_blobs(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_net_with_blobs(ARRAYS).SerializeToString())
    layer = read_caffemodel_layers(path)[0]
    assert layer.params.convolution_param.num_output == 3
    assert len(layer.params.blobs) == 0


def test_hdf5_weights_are_read_in_blob_order(tmp_path):
    path = tmp_path / "m.caffemodel.h5"
    with h5py.File(path, "w") as h5:
        for name, arrays in ARRAYS.items():
            group = h5.create_group(f"data/{name}")
            for i, array in enumerate(arrays):
                group[str(i)] = array
        h5.create_group("data/relu_without_blobs")
    blobs = read_caffemodel(path)
    assert sorted(blobs) == ["conv_a", "conv_b"]
    for name, arrays in ARRAYS.items():
        for got, want in zip(blobs[name], arrays, strict=True):
            np.testing.assert_array_equal(got, want)


def test_truncated_caffemodel_names_the_file(tmp_path):
    data = _net_with_blobs(ARRAYS).SerializeToString()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(ConversionError, match=r"cut\.caffemodel: not a valid caffemodel: truncated"):
        read_caffemodel(path)


@pytest.mark.parametrize("content", [b"\xff" * 64, bytes(range(256)) * 4, b"hello, this is not a model\n"])
def test_garbage_caffemodel_names_the_file(tmp_path, content):
    path = tmp_path / "junk.caffemodel"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=r"^.*junk\.caffemodel: "):
        read_caffemodel(path)


def test_corrupt_hdf5_names_the_file(tmp_path):
    good = tmp_path / "good.caffemodel.h5"
    with h5py.File(good, "w") as h5:
        h5["data/conv/0"] = np.ones((4, 4, 3, 3), np.float32)
    raw = good.read_bytes()
    path = tmp_path / "bad.caffemodel.h5"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConversionError, match=r"bad\.caffemodel\.h5: corrupt HDF5 weights"):
        read_caffemodel(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConversionError, match="nope.caffemodel: no such file"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(ConversionError, match="empty.caffemodel: empty file"):
        read_caffemodel(tmp_path / "empty.caffemodel")


def test_blob_whose_shape_disagrees_with_its_data_is_rejected(tmp_path):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="c", type="Convolution").blobs.add()
    blob.shape.dim.extend([2, 2])
    blob.data.extend([1.0, 2.0, 3.0])
    path = tmp_path / "m.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(ConversionError, match=r"shape \(2, 2\) holds 4 values but its data has 3"):
        read_caffemodel(path)


def test_prototxt_with_fields_outside_our_schema_parses(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(
        'name: "x"\nlayer { name: "data" type: "ImageSegData" top: "data" top: "label"\n'
        '  image_data_param { source: "list.txt" batch_size: 1 label_type: PIXEL } }\n'
        'layer { name: "shrink" type: "Interp" bottom: "data" top: "d05" interp_param { shrink_factor: 2 } }\n'
    )
    net = read_prototxt(path)
    assert [layer.name for layer in net.layer] == ["data", "shrink"]
    assert net.layer[1].interp_param.shrink_factor == 2


def test_broken_prototxt_names_the_file(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('layer { name: "a" type: "Convolution" ')
    with pytest.raises(ConversionError, match=r"broken\.prototxt: not a valid prototxt"):
        read_prototxt(path)


def test_float_bytes_are_little_endian():
    # The packed field holds IEEE little-endian floats whatever the host byte order.
    net = _net_with_blobs({"c": [np.array([1.5], np.float32)]})
    raw = net.SerializeToString()
    assert struct.pack("<f", 1.5) in raw


def _layer_bytes(layer: caffe_pb2.LayerParameter, extra: bytes = b"") -> bytes:
    return length_delimited(100, layer.SerializeToString() + extra)


def test_interp_parameters_at_field_147_are_read(tmp_path):
    """A BVLC-based Caffe with Interp appended (the reference build) stores them at 147, not 143."""
    params = caffe_pb2.InterpParameter(shrink_factor=4, zoom_factor=3).SerializeToString()
    interp = caffe_pb2.LayerParameter(name="data_res075", type="Interp", bottom=["data"], top=["data_res075"])
    fork = caffe_pb2.LayerParameter(name="data_res05", type="Interp", bottom=["data"], top=["data_res05"])
    fork.interp_param.shrink_factor = 2
    path = tmp_path / "interp.caffemodel"
    path.write_bytes(_layer_bytes(interp, length_delimited(147, params)) + _layer_bytes(fork))
    layers = {layer.name: layer.params.interp_param for layer in read_caffemodel_layers(path)}
    assert (layers["data_res075"].shrink_factor, layers["data_res075"].zoom_factor) == (4, 3)
    assert (layers["data_res05"].shrink_factor, layers["data_res05"].zoom_factor) == (2, 1)


def test_a_repeated_layer_name_is_refused_only_where_it_keys_weights(tmp_path):
    """Caffe lets layers share a name; weights are found by it, so a name two layers share is
    refused when one of them carries blobs, accepted for blob-less ones (a published test net
    names both its Input layers ``data``)."""
    net = _net_with_blobs(ARRAYS)
    for top in ("data", "label"):
        net.layer.add(name="data", type="Input", top=[top])
    path = tmp_path / "inputs.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert [layer.name for layer in read_caffemodel_layers(path)] == ["conv_a", "conv_b", "data", "data"]
    net.layer.add(name="conv_b", type="ReLU")
    path.write_bytes(net.SerializeToString())
    with pytest.raises(ConversionError, match=r"layer name 'conv_b' appears twice$"):
        read_caffemodel_layers(path)
