"""Writing binary Caffe files (the inverse of ``converter.read``'s fast path).

Blobs are serialised straight from numpy bytes (a ``shape`` then one packed little-endian
float32 ``data`` field), never float by float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe_proto import caffe_pb2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: key, length, payload."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def blob_bytes(array: np.ndarray) -> bytes:
    """A serialised BlobProto: ``shape`` then packed little-endian float32 ``data``."""
    shape = caffe_pb2.BlobShape(dim=list(array.shape)).SerializeToString()
    return length_delimited(7, shape) + length_delimited(5, np.ascontiguousarray(array, dtype="<f4").tobytes())


def caffemodel_bytes(layers: list[caffe_pb2.LayerParameter], blobs: dict[str, list[np.ndarray]], name: str = "") -> bytes:
    """A binary NetParameter as Caffe saves one: each layer's parameters followed by its blobs."""
    parts = [length_delimited(1, name.encode())] if name else []
    for layer in layers:
        payload = layer.SerializeToString() + b"".join(length_delimited(7, blob_bytes(b)) for b in blobs.get(layer.name, []))
        parts.append(length_delimited(100, payload))
    return b"".join(parts)


def write_caffemodel(path: str | Path, layers: list[caffe_pb2.LayerParameter], blobs: dict[str, list[np.ndarray]], name: str = "") -> None:
    """Write ``caffemodel_bytes`` to ``path``."""
    Path(path).write_bytes(caffemodel_bytes(layers, blobs, name))
