"""Forward parity for the suite: pick a Caffe reference and compare the converted model layer by layer.

References, in order of preference:

1. blob dumps made with real Caffe by ``scripts/dump_caffe_blobs.py`` (``.npz`` or ``.h5``/``.hdf5``):
   one array per Caffe layer output keyed by the layer name, plus ``data`` = the input blob
   (float32 ``N x 3 x H x W``, BGR minus the mean); keys starting with ``_`` are metadata;
2. OpenCV 4.x's Caffe importer (``cv2.dnn.readNetFromCaffe``) on scikit-image's real photos.

The comparisons themselves are ``converter.verify.verify_with_reference`` and
``verify_with_opencv``; this module loads dumps, chooses the reference and names why none exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from deeplab_caffe.converter.conversion import load_graph
from deeplab_caffe.converter.topology import Topology
from deeplab_caffe.converter.verify import (VERIFICATION_IMAGES, ForwardReport, opencv_available, verification_images,
                              verify_with_opencv, verify_with_reference)

HDF5_SUFFIXES = (".h5", ".hdf5")


class BlobDumpError(ValueError):
    """A blob dump that cannot be used; the message names the file and the problem."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


class ReferenceUnavailable(RuntimeError):
    """No Caffe reference can be had here (no OpenCV 4.x and no dump); the message says what to do."""


def _read_dump(path: Path, keys_only: bool) -> tuple[list[str], dict[str, np.ndarray], tuple[int, ...]]:
    """Keys (metadata left out), arrays (empty when ``keys_only``) and the shape of ``data``."""
    if not path.is_file():
        raise BlobDumpError(f"{path}: blob dump not found")
    keys: list[str] = []
    blobs: dict[str, np.ndarray] = {}
    data_shape: tuple[int, ...] = ()
    if path.suffix.lower() in HDF5_SUFFIXES:
        try:
            with h5py.File(path, "r") as h5:
                def visit(name: str, item: object) -> None:
                    nonlocal data_shape
                    if isinstance(item, h5py.Dataset) and not name.split("/")[-1].startswith("_"):
                        keys.append(name)
                        if name == "data":
                            data_shape = tuple(item.shape)
                        if not keys_only:
                            blobs[name] = np.asarray(item[()], dtype=np.float32)
                h5.visititems(visit)
        except OSError as err:
            raise BlobDumpError(f"{path}: not a readable HDF5 file ({err})") from None
    elif path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = [key for key in npz.files if not key.startswith("_")]
                if "data" in keys:
                    data_shape = tuple(npz["data"].shape)
                if not keys_only:
                    blobs = {key: np.asarray(npz[key], dtype=np.float32) for key in keys}
        except (OSError, ValueError) as err:
            raise BlobDumpError(f"{path}: not a readable .npz file ({err})") from None
    else:
        raise BlobDumpError(f"{path}: a blob dump must be .npz, .h5 or .hdf5")
    if "data" not in keys:
        raise BlobDumpError(f"{path}: no 'data' blob (the input); make dumps with scripts/dump_caffe_blobs.py")
    if len(data_shape) != 4 or data_shape[1] != 3:
        raise BlobDumpError(f"{path}: 'data' has shape {data_shape}, expected N x 3 x H x W")
    if len(keys) < 2:
        raise BlobDumpError(f"{path}: holds only the input, no layer outputs")
    return keys, blobs, data_shape


def check_blob_dump(path: str | Path) -> list[str]:
    """Validate a dump without loading its arrays; returns its layer keys (``data`` included)."""
    return _read_dump(Path(path), keys_only=True)[0]


def load_blob_dump(path: str | Path) -> dict[str, np.ndarray]:
    """Read a blob dump (``.npz`` or HDF5) into ``{layer name: float32 array}``.

    HDF5 datasets are keyed by their path inside the file (leading ``/`` dropped); keys (or
    HDF5 names) starting with ``_`` are metadata and left out. ``data`` must be N x 3 x H x W.
    """
    return _read_dump(Path(path), keys_only=False)[1]


def dump_metadata(path: str | Path) -> dict:
    """The ``_meta`` JSON record of a dump (caffemodel sha256, prototxt, image...), or ``{}``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return json.loads(str(npz["_meta"])) if "_meta" in npz.files else {}

        with h5py.File(path, "r") as h5:
            text = h5.attrs.get("_meta")
            return json.loads(text) if text is not None else {}
    except (OSError, ValueError, KeyError):
        return {}


def caffe_graph(caffemodel: str | Path, prototxt: str | Path | None = None) -> Topology:
    """The analysed layer graph: from the prototxt when given, else the one a binary caffemodel stores."""
    return load_graph(Path(caffemodel), Path(prototxt) if prototxt is not None else None)[0]


def photos(names: tuple[str, ...] | list[str], size: int) -> dict[str, np.ndarray]:
    """scikit-image's real photos as uint8 BGR ``size x size`` images (the forward inputs)."""
    try:
        return verification_images(tuple(names), int(size))
    except AttributeError as err:
        raise BlobDumpError(f"unknown scikit-image photo in {list(names)} ({err})") from None


def choose_reference(reference: str | Path | None) -> str:
    """``"dump"`` when a dump is given, else ``"opencv"`` when usable; raises ReferenceUnavailable."""
    if reference is not None:
        return "dump"
    if opencv_available() is not None:
        return "opencv"
    raise ReferenceUnavailable(
        "no Caffe reference: OpenCV 4.x (cv2.dnn.readNetFromCaffe) is not installed and no --reference blob "
        "dump was given (make one where pycaffe is installed with scripts/dump_caffe_blobs.py)")


def check_forward(
    model: torch.nn.Module,
    graph: Topology,
    caffemodel: str | Path,
    *,
    reference: str | Path | None = None,
    images: tuple[str, ...] | list[str] = VERIFICATION_IMAGES,
    size: int = 321,
    rtol: float = 1e-5,
    layer_rtol: float | None = None,
    layer_by_layer: bool = True,
    progress: bool = False,
) -> ForwardReport:
    """Compare ``model`` (converted from ``caffemodel`` with layer ``graph``) with a Caffe reference.

    With ``reference`` (a dump) the dump's own input is used; otherwise OpenCV runs the same
    Caffe files on ``images`` resized to ``size``. The model runs on the CPU in float32, since
    TF32 / reduced precision on a GPU would exceed a 1e-5 tolerance. The returned report names
    the first divergent layer (``report.first_divergent``).
    """
    model = model.float().cpu().eval()
    if choose_reference(reference) == "dump":
        blobs = load_blob_dump(reference)
        return verify_with_reference(model, graph, blobs, rtol=rtol, layer_rtol=layer_rtol, name=Path(reference).name)
    return verify_with_opencv(model, graph, caffemodel, photos(images, size), rtol=rtol, layer_rtol=layer_rtol,
                              layer_by_layer=layer_by_layer, progress=progress)
