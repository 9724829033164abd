#!/usr/bin/env python3
"""Golden files made by real Caffe: small official-topology DeepLab nets, saved by Caffe itself,
with Caffe's output of every layer.

Runs under the reference Caffe's python (``../shared/tools/caffe/README.md``; pycaffe with
DeepLab's ``Interp``), never under this project's venv, and imports nothing of this project: only
``caffe``, numpy, protobuf, scikit-image and the standalone sibling ``dump_caffe_blobs.py``. So the
goldens do not depend on the code they test.

    OPENBLAS_NUM_THREADS=1 GLOG_minloglevel=2 ~/.cache/reference-caffe/venv/bin/python \\
        scripts/make_caffe_goldens.py [--official ../shared/data/official] [--out tests/data/caffe_goldens]
    ... scripts/make_caffe_goldens.py --full OUT_DIR      # full-size ResNet-101, final output only

For each variant (``VARIANTS``):

1. the official prototxt (``cocostuff_deeplabv2_resnet101_train.prototxt`` with its ``${VAR}``
   placeholders filled as the COCO-Stuff run script does, unset ones empty; or
   ``deeplabv2_resnet101_deploy.prototxt``) is parsed with Caffe's own schema;
2. cut to what the reference Caffe runs: the ``ImageSegData`` layer becomes an ``Input`` layer
   named ``data`` (top ``data``, ``1 x 3 x crop x crop``), every layer fed by ``label`` (the label
   Interps, ``SoftmaxWithLoss``, ``SegAccuracy``) is dropped; nothing else changes;
3. reduced (not with ``--full``): stages keep the blocks ``KEEP_BLOCKS`` (the block after a dropped
   one reads the last kept block's output, in every MSC copy), backbone convolutions get
   ``num_output // divisor`` (the classifier keeps the class count);
4. Caffe builds the net (it inserts the ``Split`` layers), random seeded weights are set through
   pycaffe (shared ``param { name }`` blobs once), BatchNorm statistics are calibrated on a photo
   so activations stay O(1)-O(10), and ``net.save`` writes ``net.caffemodel`` (Caffe's
   ``Net::ToProto``: Split layers, renamed bottoms, ``phase``, Interp parameters at field 147);
5. every layer's output is dumped with ``dump_caffe_blobs.run_layers`` for real photos at sizes
   that are not ``8k + 1`` (rounding mistakes hide at 321 and 513). The official MSC graph runs
   only where its three score maps agree in size (``n mod 32`` in 1..6 per axis, from its
   ``zoom_factor`` resizing), so MSC uses 67x67 (pool1's ceil matters in the 1x branch) and
   101x69 (it matters in the 0.5x and 0.75x branches); the deploy graph 67x67 and 97x75.

Output per variant under ``--out``: ``net.prototxt`` (the exact text given to Caffe),
``net.caffemodel``, ``blobs_<H>x<W>.npz`` (float32, keyed by Caffe layer name, ``data`` = the
input: BGR minus the graph's mean, ``1 x 3 x H x W``), ``meta.json``; plus ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# before caffe loads OpenBLAS: repeatable bit for bit on one CPU kernel (across CPUs the floats
# drift by a few 1e-6; the tests bound that: docs/ci.md, "Golden files on another CPU")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dump_caffe_blobs as dump  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OFFICIAL = REPO.parent / "shared" / "data" / "official"
DEFAULT_OUT = REPO / "tests" / "data" / "caffe_goldens"
TRAIN_PROTOTXT = "cocostuff_deeplabv2_resnet101_train.prototxt"
DEPLOY_PROTOTXT = "deeplabv2_resnet101_deploy.prototxt"
VOC_TEST_PROTOTXT = "deeplabv2_resnet101_voc12_test.prototxt"
VOC_TEST_SCALE1_PROTOTXT = "deeplabv2_resnet101_voc12_test_scale1.prototxt"
COCOSTUFF_TEST_PROTOTXT = "cocostuff_deeplabv2_resnet101_test.prototxt"
#: the published graphs' data layers: the one making ``data`` becomes an ``Input`` layer ``data``;
#: their other tops (label, data_dim) are cut (isht7's test_513.prototxt has an ``Input`` ``data``
#: for each of ``data`` and ``label``)
DATA_TYPES = ("ImageSegData", "HDF5Data", "Input")
#: the fork's evaluation layers the reference Caffe lacks: cut, with every layer reading what they make
FORK_ONLY_TYPES = ("SegAccuracy", "MatWrite", "DenseCRF")
VOC_MEAN_BGR = (104.008, 116.669, 122.675)
#: the COCO-Stuff run script's values; EXP and NUM_LABELS come from the variant
TRAIN_VARS = {"NET_ID": "deeplabv2_resnet101"}
#: residual blocks kept per stage in the reduced nets
KEEP_BLOCKS = {"2": ("a", "b"), "3": ("a", "b1", "b2", "b3"), "4": ("a", "b1", "b2", "b3"), "5": ("a", "b")}
#: layer names of a residual block (any MSC copy): res2c_branch2a, bn2c_branch2a_res05, res2c_relu, ...
_BLOCK_LAYER = re.compile(r"^(?:res|bn|scale)(?P<stage>[2-5])(?P<block>[a-z]\d*)(?:_|$)")
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
RESIZE = "skimage"  # the reference venv has no OpenCV; the input is stored as `data` anyway
SEED = 20261126


@dataclass(frozen=True)
class Variant:
    """One golden: which official graph, how it is filled and reduced, how it is run.

    ``divisors``: backbone ``num_output`` divisor per stage (``conv1`` = stem, ``res2`` ..
    ``res5``); ``sizes``: ``(H, W)`` inputs with the photo used for each (pixels).
    """

    name: str
    prototxt: str
    exp: str | None
    num_labels: int
    phase: str  # "TRAIN" or "TEST"
    divisors: dict[str, int]
    sizes: tuple[tuple[int, int, str], ...]
    unequal: tuple[tuple[int, int], ...] = ()  # sizes where fc_fusion's inputs disagree (README)
    official_graph: bool = False  # also write graph.prototxt: reduced, data and evaluation layers kept


#: backbone num_output divisors per stage: every stage's 1x1/3x3 branch gets 2 channels and its
#: output 8, so the dumps (hundreds of layers) and the classifier (4 x 3x3 x 8 x classes, three
#: copies) stay small
DIVISORS = {"conv1": 32, "res2": 32, "res3": 64, "res4": 128, "res5": 256}
#: The train graph loads the same in TRAIN and TEST phase once data, label and loss layers are cut
#: (its only include rules are on those), so one variant per class count, phases mixed.
VARIANTS = (
    Variant("voc12_msc_train", TRAIN_PROTOTXT, "voc12", 21, "TRAIN", DIVISORS,
            ((67, 67, "astronaut"), (101, 69, "chelsea")), unequal=((97, 75),)),
    Variant("cocostuff182_msc_train", TRAIN_PROTOTXT, "cocostuff", 182, "TRAIN", DIVISORS, ((67, 67, "astronaut"),)),
    Variant("cocostuff183_msc_test", TRAIN_PROTOTXT, "cocostuff", 183, "TEST", DIVISORS, ((67, 67, "chelsea"),)),
    Variant("coco91_msc_train", TRAIN_PROTOTXT, "coco", 91, "TRAIN", DIVISORS, ((67, 67, "astronaut"),)),
    Variant("voc12_deploy", DEPLOY_PROTOTXT, None, 21, "TEST", DIVISORS, ((67, 67, "astronaut"), (97, 75, "chelsea"))),
    # the released test nets: the score map upsampled by fc1_interp (zoom 8) after the classifier
    Variant("voc12_msc_testnet", VOC_TEST_PROTOTXT, None, 21, "TEST", DIVISORS, ((67, 67, "coffee"),),
            official_graph=True),
    Variant("voc12_scale1_testnet", VOC_TEST_SCALE1_PROTOTXT, None, 21, "TEST", DIVISORS, ((53, 43, "chelsea"),),
            official_graph=True),
    Variant("cocostuff182_msc_testnet", COCOSTUFF_TEST_PROTOTXT, "cocostuff", 182, "TEST", DIVISORS,
            ((37, 35, "astronaut"),), official_graph=True),
)
FULL_VARIANTS = (
    Variant("cocostuff182_msc_train_full", TRAIN_PROTOTXT, "cocostuff", 182, "TRAIN", {}, ((321, 321, "astronaut"),)),
    Variant("voc12_deploy_full", DEPLOY_PROTOTXT, None, 21, "TEST", {}, ((321, 321, "astronaut"),)),
)


# ----------------------------------------------------------------------------- the graph


def substitute(text: str, values: dict[str, str]) -> str:
    """Fill ``${VAR}`` placeholders as the official run script's sed does (unset -> empty)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def layer_blocks(text: str) -> tuple[str, list[str]]:
    """Split prototxt text into its net-level text and the bodies of its top-level ``layer { }``
    blocks (braces in comments and strings ignored)."""
    header: list[str] = []
    blocks: list[str] = []
    depth, last, start, i = 0, 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if c == '"':
            i = text.index('"', i + 1)  # the official files hold no escaped quotes
        elif c == "{":
            if depth == 0:
                match = re.search(r"\blayer\s*:?\s*$", text[last:i])
                if match is None:
                    raise SystemExit(f"error: a top-level block other than 'layer' at character {i}")
                header.append(text[last:last + match.start()])
                start = i + 1
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start:i])
                last = i + 1
        i += 1
    header.append(text[last:])
    return "".join(header), blocks


