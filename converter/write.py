"""Writing binary Caffe files (the inverse of ``converter.read``'s fast path).

Blobs are serialised straight from numpy bytes, field by field in field-number order as
protobuf (and so Caffe) writes them, never float by float. Besides the packed float32 that
Caffe writes today, the older encodings readers must handle can be produced for tests:
legacy 4-D shapes, ``double_data``, unpacked elements and V1 ``layers``. The messages may
come from any Caffe schema (ours or the DeepLab fork's): only field numbers matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np
from google.protobuf.message import Message

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.read import V1_PARAMS, V1_TYPE_ENUMS
from deeplab_caffe.models.files import atomic_output

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: key, length, payload."""
    return _key(number, _LEN) + _varint(len(payload)) + payload


def _legacy_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Caffe's legacy 4-D num/channels/height/width: leading ones (a vector is 1x1x1xC)."""
    if len(shape) > 4:
        raise ValueError(f"legacy blob shapes are 4-D, got {shape}")
    return (1,) * (4 - len(shape)) + tuple(shape)


def _blob_parts(array: np.ndarray, *, legacy_shapes: bool, double_data: bool, unpacked: bool) -> list[bytes]:
    """A serialised BlobProto as byte chunks, fields in number order (1-4, 5, 7, 8).

    Packed data is one length-delimited field of little-endian values; unpacked data is one
    record per value, (key byte, value), built at once with a numpy structured array.
    """
    fields: list[tuple[int, bytes]] = []
    if legacy_shapes:
        for number, dim in zip((1, 2, 3, 4), _legacy_dims(array.shape)):
            fields.append((number, _key(number, _VARINT) + _varint(dim)))
    else:
        shape = caffe_pb2.BlobShape(dim=list(array.shape)).SerializeToString()
        fields.append((7, length_delimited(7, shape)))
    number, dtype, fixed = (8, "<f8", _FIXED64) if double_data else (5, "<f4", _FIXED32)
    values = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    if values.size and unpacked:
        records = np.empty(values.size, dtype=[("key", "u1"), ("value", dtype)])
        records["key"] = (number << 3) | fixed
        records["value"] = values
        fields.append((number, records.tobytes()))
    elif values.size:
        payload = values.tobytes()
        fields.append((number, length_delimited(number, payload)))
    fields.sort(key=lambda f: f[0])
    return [chunk for _, chunk in fields]


def _only_fields(message: Message, keep: Callable[[int], bool]) -> Message:
    """A copy of ``message`` holding only its known fields whose number passes ``keep``."""
    out = type(message)()
    for field, value in message.ListFields():
        if not keep(field.number):
            continue
        if field.is_repeated:
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    return out


def _without(message: Message, *numbers: int) -> Message:
    """A copy of ``message`` without its fields ``numbers`` (unknown fields kept)."""
    out = type(message)()
    out.CopyFrom(message)
    for number in numbers:
        field = message.DESCRIPTOR.fields_by_number.get(number)
        if field is not None:
            out.ClearField(field.name)
    return out


def _split_at(message: Message, number: int) -> tuple[bytes, bytes]:
    """``message`` serialised in two parts: the fields numbered up to ``number``, then the rest.

    Protobuf (Python and C++ alike) writes known fields in number order and unknown ones last,
    so ``head + tail`` is the message's own serialisation.
    """
    tail = _without(message, *(field.number for field, _ in message.ListFields() if field.number <= number))
    return _only_fields(message, lambda n: n <= number).SerializeToString(), tail.SerializeToString()


def v1_layer(layer: caffe_pb2.LayerParameter, *, hole: bool = False) -> caffe_pb2.V1LayerParameter | None:
    """A new-style layer as an old-style ``layers`` entry (what a pre-2015 Caffe wrote), or None
    for a type without a V1 enum (BatchNorm, Scale): type enum, ``param`` names with their
    ``lr_mult`` / ``decay_mult`` as ``blobs_lr`` / ``weight_decay``, the parameter messages.
    ``hole``: write ``dilation`` as DeepLab v1's ``hole`` (its fork predates ``dilation``)."""
    enum = V1_TYPE_ENUMS.get(layer.type)
    if enum is None:
        return None
    v1 = caffe_pb2.V1LayerParameter(name=layer.name, type=enum, bottom=layer.bottom, top=layer.top,
                                    include=layer.include, exclude=layer.exclude, loss_weight=layer.loss_weight)
    if any(p.name for p in layer.param):
        v1.param.extend(p.name for p in layer.param)
    if layer.param:
        v1.blobs_lr.extend(p.lr_mult for p in layer.param)
        v1.weight_decay.extend(p.decay_mult for p in layer.param)
    for name in V1_PARAMS:
        if layer.HasField(name):
            getattr(v1, name).CopyFrom(getattr(layer, name))
    conv = v1.convolution_param
    if hole and conv.dilation:
        conv.hole = conv.dilation[0]
        conv.ClearField("dilation")
    return v1


