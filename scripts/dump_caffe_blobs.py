#!/usr/bin/env python3
"""Dump every layer's output of a real Caffe run, the reference for ``deeplab-parity run --reference``.

Run this where a Caffe with DeepLab's ``Interp`` and its Python bindings (pycaffe, ``import caffe``)
are installed: the DeepLab fork, or the reference Caffe that ``../shared/tools/caffe/build.sh``
builds; nothing else of this project is needed there (numpy, scikit-image or OpenCV for the image,
h5py for ``.h5`` output). The tests run it under that reference Caffe on a committed golden
(``tests/test_caffe_goldens.py``), and ``scripts/make_caffe_goldens.py`` dumps with its functions.

    python scripts/dump_caffe_blobs.py \
        --prototxt test.prototxt --caffemodel train_iter_20000.caffemodel \
        --skimage astronaut --size 321 --output voc12_astronaut.npz [--gpu 0]

then, on the machine with this project:

    deeplab-parity run --rows voc12-release-forward \
        --weights voc12_train=train_iter_20000.caffemodel --reference voc12-release-forward=voc12_astronaut.npz

What it does:

1. the input: ``--image FILE`` (read as BGR) or ``--skimage NAME`` (one of scikit-image's
   photos: RGB -> resize to ``--size`` (``N`` or ``HxW``) -> BGR), as float32 ``1 x 3 x H x W``
   minus ``--mean`` (default the VOC mean ``(104.008, 116.669, 122.675)``; the COCO-Stuff graphs
   use ``104.0 114.1 120.1``). ``--resize cv2-area`` (the default when OpenCV is importable)
   resizes exactly as the suite prepares its photos (``cv2.INTER_AREA``); ``--resize skimage``
   needs only scikit-image (what the reference Caffe's venv has: no OpenCV there), so dumps made
   with it are reproducible in that venv; the input used is stored as ``data`` either way;
2. the graph: the prototxt made a deploy net: data / loss / accuracy layers dropped, ``data``
   becomes an input of the image's shape, layers whose bottoms then do not exist (the label
   branch) dropped; Interp layers stay as they are (real Caffe knows ``shrink_factor``). Real
   Caffe names that input layer ``input`` (the net-level ``input:`` field becomes an ``Input``
   layer of that name);
3. the run: layer by layer (``net.forward(start=name, end=name)``), copying each layer's top
   right after that layer, so in-place layers (BatchNorm, Scale, ReLU writing into the
   convolution's blob) each get their own output;
4. the file: ``.npz`` (compressed) or ``.h5``: one float32 array per layer, keyed by the Caffe
   layer name (``name:top`` for a second top), plus ``data`` = the input and ``_meta`` = JSON
   (caffemodel sha256, prototxt, image, size, mean, resize). ``parity.suite.forward.load_blob_dump``
   reads it.

Single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``) makes a CPU dump repeatable bit for bit on one
CPU; OpenBLAS picks its kernel by CPU (``OPENBLAS_CORETYPE`` overrides it), and across kernels the
outputs differ by up to 5e-6 relative (docs/ci.md, "Golden files on another CPU").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MEAN_BGR = (104.008, 116.669, 122.675)
#: layer types that read data or compute losses/accuracies: not part of a deploy net
DROPPED_TYPES = {"Data", "ImageData", "ImageSegData", "MemoryData", "HDF5Data", "WindowData", "DummyData", "Input",
                 "Silence", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "Accuracy", "SegAccuracy",
                 "MatWrite", "MatRead"}
RESIZERS = ("cv2-area", "skimage")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_size(text: str) -> tuple[int, int]:
    """``"321"`` -> ``(321, 321)``, ``"97x75"`` -> ``(97, 75)`` (height x width, pixels)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive integers, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def default_resizer() -> str:
    """``cv2-area`` when OpenCV is importable (the suite's way), else ``skimage``."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "skimage"
    return "cv2-area"


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], resize: str) -> np.ndarray:
    """uint8 ``H x W x 3`` -> uint8 ``size[0] x size[1] x 3``: OpenCV area (the suite's photos)
    or scikit-image's anti-aliased bilinear resize rounded to uint8 (needs no OpenCV)."""
    height, width = size
    if resize == "cv2-area":
        import cv2

        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    if resize == "skimage":
        from skimage.transform import resize as sk_resize

        out = sk_resize(rgb, (height, width), order=1, anti_aliasing=True, preserve_range=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    raise ValueError(f"resize must be one of {RESIZERS}, got {resize!r}")


def load_image(image: str | None, skimage_name: str | None, size: int | tuple[int, int] | None,
               resize: str | None = None) -> np.ndarray:
    """uint8 ``H x W x 3`` BGR: a file, or a scikit-image photo resized like the suite's inputs.

    ``size``: ``N`` (square) or ``(H, W)``; None keeps a file's size and gives 321 for a photo.
    ``resize``: ``cv2-area`` or ``skimage`` (None: ``default_resizer()``).
    """
    resize = resize or default_resizer()
    shape = (size, size) if isinstance(size, int) else size
    if skimage_name:
        from skimage import data as skdata

        rgb = getattr(skdata, skimage_name)()
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        return resize_rgb(np.ascontiguousarray(rgb[:, :, :3]), shape or (321, 321), resize)[:, :, ::-1].copy()
    if resize == "cv2-area":
        import cv2

        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    else:
        from skimage import io as skio

        rgb = skio.imread(str(image))
        rgb = np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else rgb[:, :, :3]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1]) if rgb.dtype == np.uint8 else None
    if bgr is None:
        raise SystemExit(f"error: cannot read image {image} as 8-bit colour")
    if shape:
        bgr = resize_rgb(bgr[:, :, ::-1].copy(), shape, resize)[:, :, ::-1].copy()
    return bgr