def load_official(path: Path, values: dict[str, str]) -> tuple[Any, set[str]]:
    """The official prototxt at ``path``, placeholders filled, as Caffe's ``NetParameter``, and
    the ``(name, type)`` of layers holding fields Caffe's schema lacks (the fork's ``ImageSegData``
    ``scale_factors``/``label_type``, ``seg_accuracy_param``): those are parsed with the unknown
    fields skipped, every other layer strictly, so a kept layer is exactly as official."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    header, blocks = layer_blocks(substitute(path.read_text(), values))
    net = caffe_pb2.NetParameter()
    text_format.Merge(header, net)
    lenient = set()
    for body in blocks:
        layer = net.layer.add()
        try:
            text_format.Merge(body, layer)
        except text_format.ParseError:
            layer.Clear()
            text_format.Merge(body, layer, allow_unknown_field=True)
            lenient.add((layer.name, layer.type))
    return net, lenient


def graph_mean(net: Any) -> tuple[float, float, float]:
    """BGR mean of the graph: its data layer's ``transform_param.mean_value``, else VOC's."""
    for layer in net.layer:
        if layer.type == "ImageSegData" and len(layer.transform_param.mean_value) == 3:
            return tuple(round(float(v), 6) for v in layer.transform_param.mean_value)  # float32 in the proto
    return VOC_MEAN_BGR


def cut_for_reference(net: Any) -> Any:
    """The data layer (``ImageSegData``, ``HDF5Data``, ``Input``) making ``data`` -> ``Input`` named ``data``
    (``1 x 3 x crop x crop``, 321 without a crop); the fork's evaluation layers the reference
    lacks (``FORK_ONLY_TYPES``) and layers fed by ``label`` (label Interps, losses, SegAccuracy,
    Silence) or by a cut layer, directly or not, dropped. In place; returns net."""
    from caffe.proto import caffe_pb2

    label_blobs = set()
    kept = []
    for layer in net.layer:
        if layer.type in DATA_TYPES:
            label_blobs.update(top for top in layer.top if top != "data")
            if "data" in layer.top:
                crop = int(layer.transform_param.crop_size) or 321
                data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
                data.input_param.shape.add().dim.extend([1, 3, crop, crop])
                kept.append(data)
            continue
        if layer.type in FORK_ONLY_TYPES or any(bottom in label_blobs for bottom in layer.bottom):
            label_blobs.update(layer.top)
            continue
        kept.append(layer)
    del net.layer[:]
    net.layer.extend(kept)
    return net


def reduce_depth(net: Any, keep: dict[str, tuple[str, ...]]) -> Any:
    """Drop residual blocks not in ``keep`` (every MSC copy); later layers read the last kept
    block's output instead of a dropped block's (the chain skips it). In place; returns net."""
    alias: dict[str, str] = {}
    kept = []
    for layer in net.layer:
        match = _BLOCK_LAYER.match(layer.name)
        bottoms = [alias.get(b, b) for b in layer.bottom]
        if match and match["block"] not in keep[match["stage"]]:
            if layer.type == "Eltwise" and len(set(bottoms)) != 1:  # shortcut and branch both skip to one blob
                raise SystemExit(f"error: dropping {layer.name} does not collapse to one input: {bottoms}")
            for top in layer.top:
                alias[top] = bottoms[0]
            continue
        del layer.bottom[:]
        layer.bottom.extend(bottoms)
        kept.append(layer)
    del net.layer[:]
    net.layer.extend(kept)
    return net


def _stage_key(name: str) -> str | None:
    """``conv1`` for the stem conv (any copy), ``res<S>`` for a residual branch conv, else None."""
    if name == "conv1" or name.startswith("conv1_res"):
        return "conv1"
    match = _BLOCK_LAYER.match(name)
    return f"res{match['stage']}" if match else None


def reduce_width(net: Any, divisors: dict[str, int]) -> Any:
    """Backbone convolutions get ``num_output // divisors[stage]``; the classifier keeps its
    class count. In place; returns net."""
    for layer in net.layer:
        stage = _stage_key(layer.name)
        if layer.type == "Convolution" and stage is not None and divisors.get(stage, 1) > 1:
            p = layer.convolution_param
            if p.num_output % divisors[stage]:
                raise SystemExit(f"error: {layer.name}: {p.num_output} outputs do not divide by {divisors[stage]}")
            p.num_output //= divisors[stage]
    return net


def variant_values(variant: Variant) -> dict[str, str]:
    """The ``${VAR}`` values the run script gives ``variant``'s official prototxt."""
    return dict(TRAIN_VARS, EXP=variant.exp or "", NUM_LABELS=str(variant.num_labels))


