#!/usr/bin/env python3
"""Golden files made by real Caffe for DeepLab-VGG16: a DeepLab v1 LargeFOV net in Caffe's old
V1 format (``layers``) and the official DeepLab v2 VGG16 ASPP-L graph, reduced, with Caffe's
output of every layer.

Runs under the reference Caffe's python, like ``make_caffe_goldens.py`` (whose graph helpers and
``dump_caffe_blobs.py`` it uses), and imports nothing of this project:

    OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 ~/.cache/reference-caffe/venv/bin/python \\
        scripts/make_caffe_goldens_vgg.py [--official ../shared/data/official] [--out tests/data/caffe_goldens_vgg]

Variants (``VARIANTS``):

- ``largefov_v1``: DeepLab v1 LargeFOV's test graph as the public ``DeepLab-LargeFOV/test.prototxt``
  lays it out (TheLegendAli/DeepLab-Context, a copy of deeplab-public's configs): ``conv1_1`` ..
  ``conv5_3`` with in-place ReLUs, ``pool1``-``pool3`` MAX 3x3 stride 2 pad 1, ``pool4``/``pool5``
  MAX 3x3 stride 1 pad 1, conv5 atrous 2, ``pool5a`` AVE 3x3 stride 1 pad 1, ``fc6`` 3x3 atrous
  12, ``relu6``, ``drop6``, ``fc7`` 1x1, ``relu7``, ``drop7``, ``fc8_voc12`` (21 classes), every
  layer a V1 ``layers`` entry with enum types and ``blobs_lr`` / ``weight_decay``. Written with
  Caffe's own ``caffe_pb2``. Departures, because BVLC Caffe's V1 schema lacks them: the fork's
  ``hole: N`` is written as ``dilation: N``, the net input is a net-level ``input`` (not the
  fork's ``IMAGE_SEG_DATA``), and ``fc8_interp`` (INTERP), ``MAT_WRITE``, ``SEG_ACCURACY`` and
  ``strict_dim`` are left out. Widths divided by 32 (fc6/fc7: 32). Caffe loads the V1 prototxt
  (upgrading it itself); the weights are written back as a V1 ``net_v1.caffemodel`` (``layers``,
  legacy num/channels/height/width blobs, as pre-2015 Caffe wrote them), which a fresh
  ``caffe.Net`` must load to the same values; ``net.caffemodel`` is Caffe's ``net.save`` (the
  upgraded, new-style graph).
- ``vgg16_aspp_cocostuff``: ``cocostuff_deeplabv2_vgg16_train.prototxt`` (EXP=cocostuff,
  NUM_LABELS=182), ``ImageSegData`` -> ``Input``, the label branch cut (``make_caffe_goldens``'s
  ``cut_for_reference``), widths divided by 32, loaded in TEST phase (Dropout is the identity).

Every layer's output is dumped (``dump_caffe_blobs.run_layers``) at sizes that are not ``8k + 1``
(the pools' ceil rounding matters there): LargeFOV at 67x67 and 53x43, ASPP-L at 53x43. Output per variant under ``--out``:
``net.prototxt``, ``net.caffemodel``, (``net_v1.caffemodel``), ``blobs_<H>x<W>.npz``, ``meta.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# before caffe loads OpenBLAS: repeatable bit for bit on one CPU kernel (across CPUs the floats
# drift by a few 1e-6; the tests bound that: docs/ci.md, "Golden files on another CPU")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dump_caffe_blobs as dump  # noqa: E402
import make_caffe_goldens as goldens  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "caffe_goldens_vgg"
VGG_PROTOTXT = "cocostuff_deeplabv2_vgg16_train.prototxt"
DIVISOR = 32
SEED = 20261126
#: variant -> its inputs (H, W, photo); few and small, so the goldens stay under 3 MB
VARIANTS = {"largefov_v1": ((67, 67, "astronaut"), (53, 43, "chelsea")), "vgg16_aspp_cocostuff": ((53, 43, "coffee"),)}
#: VGG16's conv stages: (number of 3x3 convs, width); conv5 is atrous 2 in DeepLab
VGG_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def _v1(net: Any, name: str, kind: str, bottom: str, top: str) -> Any:
    from caffe.proto import caffe_pb2

    layer = net.layers.add(name=name, type=getattr(caffe_pb2.V1LayerParameter, kind), bottom=[bottom], top=[top])
    if kind == "CONVOLUTION":  # as the LargeFOV train graph writes them
        layer.blobs_lr.extend([1, 2])
        layer.weight_decay.extend([1, 0])
    return layer


def _v1_conv(net: Any, name: str, bottom: str, out: int, kernel: int, pad: int, dilation: int) -> str:
    p = _v1(net, name, "CONVOLUTION", bottom, name).convolution_param
    p.num_output = out
    if pad:
        p.pad.append(pad)
    if dilation > 1:
        p.dilation.append(dilation)
    p.kernel_size.append(kernel)
    return name


def _v1_pool(net: Any, name: str, bottom: str, method: str, stride: int) -> str:
    from caffe.proto import caffe_pb2

    p = _v1(net, name, "POOLING", bottom, name).pooling_param
    p.pool = getattr(caffe_pb2.PoolingParameter, method)
    p.kernel_size, p.stride, p.pad = 3, stride, 1
    return name


def largefov_v1_net(height: int, width: int, divisor: int = DIVISOR) -> Any:
    """DeepLab v1 LargeFOV's test graph as V1 ``layers`` (see the module docstring)."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name="DeepLab-LargeFOV")
    net.input.append("data")
    net.input_dim.extend([1, 3, height, width])
    top = "data"
    for s, (n_convs, channels) in enumerate(VGG_STAGES, start=1):
        for i in range(1, n_convs + 1):
            top = _v1_conv(net, f"conv{s}_{i}", top, channels // divisor, 3, 2 if s == 5 else 1, 2 if s == 5 else 1)
            _v1(net, f"relu{s}_{i}", "RELU", top, top)
        top = _v1_pool(net, f"pool{s}", top, "MAX", 2 if s <= 3 else 1)
    top = _v1_pool(net, "pool5a", top, "AVE", 1)
    for index, kernel in (("6", 3), ("7", 1)):
        top = _v1_conv(net, f"fc{index}", top, 1024 // divisor, kernel, 12 if index == "6" else 0,
                       12 if index == "6" else 1)
        _v1(net, f"relu{index}", "RELU", top, top)
        _v1(net, f"drop{index}", "DROPOUT", top, top).dropout_param.dropout_ratio = 0.5
    _v1_conv(net, "fc8_voc12", top, 21, 1, 0, 1)
    return net


def aspp_net(official: Path, divisor: int = DIVISOR) -> tuple[Any, tuple[float, float, float]]:
    """The official DeepLab v2 VGG16 ASPP-L train graph, filled for COCO-Stuff, cut for the
    reference and reduced: every convolution but the ``fc8`` classifiers divided by ``divisor``."""
    net, lenient = goldens.load_official(official / VGG_PROTOTXT, {"EXP": "cocostuff", "NUM_LABELS": "182",
                                                                     "NET_ID": "deeplabv2_vgg16"})
    mean = goldens.graph_mean(net)
    goldens.cut_for_reference(net)
    kept_lenient = sorted(lenient & {(layer.name, layer.type) for layer in net.layer})
    if kept_lenient:
        raise SystemExit(f"error: layers {kept_lenient} hold fields the reference Caffe cannot parse")
    for layer in net.layer:
        if layer.type == "Convolution" and not layer.name.startswith("fc8"):
            layer.convolution_param.num_output //= divisor
    return net, mean


def set_random_weights(net: Any, rng: np.random.Generator) -> None:
    """Seeded weights through pycaffe: each filter N(0, 1) scaled to He's expected norm sqrt(2)
    (the ``fc8`` classifiers half that), biases N(0, 0.5)."""
    for name, blobs in net.params.items():
        weight = rng.normal(0.0, 1.0, blobs[0].data.shape)
        weight *= np.sqrt(2.0) * (0.5 if name.startswith("fc8") else 1.0) / np.sqrt(
            (weight ** 2).sum(axis=(1, 2, 3), keepdims=True))
        blobs[0].data[...] = weight.astype(np.float32)
        blobs[1].data[...] = rng.normal(0.0, 0.5, blobs[1].data.shape).astype(np.float32)


def write_v1_caffemodel(net_param: Any, net: Any, path: Path) -> None:
    """The V1 graph with the weights ``net`` holds, as pre-2015 Caffe wrote a snapshot: V1
    ``layers``, blobs with legacy num/channels/height/width (vectors 1x1x1xN)."""
    from caffe.proto import caffe_pb2

    model = caffe_pb2.NetParameter()
    model.CopyFrom(net_param)
    for layer in model.layers:
        for array in (net.params[layer.name] if layer.name in net.params else []):
            data = np.asarray(array.data, dtype=np.float32)
            dims = data.shape if data.ndim == 4 else (1, 1, 1, data.size)
            blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            blob.data.extend(data.reshape(-1).tolist())
    path.write_bytes(model.SerializeToString())


def check_v1_load(prototxt: Path, caffemodel: Path, net: Any) -> None:
    """A fresh ``caffe.Net`` on the V1 prototxt and V1 caffemodel holds exactly ``net``'s weights."""
    import caffe

    loaded = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if not np.array_equal(loaded.params[name][i].data, blob.data):
                raise SystemExit(f"error: Caffe read {name}[{i}] of {caffemodel.name} differently")


def make_variant(name: str, official: Path, out: Path, seed: int = SEED) -> dict[str, Any]:
    """Build, weight, save and run one variant into ``out/<name>``; returns its meta.json record."""
    import caffe
    from google.protobuf import text_format

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("blobs_*.npz"):
        old.unlink()
    if name == "largefov_v1":
        net_param, mean = largefov_v1_net(*VARIANTS[name][0][:2]), goldens.VOC_MEAN_BGR
    else:
        net_param, mean = aspp_net(official)
    prototxt = folder / "net.prototxt"
    prototxt.write_text(text_format.MessageToString(net_param))
    caffe.set_mode_cpu()
    net = caffe.Net(str(prototxt), caffe.TEST)
    set_random_weights(net, np.random.default_rng(seed))
    if name == "largefov_v1":
        write_v1_caffemodel(net_param, net, folder / "net_v1.caffemodel")
        check_v1_load(prototxt, folder / "net_v1.caffemodel", net)
    caffemodel = folder / "net.caffemodel"
    net.save(str(caffemodel))
    dumps = []
    for height, width, photo in VARIANTS[name]:
        bgr, x = goldens.photo_input(photo, (height, width), mean)
        blobs = dump.run_layers(net, x)
        meta = dump.dump_meta(caffemodel, prototxt, f"skimage:{photo}", bgr, mean, goldens.RESIZE, "cpu", len(blobs) - 1)
        path = dump.save_dump(folder / f"blobs_{height}x{width}.npz", blobs, meta)
        dumps.append({"file": path.name, "photo": photo, "size": [height, width], "layers": len(blobs) - 1})
    record = {
        "variant": name, "official_prototxt": VGG_PROTOTXT if name != "largefov_v1" else None,
        "width_divisor": DIVISOR, "seed": seed, "mean_bgr": list(mean), "resize": goldens.RESIZE, "dumps": dumps,
        "caffemodel_sha256": dump.sha256_file(caffemodel), "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "command": goldens.command_line(),
    } | goldens.caffe_version()
    (folder / "meta.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=goldens.DEFAULT_OFFICIAL, help="folder of the official prototxts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the goldens go")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for name in VARIANTS:
        make_variant(name, args.official, args.out, seed=args.seed)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