def v1_net(net: caffe_pb2.NetParameter, *, hole: bool = False) -> caffe_pb2.NetParameter:
    """``net`` with its layers as old-style ``layers`` entries (``v1_layer``; types without a V1
    enum are left out), net-level fields kept."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    for layer in net.layer:
        v1 = v1_layer(layer, hole=hole)
        if v1 is not None:
            out.layers.append(v1)
    return out


def _net_parts(net: Message, blobs: dict[str, list[np.ndarray]], *, legacy_shapes: bool, double_data: bool,
               unpacked: bool, v1_layers: bool, hole: bool = False) -> list[bytes]:
    """A binary NetParameter as Caffe saves one, as byte chunks: the net's own fields (``name``,
    ``input``, ...) around its layers in field-number order, every layer with its parameters and,
    in field-number order, its blobs (``blobs`` = 7, V1 ``blobs`` = 6). Any schema's messages."""
    layers_field, blobs_field = (2, 6) if v1_layers else (100, 7)
    head, tail = _split_at(_without(net, 2, 100), layers_field)
    parts = [head]
    for layer in net.layer:
        if v1_layers and layer.type not in V1_TYPE_ENUMS:
            continue
        layer_head, layer_tail = _split_at(v1_layer(layer, hole=hole) if v1_layers else _without(layer, 7),
                                           blobs_field)
        chunks = [layer_head]
        for array in blobs.get(layer.name, []):
            blob = _blob_parts(array, legacy_shapes=legacy_shapes, double_data=double_data, unpacked=unpacked)
            chunks.append(_key(blobs_field, _LEN) + _varint(sum(map(len, blob))))
            chunks.extend(blob)
        chunks.append(layer_tail)
        parts.append(_key(layers_field, _LEN) + _varint(sum(map(len, chunks))))
        parts.extend(chunks)
    parts.append(tail)
    return parts


def blobs_as_written(net: Message, blobs: dict[str, list[np.ndarray]], *, legacy_shapes: bool,
                   v1_layers: bool) -> dict[str, list[np.ndarray]]:
    """The blobs exactly as a reader gets them back: only written layers, legacy shapes 4-D."""
    names = {layer.name for layer in net.layer if not v1_layers or layer.type in V1_TYPE_ENUMS}
    out = {}
    for name, arrays in blobs.items():
        if name in names:
            out[name] = [a.reshape(_legacy_dims(a.shape)) if legacy_shapes else a for a in arrays]
    return out


def caffemodel_bytes(net: Message, blobs: dict[str, list[np.ndarray]], *, legacy_shapes: bool = False,
                     double_data: bool = False, unpacked: bool = False, v1_layers: bool = False,
                     hole: bool = False) -> bytes:
    """Serialise ``net`` (its fields and layers, parameters included) with ``blobs`` as a binary
    ``.caffemodel``. ``net`` may be a NetParameter of any schema (ours, the DeepLab fork's); pass
    ``converter.saved_net.saved_net(prototxt_net)`` for the graph Caffe itself would save.

    Encodings: ``legacy_shapes`` writes num/channels/height/width instead of ``shape`` (vectors
    as 1x1x1xC); ``double_data`` writes ``double_data`` instead of ``data``; ``unpacked`` writes
    one (key, value) record per element instead of one packed field; ``v1_layers`` writes
    old-style ``layers`` (V1LayerParameter, ``v1_layer``) entries, leaving out the types without
    a V1 enum (BatchNorm, Scale); ``hole`` (with ``v1_layers``) writes ``dilation`` as DeepLab
    v1's ``hole``.
    """
    return b"".join(_net_parts(net, blobs, legacy_shapes=legacy_shapes, double_data=double_data, unpacked=unpacked,
                               v1_layers=v1_layers, hole=hole))


def write_caffemodel(path: str | Path, net: Message, blobs: dict[str, list[np.ndarray]], *,
                     legacy_shapes: bool = False, double_data: bool = False, unpacked: bool = False,
                     v1_layers: bool = False, hole: bool = False) -> dict[str, list[np.ndarray]]:
    """Write ``caffemodel_bytes(...)`` to ``path`` chunk by chunk, whole or not at all
    (``models.files.atomic_output``); returns the blobs as written."""
    parts = _net_parts(net, blobs, legacy_shapes=legacy_shapes, double_data=double_data, unpacked=unpacked,
                       v1_layers=v1_layers, hole=hole)
    with atomic_output(path) as handle:
        handle.writelines(parts)
    return blobs_as_written(net, blobs, legacy_shapes=legacy_shapes, v1_layers=v1_layers)


def write_caffemodel_h5(path: str | Path, blobs: dict[str, list[np.ndarray]]) -> Path:
    """Caffe's HDF5 snapshot layout: one float32 dataset ``data/<layer>/<i>`` per blob."""
    path = Path(path)
    with h5py.File(path, "w") as h5:
        for name, arrays in blobs.items():
            group = h5.create_group(f"data/{name}")
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))
    return path