def official_graph_text(variant: Variant, official: Path) -> str:
    """The official graph filled and reduced as ``net.prototxt`` is, but nothing cut: its data
    layer, label branch and evaluation layers kept (what a user passes with ``--prototxt``).
    Layers holding fields Caffe's schema lacks (the fork's data and evaluation layers) are
    written as the official text has them; the others as Caffe's ``text_format`` writes them."""
    from google.protobuf import text_format

    path = official / variant.prototxt
    net, lenient = load_official(path, variant_values(variant))
    verbatim = {layer.name: body for layer, body in zip(net.layer, layer_blocks(substitute(path.read_text(),
                                                                                             variant_values(variant)))[1])
                if (layer.name, layer.type) in lenient}
    reduce_depth(net, KEEP_BLOCKS)
    reduce_width(net, variant.divisors)
    header = type(net)()
    header.CopyFrom(net)
    del header.layer[:]
    parts = [text_format.MessageToString(header)]
    for layer in net.layer:
        body = verbatim.get(layer.name)
        parts.append(f"layer {{{body}}}\n" if body is not None else
                     f"layer {{\n{text_format.MessageToString(layer, indent=2)}}}\n")
    return "".join(parts)


def build_graph(variant: Variant, official: Path, reduced: bool) -> tuple[Any, tuple[float, float, float]]:
    """The NetParameter given to Caffe for ``variant`` and its BGR mean."""
    values = variant_values(variant)
    net, lenient = load_official(official / variant.prototxt, values)
    mean = graph_mean(net)
    cut_for_reference(net)
    kept_lenient = sorted(lenient & {(layer.name, layer.type) for layer in net.layer})
    if kept_lenient:
        raise SystemExit(f"error: layers {kept_lenient} hold fields the reference Caffe cannot parse")
    if reduced:
        reduce_depth(net, KEEP_BLOCKS)
        reduce_width(net, variant.divisors)
    return net, mean


