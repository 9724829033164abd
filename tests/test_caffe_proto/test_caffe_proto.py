"""caffe_proto: the committed caffe_pb2.py is what protoc makes of caffe.proto, with Caffe's field numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deeplab_caffe.caffe_proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]


def test_committed_caffe_pb2_matches_the_schema(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_caffe_pb2", REPO / "scripts" / "generate_caffe_pb2.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    fresh = generator.generate(tmp_path)
    assert fresh.read_text() == (REPO / "caffe_proto" / "caffe_pb2.py").read_text(), (
        "caffe_pb2.py is stale: run python scripts/generate_caffe_pb2.py"
    )


@pytest.mark.parametrize(
    "message, field, number",
    [
        ("BlobProto", "data", 5), ("BlobProto", "shape", 7), ("BlobProto", "double_data", 8), ("BlobProto", "num", 1),
        ("BlobProto", "width", 4), ("NetParameter", "layer", 100), ("NetParameter", "layers", 2),
        ("NetParameter", "input_shape", 8), ("LayerParameter", "blobs", 7), ("LayerParameter", "convolution_param", 106),
        ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "scale_param", 142),
        ("LayerParameter", "interp_param", 143), ("ConvolutionParameter", "dilation", 18),
        ("InterpParameter", "shrink_factor", 4), ("InterpParameter", "pad_end", 6), ("V1LayerParameter", "blobs", 6),
        ("V1LayerParameter", "param", 1001), ("BatchNormParameter", "eps", 3), ("PoolingParameter", "global_pooling", 12),
    ],
)
def test_field_numbers_are_caffes(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_blob_data_is_packed():
    assert caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].is_packed
