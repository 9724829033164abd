"""Reading Caffe files into plain Python and numpy objects (no torch needed).

- ``.caffemodel`` (binary ``NetParameter``): walked at the protobuf wire level. Each blob's
  packed ``data`` field is one length-delimited run of little-endian float32, so it becomes a
  numpy array with ``np.frombuffer`` on the file's bytes: no per-float Python work and no
  second copy of the file. Unpacked (older writers), ``double_data`` and legacy 4-D shapes are
  decoded too. Everything except the blobs (layer name, type, parameters) is small and goes
  through our generated ``caffe_pb2``.
- ``.caffemodel.h5`` (Caffe's HDF5 snapshot): datasets ``data/<layer>/<i>`` via h5py, each
  checked to be float data whose declared size the file holds before it is read.
- ``.prototxt`` (text format) via ``google.protobuf.text_format``.

Arrays from a binary caffemodel are writable views into one buffer holding the file (the
arrays keep it alive); they may be unaligned, which numpy and ``torch.tensor`` handle.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.errors import CaffeFileError
from deeplab_caffe.models.bounds import FileBoundError, check_declared_bytes

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# DeepLab's fork stores InterpParameter at 143; BVLC gave 143 to input_param, and Caffe builds
# that add Interp on top of BVLC (../shared/tools/caffe) append it at 147. An Interp layer
# without field 143 is read from 147.
_INTERP_APPENDED = 147

# V1 (pre-2015) layer type enums, named as new-style `type` strings (DeepLab v1's fork's included).
V1_TYPE_NAMES = {
    "CONVOLUTION": "Convolution", "POOLING": "Pooling", "RELU": "ReLU", "ELTWISE": "Eltwise",
    "INNER_PRODUCT": "InnerProduct", "DATA": "Data", "DROPOUT": "Dropout", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "CONCAT": "Concat", "ACCURACY": "Accuracy",
    "IMAGE_DATA": "ImageData", "MEMORY_DATA": "MemoryData", "DECONVOLUTION": "Deconvolution",
    "SIGMOID": "Sigmoid", "TANH": "TanH", "LRN": "LRN", "ARGMAX": "ArgMax", "SILENCE": "Silence",
    "DUMMY_DATA": "DummyData", "HDF5_DATA": "HDF5Data", "WINDOW_DATA": "WindowData",
    "SEG_ACCURACY": "SegAccuracy", "INTERP": "Interp", "MAT_WRITE": "MatWrite", "MAT_READ": "MatRead",
    "DENSE_CRF": "DenseCRF", "UNIQUE_LABEL": "UniqueLabel", "PADDING": "Padding",
}
# ... and back: new-style type string -> V1 enum value (for writers of old-style files).
V1_TYPE_ENUMS = {new: caffe_pb2.V1LayerParameter.LayerType.Value(old) for old, new in V1_TYPE_NAMES.items()} | {
    "ImageSegData": caffe_pb2.V1LayerParameter.IMAGE_SEG_DATA}
# Sub-messages a V1 layer carries over unchanged into the new-style LayerParameter.
V1_PARAMS = ("convolution_param", "dropout_param", "eltwise_param", "image_data_param", "inner_product_param",
              "pooling_param", "relu_param", "softmax_param", "transform_param", "interp_param")


def v1_type_name(layer: caffe_pb2.V1LayerParameter) -> str | None:
    """The new-style type string of a V1 layer. Enum 39 is BVLC's DECONVOLUTION and DeepLab v1's
    IMAGE_SEG_DATA: a layer without bottoms is the fork's data layer."""
    if not layer.HasField("type"):
        return None
    if layer.type == caffe_pb2.V1LayerParameter.IMAGE_SEG_DATA and not layer.bottom:
        return "ImageSegData"
    enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(layer.type)
    return V1_TYPE_NAMES.get(enum_name, enum_name)