# ----------------------------------------------------------------------------- the weights


def shared_blobs(net_param: Any) -> dict[tuple[str, int], tuple[str, int]]:
    """``(layer, blob index) -> (owner layer, blob index)`` for every parameter blob whose
    ``param { name }`` appeared on an earlier layer (the MSC copies), as the prototxt says.

    Caffe shares the data of these, except BatchNorm's: this Caffe's ``UpgradeNetBatchNorm``
    clears the ``param`` specs of a BatchNorm layer that declares three, so each copy keeps its
    own statistics (``copy_unshared`` fills them with the owner's, as in an official snapshot).
    """
    owners: dict[str, tuple[str, int]] = {}
    shared = {}
    for layer in net_param.layer:
        for i, spec in enumerate(layer.param):
            if spec.name in owners:
                shared[(layer.name, i)] = owners[spec.name]
            elif spec.name:
                owners[spec.name] = (layer.name, i)
    return shared


def _scale_factor(rng: np.random.Generator) -> float:
    """A BatchNorm moving-average factor s != 1: U(0.5, 0.75) or U(1.5, 5), half each."""
    return float(rng.uniform(0.5, 0.75) if rng.random() < 0.5 else rng.uniform(1.5, 5.0))


def set_random_weights(net: Any, net_param: Any, rng: np.random.Generator) -> None:
    """Seeded weights through pycaffe, each owned blob once (in graph order).

    Convolutions: N(0, 1) filters, each scaled to He's expected norm sqrt(2) (classifier
    branches half that), bias N(0, 0.5); Scale: gamma U(0.8, 1.2), times 0.1 on each residual
    branch's last one (``branch2c``) so the random net is not chaotic and float32 round-off stays
    a few 1e-6 after ~40 layers, beta N(0, 0.3). BatchNorm gets placeholder statistics here;
    ``calibrate_batchnorm`` sets the real ones.
    """
    types = {layer.name: layer.type for layer in net_param.layer}
    shared = shared_blobs(net_param)
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if (name, i) in shared:
                continue
            shape = blob.data.shape
            if types[name] == "Convolution":
                head = name.startswith("fc1")
                if i == 0:  # each filter scaled to He's expected norm sqrt(2): no weak channels
                    value = rng.normal(0.0, 1.0, shape)
                    value *= np.sqrt(2.0) * (0.5 if head else 1.0) / np.sqrt((value ** 2).sum(axis=(1, 2, 3), keepdims=True))
                else:
                    value = rng.normal(0.0, 0.5, shape)
            elif types[name] == "Scale":
                gamma = rng.uniform(0.8, 1.2, shape) * (0.1 if "branch2c" in name else 1.0)
                value = gamma if i == 0 else rng.normal(0.0, 0.3, shape)
            elif types[name] == "BatchNorm":
                value = np.ones(shape)
            else:
                raise SystemExit(f"error: layer {name} ({types[name]}) has blobs; no rule for them")
            blob.data[...] = value.astype(np.float32)