def caffe_input(bgr: np.ndarray, mean_bgr: tuple[float, float, float] = MEAN_BGR) -> np.ndarray:
    """uint8 BGR image -> float32 ``1 x 3 x H x W`` minus the mean (Caffe's ``data`` blob)."""
    blob = bgr.astype(np.float32) - np.asarray(mean_bgr, dtype=np.float32)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def deploy_net(net: Any, shape: tuple[int, ...], caffe_pb2: Any) -> Any:
    """A deploy ``NetParameter`` from a train/test/deploy one (see the module docstring, step 2)."""
    if len(net.layers):
        raise SystemExit("error: old-style (V1 'layers') prototxt; upgrade it with Caffe's upgrade_net_proto_text")
    out = caffe_pb2.NetParameter(name=net.name or "deploy")
    out.input.append("data")
    out.input_shape.add().dim.extend(int(d) for d in shape)
    available = {"data"}
    for layer in net.layer:
        if layer.type in DROPPED_TYPES or "Loss" in layer.type:
            continue
        if any(rule.HasField("phase") and rule.phase == caffe_pb2.TRAIN for rule in layer.include):
            continue
        if not all(bottom in available for bottom in layer.bottom):
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        del copy.include[:]
        del copy.exclude[:]
        available.update(layer.top)
    return out


def run_layers(net: Any, data: np.ndarray) -> dict[str, np.ndarray]:
    """Run a pycaffe ``Net`` one layer at a time; each layer's top(s) copied right after it ran."""
    net.blobs["data"].reshape(*data.shape)
    net.reshape()
    net.blobs["data"].data[...] = data
    outputs = {"data": data.astype(np.float32)}
    types = [layer.type for layer in net.layers]
    for name, kind in zip(list(net._layer_names), types):
        tops = list(net.top_names[name])
        if not tops or tops == ["data"]:
            continue
        net.forward(start=name, end=name)
        if kind == "Split":  # Caffe's own fan-out copies: run, not recorded
            continue
        for i, top in enumerate(tops):
            key = name if i == 0 else f"{name}:{top}"
            outputs[key] = np.array(net.blobs[top].data, dtype=np.float32, copy=True)
    return outputs


def save_dump(path: str | Path, blobs: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``blobs`` + ``_meta`` as ``.npz`` (compressed) or ``.h5`` / ``.hdf5``."""
    path = Path(path)
    text = json.dumps(meta, sort_keys=True)
    if path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "w") as h5:
            h5.attrs["_meta"] = text
            for key, value in blobs.items():
                h5.create_dataset(key.replace("/", "_"), data=np.asarray(value, dtype=np.float32), compression="gzip")
    elif path.suffix.lower() == ".npz":
        np.savez_compressed(path, _meta=np.array(text), **{k: np.asarray(v, dtype=np.float32) for k, v in blobs.items()})
    else:
        raise SystemExit(f"error: --output must end in .npz, .h5 or .hdf5: {path}")
    return path


def dump_meta(caffemodel: str | Path, prototxt: str | Path, image: str, bgr: np.ndarray,
              mean_bgr: tuple[float, float, float], resize: str, mode: str, n_layers: int) -> dict[str, Any]:
    """The ``_meta`` record of a dump (JSON-serialisable; sizes in pixels, ``[H, W]``)."""
    return {"caffemodel": Path(caffemodel).name, "caffemodel_sha256": sha256_file(caffemodel),
            "prototxt": Path(prototxt).name, "image": image, "size": list(bgr.shape[:2]),
            "mean_bgr": [float(m) for m in mean_bgr], "resize": resize, "mode": mode, "layers": n_layers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prototxt", required=True, help="DeepLab train/test/deploy prototxt (layer graph)")
    parser.add_argument("--caffemodel", required=True, help="weights (.caffemodel or .caffemodel.h5)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file (read as BGR)")
    source.add_argument("--skimage", help="a scikit-image photo name: astronaut, coffee, chelsea, ...")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="resize to N x N or H x W ('97x75'; default 321 for --skimage)")
    parser.add_argument("--mean", type=float, nargs=3, default=MEAN_BGR, metavar=("B", "G", "R"),
                        help="mean subtracted from the BGR image (default the VOC mean 104.008 116.669 122.675)")
    parser.add_argument("--resize", choices=RESIZERS, default=None,
                        help="image resizing: cv2-area (the suite's, default when OpenCV is there) or skimage")
    parser.add_argument("--output", required=True, help="dump file: .npz or .h5")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU, which matches best)")
    args = parser.parse_args(argv)

    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    resize = args.resize or default_resizer()
    mean_bgr = tuple(float(m) for m in args.mean)
    bgr = load_image(args.image, args.skimage, args.size, resize)
    data = caffe_input(bgr, mean_bgr)
    net_param = caffe_pb2.NetParameter()
    text_format.Merge(Path(args.prototxt).read_text(), net_param)
    deploy = deploy_net(net_param, data.shape, caffe_pb2)
    deploy_path = Path(args.output).with_suffix(".deploy.prototxt")
    deploy_path.write_text(text_format.MessageToString(deploy))
    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    net = caffe.Net(str(deploy_path), str(args.caffemodel), caffe.TEST)
    blobs = run_layers(net, data)
    meta = dump_meta(args.caffemodel, args.prototxt, args.image or f"skimage:{args.skimage}", bgr, mean_bgr,
                     resize, "cpu" if args.gpu is None else "gpu", len(blobs) - 1)
    save_dump(args.output, blobs, meta)
    print(f"wrote {args.output}: {len(blobs) - 1} layer outputs + data ({deploy_path} is the deploy net used)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