def upgrade_v1_layer(layer: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    """A V1 ``layers`` entry as the new-style LayerParameter Caffe's ``UpgradeV1LayerParameter``
    makes of it (without blobs): type string, ``param`` names with ``blobs_lr`` / ``weight_decay``
    as ParamSpecs, the layer's parameter messages; DeepLab v1's ``hole`` becomes ``dilation``."""
    out = caffe_pb2.LayerParameter(name=layer.name, type=v1_type_name(layer) or "", bottom=layer.bottom,
                                   top=layer.top, include=layer.include, exclude=layer.exclude,
                                   loss_weight=layer.loss_weight)
    for i in range(max(len(layer.param), len(layer.blobs_lr), len(layer.weight_decay))):
        spec = out.param.add()
        if i < len(layer.param):
            spec.name = layer.param[i]
        if i < len(layer.blobs_lr):
            spec.lr_mult = layer.blobs_lr[i]
        if i < len(layer.weight_decay):
            spec.decay_mult = layer.weight_decay[i]
    for name in V1_PARAMS:
        if layer.HasField(name):
            getattr(out, name).CopyFrom(getattr(layer, name))
    conv = out.convolution_param
    if out.HasField("convolution_param") and conv.HasField("hole"):
        if conv.hole > 1 and not conv.dilation:
            conv.dilation.append(conv.hole)
        conv.ClearField("hole")
    return out


@dataclass
class CaffeLayer:
    """One layer of a Caffe file: name, type string, blobs (numpy, file order) and parameters.

    ``params`` is the layer's ``caffe_pb2.LayerParameter`` without its blobs (an old-style V1
    layer upgraded by ``upgrade_v1_layer``); ``None`` for HDF5 weights, which store blobs only.
    """

    name: str
    type: str | None
    blobs: list[np.ndarray] = field(default_factory=list)
    params: object | None = None


class _Malformed(Exception):
    """Internal: the bytes are not a valid protobuf message at `offset`."""

    def __init__(self, offset: int, problem: str) -> None:
        self.offset = offset
        self.problem = problem
        super().__init__(problem)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Malformed(pos, "truncated (a varint runs past the end of its message)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed(pos, "malformed varint (more than 10 bytes)")


def _fields(buf: memoryview, pos: int, end: int):
    """Yield ``(field, wire, a, b, key_pos)`` for each field of the message in buf[pos:end].

    Varint: a = value, b = end. Length-delimited, fixed32, fixed64: a = payload start, b = end.
    """
    while pos < end:
        key_pos = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(key_pos, "malformed field (number 0)")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos, key_pos
            continue
        if wire == _LEN:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == _FIXED32:
            stop = pos + 4
        elif wire == _FIXED64:
            stop = pos + 8
        else:
            raise _Malformed(key_pos, f"malformed field {number} (wire type {wire})")
        if stop > end:
            raise _Malformed(pos, f"truncated (field {number} needs {stop - pos} bytes, {end - pos} left)")
        yield number, wire, pos, stop, key_pos
        pos = stop


def _unpacked_run(buf: memoryview, key_pos: int, end: int, width: int, dtype: str) -> tuple[np.ndarray, int]:
    """Decode consecutive unpacked elements sharing the one-byte key at ``key_pos``, vectorised.

    Old writers emit ``repeated float data`` as (key byte, 4 value bytes) records; the run ends
    at the first record whose key differs. Returns (values, position after the run).
    """
    record = 1 + width
    count = (end - key_pos) // record
    records = np.frombuffer(buf, dtype=[("key", "u1"), ("value", dtype)], count=count, offset=key_pos)
    other = np.flatnonzero(records["key"] != buf[key_pos])
    n = int(other[0]) if other.size else count
    return records["value"][:n].copy(), key_pos + n * record


def _blob_shape(buf: memoryview, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for number, wire, a, b, _ in _fields(buf, start, end):
        if number != 1:
            continue
        if wire == _VARINT:
            dims.append(a)
        elif wire == _LEN:
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                dims.append(value)
    return dims


def _parse_blob(buf: memoryview, start: int, end: int) -> np.ndarray:
    """Decode one BlobProto in buf[start:end] into a numpy array of its shape."""
    shape: list[int] | None = None
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    chunks: list[np.ndarray] = []
    pos = start
    while pos < end:
        key_pos = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number in (5, 8) and wire == (_FIXED32 if number == 5 else _FIXED64) and key < 0x80:
            width, dtype = (4, "<f4") if number == 5 else (8, "<f8")
            values, pos = _unpacked_run(buf, key_pos, end, width, dtype)
            chunks.append(values)
            continue
        pos = key_pos
        number, wire, a, b, _ = next(_fields(buf, pos, end))
        pos = b
        if number in (5, 8) and wire == _LEN:
            width, dtype = (4, "<f4") if number == 5 else (8, "<f8")
            if (b - a) % width:
                raise _Malformed(a, f"blob data of {b - a} bytes is not a whole number of {dtype} values")
            chunks.append(np.frombuffer(buf, dtype=dtype, count=(b - a) // width, offset=a))
        elif number == 7 and wire == _LEN:
            shape = _blob_shape(buf, a, b)
        elif number in legacy and wire == _VARINT:
            legacy[number] = a
    data = chunks[0] if len(chunks) == 1 else (np.concatenate(chunks) if chunks else np.zeros(0, "<f4"))
    if shape is None:
        shape = [legacy[1], legacy[2], legacy[3], legacy[4]] if any(legacy.values()) else [data.size]
    expected = math.prod(shape)  # Python ints: a product of huge dims does not wrap to the data's size
    if expected != data.size:
        raise _Malformed(start, f"blob shape {tuple(shape)} holds {expected} values but its data has {data.size}")
    return data.reshape(shape)


def _parse_layer(buf: memoryview, start: int, end: int, v1: bool) -> CaffeLayer:
    """Decode one LayerParameter (or V1LayerParameter) in buf[start:end]."""
    blobs_field = 6 if v1 else 7
    blobs: list[np.ndarray] = []
    other: list[bytes] = []
    interp_147 = b""
    for number, wire, a, b, key_pos in _fields(buf, start, end):
        if number == blobs_field and wire == _LEN:
            blobs.append(_parse_blob(buf, a, b))
        else:
            other.append(bytes(buf[key_pos:b]))
            if number == _INTERP_APPENDED and wire == _LEN:
                interp_147 = bytes(buf[a:b])
    message = caffe_pb2.V1LayerParameter() if v1 else caffe_pb2.LayerParameter()
    try:
        message.ParseFromString(b"".join(other))
        if not v1 and message.type == "Interp" and not message.HasField("interp_param") and interp_147:
            message.interp_param.ParseFromString(interp_147)
    except DecodeError as err:
        raise _Malformed(start, f"layer parameters do not parse ({err})") from None
    if v1:
        message = upgrade_v1_layer(message)
    return CaffeLayer(name=message.name, type=message.type or None, blobs=blobs, params=message)


def _parse_net(buf: memoryview) -> list[CaffeLayer]:
    layers: list[CaffeLayer] = []
    for number, wire, a, b, _ in _fields(buf, 0, len(buf)):
        if number in (100, 2) and wire == _LEN:
            layers.append(_parse_layer(buf, a, b, v1=(number == 2)))
    return layers


def _read_binary(path: Path) -> list[CaffeLayer]:
    size = path.stat().st_size
    # One uninitialised buffer (no zero-fill pass) that the file is read into once; blobs are
    # views of it. A memoryview indexes to Python ints, which the varint decoder needs.
    buf = memoryview(np.empty(size, dtype=np.uint8))
    with open(path, "rb", buffering=0) as handle:
        got = handle.readinto(buf)
    if got != size:
        raise CaffeFileError(path, f"read {got} of {size} bytes")
    try:
        layers = _parse_net(buf)
    except _Malformed as err:
        raise CaffeFileError(path, f"not a valid caffemodel: {err.problem} at byte {err.offset}") from None
    return layers


def _hdf5_blob(path: Path, dataset: object, where: str) -> np.ndarray:
    """One blob of a ``.caffemodel.h5``: a float dataset whose declared size is in the file.

    Caffe writes each blob as an uncompressed float32 (or float64) dataset, so its bytes are
    part of the file; a header declaring more (a chunked dataset with nothing written, or a
    compressed one) is refused before the read allocates it."""
    if not isinstance(dataset, h5py.Dataset):
        raise CaffeFileError(path, f"{where} is not a dataset")
    dtype = dataset.dtype
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        kind = "string" if dtype.kind in "SUO" else "compound" if dtype.names else str(dtype)
        raise CaffeFileError(path, f"{where} is a {kind} dataset, not float32/float64 blob data")
    declared = int(np.prod(dataset.shape, dtype=object)) * dtype.itemsize  # Python ints: no wrap
    try:
        check_declared_bytes(path, f"{where} (shape {tuple(dataset.shape)}, {dtype})", declared)
    except FileBoundError as err:
        raise CaffeFileError(path, err.problem) from None
    return np.asarray(dataset[()])


def _read_hdf5(path: Path) -> list[CaffeLayer]:
    try:
        with h5py.File(path, "r") as h5:
            if "data" not in h5 or not isinstance(h5["data"], h5py.Group):
                raise CaffeFileError(path, "HDF5 file has no 'data' group: not a Caffe .caffemodel.h5")
            layers = []
            for name, group in h5["data"].items():
                if not isinstance(group, h5py.Group):
                    raise CaffeFileError(path, f"data/{name} is not a group of blobs")
                keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
                if any(not k.isdigit() for k in keys):
                    raise CaffeFileError(path, f"data/{name} has non-numeric blob names {keys}")
                blobs = [_hdf5_blob(path, group[k], f"data/{name}/{k}") for k in keys]
                if blobs:
                    layers.append(CaffeLayer(name=name, type=None, blobs=blobs, params=None))
    except CaffeFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise CaffeFileError(path, f"corrupt HDF5 weights ({err})") from None
    return layers


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CaffeFileError(path, "no such file")
    if not path.is_file():
        raise CaffeFileError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise CaffeFileError(path, "not readable")


def is_hdf5(path: str | Path) -> bool:
    """True when the file starts with the HDF5 signature (at 0 or a power-of-two userblock)."""
    with open(path, "rb") as handle:
        for offset in (0, 512, 1024, 2048):
            handle.seek(offset)
            if handle.read(8) == _HDF5_SIGNATURE:
                return True
    return False


def read_caffemodel_layers(path: str | Path) -> list[CaffeLayer]:
    """Read every layer of a ``.caffemodel`` or ``.caffemodel.h5``, in file order.

    Raises ConversionError naming the file for missing, truncated, garbage or corrupt input,
    a layer name repeated where a layer carries blobs, and files with no layers at all.
    """
    path = Path(path)
    _check_readable(path)
    if path.stat().st_size == 0:
        raise CaffeFileError(path, "empty file")
    layers = _read_hdf5(path) if (is_hdf5(path) or path.suffix in (".h5", ".hdf5")) else _read_binary(path)
    if not layers:
        raise CaffeFileError(path, "no layers found: not a Caffe NetParameter")
    # the name keys the weights: a layer with blobs must have it alone; blob-less layers may share
    # one, as Caffe allows (isht7/pytorch-deeplab-resnet's test_513.prototxt names both Inputs `data`)
    with_blobs = {layer.name for layer in layers if layer.blobs}
    seen: set[str] = set()
    for layer in layers:
        if layer.name in seen and layer.name in with_blobs:
            raise CaffeFileError(path, f"layer name {layer.name!r} appears twice")
        seen.add(layer.name)
    return layers


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read a ``.caffemodel`` (binary) or ``.caffemodel.h5``: {layer name: [blobs]} in file order.

    Blobs are numpy arrays of the file's dtype (float32, or float64 for ``double_data``) with
    Caffe's shapes (convolution weights OIHW; BatchNorm ``[mean*s, var*s, [s]]``; legacy
    vectors ``1x1x1xC``). Layers without blobs are left out.
    """
    return {layer.name: layer.blobs for layer in read_caffemodel_layers(path) if layer.blobs}


def read_prototxt(path: str | Path) -> caffe_pb2.NetParameter:
    """Parse a text ``.prototxt`` into a NetParameter; fields outside our schema are skipped."""
    path = Path(path)
    _check_readable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CaffeFileError(path, "not a text prototxt (not UTF-8)") from None
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise CaffeFileError(path, f"not a valid prototxt: {err}") from None
    if not net.layer and not net.layers:
        raise CaffeFileError(path, "prototxt has no layers")
    return net