def calibrate_batchnorm(net: Any, net_param: Any, x: np.ndarray, rng: np.random.Generator) -> None:
    """Run ``x`` layer by layer up to the last BatchNorm that owns its blobs; before each such
    layer set its statistics from the blob it normalises (per channel: mean + 0.2 std N(0,1),
    variance x U(0.8, 1.25) plus a floor), stored as Caffe keeps them: ``[mean * s, var * s, [s]]``
    with ``s = _scale_factor``. Then every BatchNorm MSC copy (not shared by this Caffe, see
    ``shared_blobs``) gets its owner's blobs."""
    shared = shared_blobs(net_param)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    names = list(net._layer_names)
    types = {name: layer.type for name, layer in zip(names, net.layers)}
    owners = [i for i, name in enumerate(names) if types[name] == "BatchNorm" and (name, 0) not in shared]
    for index in range(owners[-1] + 1 if owners else 0):  # a graph without BatchNorm (VGG16) has none
        name = names[index]
        if index in owners:
            bottom = net.blobs[net.bottom_names[name][0]].data.astype(np.float64)
            mean = bottom.mean(axis=(0, 2, 3))
            var = bottom.var(axis=(0, 2, 3))
            var = var * rng.uniform(0.8, 1.25, var.shape) + 0.1 * var.mean() + 1e-3
            mean = mean + 0.2 * np.sqrt(var) * rng.normal(0.0, 1.0, mean.shape)
            s = _scale_factor(rng)
            blobs = net.params[name]
            blobs[0].data[...] = (mean * s).astype(np.float32)
            blobs[1].data[...] = (var * s).astype(np.float32)
            blobs[2].data[...] = np.float32(s)
        net._forward(index, index)
    for (name, i), (owner, owner_index) in shared.items():
        if types[name] == "BatchNorm":
            net.params[name][i].data[...] = net.params[owner][owner_index].data


def check_sharing(net: Any, net_param: Any) -> None:
    """Every MSC copy's blob equals its owner's (Caffe shares the memory; BatchNorm copied)."""
    for (name, i), (owner, owner_index) in shared_blobs(net_param).items():
        if not np.array_equal(net.params[name][i].data, net.params[owner][owner_index].data):
            raise SystemExit(f"error: {name}[{i}] differs from {owner}[{owner_index}], whose param name it shares")


# ----------------------------------------------------------------------------- running Caffe


def photo_input(photo: str, size: tuple[int, int], mean: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-image photo resized to ``size`` (H, W): uint8 BGR image and Caffe's float32
    ``1 x 3 x H x W`` input (BGR minus ``mean``)."""
    bgr = dump.load_image(None, photo, size, RESIZE)
    return bgr, dump.caffe_input(bgr, mean)


def caffe_version() -> dict[str, str]:
    """What built the reference: the sdist, its BVLC commit, the Interp source, and the sha256
    of the pycaffe extension actually loaded."""
    import caffe

    so = Path(caffe._caffe.__file__)
    return {"caffe": "brocolli-caffe 9.0.2 (BVLC Caffe 9b89154) + Interp from DrSleep/deeplab-public-ver2 a11f8a2",
            "caffe_version": str(getattr(caffe, "__version__", "?")), "pycaffe": str(so),
            "pycaffe_sha256": dump.sha256_file(so), "interp_param_field": str(interp_field())}


def interp_field() -> int:
    """The field number of ``LayerParameter.interp_param`` in the Caffe schema that runs here."""
    from caffe.proto import caffe_pb2

    return caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["interp_param"].number


def probe(prototxt: Path, caffemodel: Path, height: int, width: int) -> None:
    """``--probe``: load the net, reshape it to ``height x width`` and print the shapes of the
    final layer's bottoms as JSON (a Caffe that checks Eltwise shapes aborts in the reshape)."""
    import caffe

    caffe.set_mode_cpu()
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.blobs["data"].reshape(1, 3, height, width)
    net.reshape()
    final = list(net._layer_names)[-1]
    print(json.dumps({bottom: list(net.blobs[bottom].data.shape) for bottom in net.bottom_names[final]}))


def fusion_mismatch(prototxt: Path, caffemodel: Path, height: int, width: int) -> dict[str, Any]:
    """Reshape the net to ``height x width`` in a child process (a Caffe CHECK aborts it) and
    report what the final Eltwise gets: Caffe's refusal, or the disagreeing input shapes. Fails
    when the inputs agree (the size was expected to break the MSC fusion)."""
    env = dict(os.environ, GLOG_minloglevel="2")
    result = subprocess.run([sys.executable, __file__, "--probe", str(prototxt), str(caffemodel), str(height), str(width)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [line.split("] ", 1)[-1].strip() for line in result.stderr.splitlines() if "Check failed" in line]
        if not lines:
            raise SystemExit(f"error: Caffe failed at {height}x{width} without a CHECK message:\n{result.stderr[-2000:]}")
        return {"size": [height, width], "refused": lines[0], "bottoms": None}
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    if len({tuple(shape) for shape in shapes.values()}) == 1:
        raise SystemExit(f"error: at {height}x{width} the final layer's inputs agree: {shapes}")
    return {"size": [height, width], "refused": None, "bottoms": shapes}


def command_line() -> str:
    """How this run was started: the BLAS/log settings, the python (home as ``~``), the arguments."""
    python = sys.executable.replace(str(Path.home()), "~", 1)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "GLOG_minloglevel"))
    return f"{env} {python} {' '.join(sys.argv)}"


def make_variant(variant: Variant, official: Path, out: Path, *, reduced: bool = True, seed: int = SEED,
                 final_only: bool = False) -> dict[str, Any]:
    """Build, weight, save and run one variant into ``out/<name>``; returns its meta.json record."""
    import caffe
    from google.protobuf import text_format

    folder = out / variant.name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("blobs_*.npz"):
        old.unlink()
    net_param, mean = build_graph(variant, official, reduced)
    prototxt = folder / "net.prototxt"
    prototxt.write_text(text_format.MessageToString(net_param))
    if variant.official_graph:
        (folder / "graph.prototxt").write_text(official_graph_text(variant, official))
    known = set(caffe.layer_type_list())
    unknown = sorted({layer.type for layer in net_param.layer} - known)
    if unknown:
        raise SystemExit(f"error: {variant.name}: the reference Caffe lacks layer types {unknown}")

    caffe.set_mode_cpu()
    phase = {"TRAIN": caffe.TRAIN, "TEST": caffe.TEST}[variant.phase]
    net = caffe.Net(str(prototxt), phase)
    rng = np.random.default_rng(seed)
    set_random_weights(net, net_param, rng)
    height, width, photo = variant.sizes[0]
    calibrate_batchnorm(net, net_param, photo_input(photo, (height, width), mean)[1], rng)
    check_sharing(net, net_param)
    caffemodel = folder / "net.caffemodel"
    net.save(str(caffemodel))

    dumps = []
    for height, width, photo in variant.sizes:
        bgr, x = photo_input(photo, (height, width), mean)
        if final_only:
            net.blobs["data"].reshape(*x.shape)
            net.reshape()
            net.blobs["data"].data[...] = x
            (output,) = net.outputs  # the one blob no layer reads: fc_fusion (MSC) or fc1_<set>
            final = next(name for name, tops in net.top_names.items() if output in tops)
            blobs = {"data": x, final: np.array(net.forward()[output], dtype=np.float32, copy=True)}
        else:
            blobs = dump.run_layers(net, x)
        meta = dump.dump_meta(caffemodel, prototxt, f"skimage:{photo}", bgr, mean, RESIZE, "cpu", len(blobs) - 1)
        path = dump.save_dump(folder / f"blobs_{height}x{width}.npz", blobs, meta)
        dumps.append({"file": path.name, "photo": photo, "size": [height, width], "layers": len(blobs) - 1})

    unequal = [fusion_mismatch(prototxt, caffemodel, h, w) for h, w in variant.unequal]
    record = {
        "variant": variant.name, "official_prototxt": variant.prototxt,
        "substitutions": {"EXP": variant.exp, "NUM_LABELS": variant.num_labels} if variant.exp else None,
        "phase": variant.phase, "reduced": reduced,
        "keep_blocks": {f"res{k}": list(v) for k, v in KEEP_BLOCKS.items()} if reduced else None,
        "width_divisors": variant.divisors if reduced else None,
        "seed": seed, "mean_bgr": list(mean), "resize": RESIZE, "dumps": dumps, "unequal_fusion": unequal,
        "caffemodel_sha256": dump.sha256_file(caffemodel), "caffemodel_bytes": caffemodel.stat().st_size,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "command": command_line(),
    } | caffe_version() | ({"graph_prototxt": "graph.prototxt"} if variant.official_graph else {})
    (folder / "meta.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def _mismatch_line(variant: str, record: dict[str, Any]) -> str:
    """One README line for a size where the MSC fusion's inputs disagree."""
    h, w = record["size"]
    if record["refused"]:
        return f"- `{variant}` at {h}x{w}: Caffe refuses: `{record['refused']}`"
    shapes = ", ".join(f"`{name}` {'x'.join(map(str, shape))}" for name, shape in record["bottoms"].items())
    return (f"- `{variant}` at {h}x{w}: the inputs of the final Eltwise MAX disagree ({shapes}) and this Caffe "
            "does not refuse: its `EltwiseLayer::Reshape` has the shape CHECK commented out, so it would read "
            "past the smaller maps. No golden is made at such a size.")


def write_readme(out: Path, records: list[dict[str, Any]]) -> Path:
    """``README.md`` next to the goldens, from the records: what each is, and the sizes the
    official MSC graph cannot run."""
    rows = []
    for r in records:
        files = sorted(p.name for p in (out / r["variant"]).iterdir())
        size = sum((out / r["variant"] / f).stat().st_size for f in files)
        inputs = ", ".join(f"{d['size'][0]}x{d['size'][1]} {d['photo']} ({d['layers']} layers)" for d in r["dumps"])
        subs = ", ".join(f"{k}={v}" for k, v in (r["substitutions"] or {}).items()) or "-"
        rows.append(f"| `{r['variant']}` | `{r['official_prototxt']}` | {subs} | {r['phase']} | {inputs} | "
                    f"{size / 1e6:.2f} MB |")
    mismatches = [_mismatch_line(r["variant"], m) for r in records for m in r["unequal_fusion"]]
    first = records[0]
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    text = f"""# Golden files made by real Caffe

Written by `scripts/make_caffe_goldens.py` (never by hand: rerun it) under the reference Caffe
({first['caffe']}; `interp_param` is field {first['interp_param_field']} in its schema) with
`OPENBLAS_NUM_THREADS={first['openblas_num_threads']}`, seed {first['seed']}; {total / 1e6:.1f} MB in all:

    {first['command']}

Each folder: `net.prototxt` (the exact text given to Caffe: the official graph with its `${{VAR}}`s
filled, `ImageSegData` replaced by an `Input` layer `data`, the label branch cut, blocks kept
{', '.join(f'{k} {"/".join(v)}' for k, v in first['keep_blocks'].items())}, backbone `num_output`
divided by {', '.join(f'{k} {v}' for k, v in first['width_divisors'].items())}), `net.caffemodel` (saved by Caffe's
`net.save`), `blobs_<H>x<W>.npz` (every layer's output, float32, keyed by Caffe layer name; `data`
= the input: a scikit-image photo resized with scikit-image, BGR minus the graph's mean) and
`meta.json` (seed, sizes, mean, Caffe build, command). The released test nets' folders also hold
`graph.prototxt`: the same reduced graph with nothing cut (its `HDF5Data` / `ImageSegData` layer,
label, `SegAccuracy`, `MatWrite`, `Silence` as the official file has them), what a user passes
with `--prototxt`.

| variant | official graph | filled | phase | inputs | size |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

The official MSC graph resizes the 0.5x and 0.75x score maps by `zoom_factor`
(`fc1_*_res05_interp`: zoom 2; `fc1_*_res075_interp`: shrink 3, zoom 4), not to the 1x map's size,
so where the rounding differs the three maps fed to `fc_fusion` (Eltwise MAX) have different
shapes. Checked each time the goldens are made:
{chr(10).join(mismatches) or '- none'}
"""
    path = out / "README.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL, help="folder of the official prototxts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the goldens go")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to (re)make (default: all)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--full", type=Path, default=None, metavar="DIR",
                        help="instead: full-size official graphs, caffemodels and the final output at 321x321 into DIR")
    parser.add_argument("--graph", type=Path, default=None, metavar="PROTOTXT",
                        help="instead: any published DeepLab prototxt (not a committed golden): filled with --set, cut, "
                             "reduced, saved and dumped at 67x67 into --out/<its stem>, with graph.prototxt")
    parser.add_argument("--set", nargs="*", default=[], metavar="VAR=VALUE",
                        help="with --graph: ${VAR} values (EXP, NUM_LABELS, ...; unset ones become empty)")
    parser.add_argument("--probe", nargs=4, default=None, metavar=("PROTOTXT", "CAFFEMODEL", "H", "W"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(Path(args.probe[0]), Path(args.probe[1]), int(args.probe[2]), int(args.probe[3]))
        return 0
    start = time.perf_counter()
    if args.graph is not None:
        values = dict(item.split("=", 1) for item in args.set)
        variant = Variant(args.graph.stem, args.graph.name, values.get("EXP"), int(values.get("NUM_LABELS") or 21),
                          "TEST", DIVISORS, ((67, 67, "astronaut"),), official_graph=True)
        record = make_variant(variant, args.graph.parent, args.out, seed=args.seed)
        print(f"wrote {args.out / variant.name}: {record['dumps'][0]['layers']} layers dumped")
        return 0
    if args.full is not None:
        for variant in FULL_VARIANTS:
            record = make_variant(variant, args.official, args.full, reduced=False, seed=args.seed, final_only=True)
            print(f"wrote {args.full / variant.name}: {record['caffemodel_bytes'] / 1e6:.0f} MB caffemodel, "
                  f"{time.perf_counter() - start:.0f} s so far")
        return 0
    variants = [v for v in VARIANTS if args.only is None or v.name in args.only]
    for variant in variants:
        make_variant(variant, args.official, args.out, seed=args.seed)
        print(f"wrote {args.out / variant.name} ({time.perf_counter() - start:.0f} s)")
    made = [json.loads((args.out / v.name / "meta.json").read_text()) for v in VARIANTS
            if (args.out / v.name / "meta.json").is_file()]  # with --only, the others as they were made
    write_readme(args.out, made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
