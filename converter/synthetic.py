"""Synthetic DeepLab Caffe files: the official graphs and what Caffe saves, seeded random weights.

Tests, ``deeplab-convert --dataset synthetic``, the README's demo and the smoke parity suite
use these instead of downloads.

Graph (``deeplab_prototxt``), layer for layer what the official prototxts write
(``../shared/data/official/``: ``deeplabv2_resnet101_deploy.prototxt`` single scale,
``cocostuff_deeplabv2_resnet101_train.prototxt`` MSC, its data layer replaced by the net input
``data``), for any model config:
- ``conv1`` / ``bn_conv1`` / ``scale_conv1`` / ``conv1_relu`` -> ``pool1``; blocks
  ``res{S}{B}_branch{1,2a,2b,2c}`` each followed by in-place ``bn{S}{B}_branch..`` and
  ``scale{S}{B}_branch..``, ReLUs ``res{S}{B}_branch2a_relu`` / ``_branch2b_relu``, Eltwise
  ``res{S}{B}`` (bottoms: shortcut, branch2c) and ``res{S}{B}_relu``; the ASPP
  ``fc1_<set>_c{i}`` summed into ``fc1_<set>`` (one branch: a single conv ``fc1_<set>``).
- ``param`` entries on every parameterised layer: ``<layer>_0`` (backbone convolution, lr 1,
  decay 1), ``bn.._0/1/2`` and ``scale.._0/1`` (lr 0), ``fc1_<set>_c<i>_w`` / ``_b`` (lr 10 /
  decay 1, lr 20 / decay 0); parameters written as the official files write them (``pad: 0``,
  ``stride: 1``, ``bias_term: false``, fillers on the classifier).
- MSC: ``data_res05`` (Interp ``shrink_factor: 2``) and ``data_res075`` (shrink 4, zoom 3),
  the 1x backbone, then its copies on those (names suffixed ``_res05``, then ``_res075``), the
  1x classifier and its copies ``fc1_<set>_res05_c<i>`` summed into ``fc1_<set>_res05`` (then
  ``_res075``), the copies' scores resized to the 1x map by ``fc1_<set>_res05_interp`` (zoom 2)
  and ``fc1_<set>_res075_interp`` (zoom 4, shrink 3), and Eltwise MAX ``fc_fusion`` of
  ``fc1_<set>``, ``.._res075_interp``, ``.._res05_interp``. Copies share the 1x layer's ``param``
  names. The ``"opencv"`` flavour writes the Interps that have a ``shrink_factor`` with explicit
  height/width instead (OpenCV 4 has no shrink_factor).

DeepLab-VGG16 (``vgg_prototxt``): LargeFOV and ASPP-L graphs of a ``deeplab_vgg`` config; old-style
V1 files are written with ``converter.write.v1_net`` / ``write_caffemodel(v1_layers=True)``.

Weights (``random_blobs`` / ``random_caffemodel``), all float32:
- Convolution: ``[weight OIHW]`` (+ ``[bias (O,)]`` when ``bias_term``), He-normal.
- BatchNorm: ``[mean * s, var * s, [s]]`` with Caffe's moving-average scale factor ``s``
  (per layer in [0.5, 5] unless fixed), variances positive.
- Scale: ``[gamma, beta]``.
A layer sharing params by name repeats its owner's arrays (Caffe saves shared blobs again under
each layer). ``make_synthetic_deeplab`` writes the caffemodel Caffe would save: the graph of
``converter.saved_net.saved_net`` (phase-filtered, Split layers, renamed bottoms).

Binary files are serialised by hand from numpy bytes, field by field in field-number order as
protobuf (and so Caffe) writes them: never float by float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import Message

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.models import MSC_CAFFE_SUFFIXES, caffe_interp_size, score_map_size
from deeplab_caffe.converter.saved_net import saved_net
from deeplab_caffe.models.files import write_text_atomic
from deeplab_caffe.converter.write import blobs_as_written, caffemodel_bytes, write_caffemodel, write_caffemodel_h5  # noqa: F401 (re-exported)

# The official graphs' order: the copies' layers (pyramid, backbones, classifiers, resizes) ...
SECTION_ORDER = ("res05", "res075")
# ... and fc_fusion's bottoms after the 1x map.
FUSION_ORDER = ("res075", "res05")

PARAM_TYPES = ("Convolution", "BatchNorm", "Scale")  # the layer types that hold blobs


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

def _specs(layer: caffe_pb2.LayerParameter, base: str, tags: tuple[str, ...], lr: tuple[float, ...],
           decay: tuple[float | None, ...]) -> None:
    """``param { name: "<base>_<tag>" lr_mult decay_mult }`` entries (``decay`` None: not written)."""
    for tag, lr_mult, decay_mult in zip(tags, lr, decay):
        spec = layer.param.add(name=f"{base}_{tag}", lr_mult=lr_mult)
        if decay_mult is not None:
            spec.decay_mult = decay_mult


def _interp(layer: caffe_pb2.LayerParameter, shrink: int, zoom: int, size: tuple[int, int] | None) -> None:
    """Interp parameters as the official graphs write them (factors other than 1, pads 0), or
    ``size`` as explicit height/width (OpenCV 4 has no shrink_factor)."""
    p = layer.interp_param
    if size is not None:
        p.height, p.width = size
    else:
        if shrink != 1:
            p.shrink_factor = shrink
        if zoom != 1:
            p.zoom_factor = zoom
        p.pad_beg, p.pad_end = 0, 0


class _GraphWriter:
    """Appends one scale's layers to a NetParameter, named as the official graphs name them.

    ``suffix`` ("" for the 1x net, "res075"/"res05" for an MSC copy) goes after every layer and
    top name (``res2a_branch2a_res05``), except the classifier branches: ``fc1_<set>_res05_c0``.
    ``param`` names are always the 1x layer's (a copy shares its weights through them).
    """

    def __init__(self, net: caffe_pb2.NetParameter, config: dict, suffix: str = "") -> None:
        self.net, self.config, self.suffix = net, config, suffix

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}" if self.suffix else base

    def _layer(self, name: str, kind: str, bottoms: list[str], tops: list[str]) -> caffe_pb2.LayerParameter:
        return self.net.layer.add(name=name, type=kind, bottom=bottoms, top=tops)

    def conv(self, base: str, bottom: str, out: int, kernel: int, *, stride: int = 1, pad: int = 0,
             dilation: int = 1) -> str:
        """A backbone convolution (no bias): pad, stride and bias_term always written, dilation when > 1."""
        top = self.name(base)
        layer = self._layer(top, "Convolution", [bottom], [top])
        _specs(layer, base, ("0",), (1,), (1,))
        p = layer.convolution_param
        p.num_output = out
        p.kernel_size.append(kernel)
        p.pad.append(pad)
        if dilation != 1:
            p.dilation.append(dilation)
        p.stride.append(stride)
        p.bias_term = False
        return top

    def bn_scale(self, bn: str, scale: str, top: str) -> None:
        """In-place BatchNorm (global stats; eps only when not Caffe's 1e-5) and Scale (with bias), frozen."""
        layer = self._layer(self.name(bn), "BatchNorm", [top], [top])
        layer.batch_norm_param.use_global_stats = True
        if self.config["bn_eps"] != 1e-5:
            layer.batch_norm_param.eps = self.config["bn_eps"]
        _specs(layer, bn, ("0", "1", "2"), (0, 0, 0), (None, None, None))
        layer = self._layer(self.name(scale), "Scale", [top], [top])
        layer.scale_param.bias_term = True
        _specs(layer, scale, ("0", "1"), (0, 0), (None, None))

    def relu(self, base: str, top: str) -> None:
        self._layer(self.name(base), "ReLU", [top], [top])

    def stem(self, data: str) -> str:
        stem = self.config["stem"]
        top = self.conv("conv1", data, stem["channels"], stem["conv_kernel"], stride=stem["conv_stride"],
                        pad=stem["conv_pad"])
        self.bn_scale("bn_conv1", "scale_conv1", top)
        self.relu("conv1_relu", top)
        pool = self._layer(self.name("pool1"), "Pooling", [top], [self.name("pool1")])
        p = pool.pooling_param
        p.kernel_size, p.stride, p.pad = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
        p.pool = caffe_pb2.PoolingParameter.MAX
        return self.name("pool1")

    def block(self, ident: str, bottom: str, stage: dict, first: bool) -> str:
        """Bottleneck ``res<ident>``: projection (first block), 2a (carries the stride), 2b (dilated), 2c, sum, ReLU."""
        stride, d = (stage["stride"] if first else 1), stage["dilation"]
        shortcut = bottom
        if first:
            shortcut = self.conv(f"res{ident}_branch1", bottom, stage["out_channels"], 1, stride=stride)
            self.bn_scale(f"bn{ident}_branch1", f"scale{ident}_branch1", shortcut)
        branch = bottom
        for part, out, kernel, s, pad in (("2a", stage["mid_channels"], 1, stride, 0), ("2b", stage["mid_channels"], 3, 1, d),
                                          ("2c", stage["out_channels"], 1, 1, 0)):
            branch = self.conv(f"res{ident}_branch{part}", branch, out, kernel, stride=s, pad=pad,
                               dilation=d if kernel == 3 else 1)
            self.bn_scale(f"bn{ident}_branch{part}", f"scale{ident}_branch{part}", branch)
            if part != "2c":
                self.relu(f"res{ident}_branch{part}_relu", branch)
        top = self.name(f"res{ident}")
        self._layer(top, "Eltwise", [shortcut, branch], [top])  # SUM, Caffe's default: not written
        self.relu(f"res{ident}_relu", top)
        return top

    def backbone(self, data: str) -> str:
        """``conv1`` ... ``res5c``; returns the last top."""
        top = self.stem(data)
        for stage in self.config["stages"]:
            number = stage["name"].removeprefix("res")
            for i, block in enumerate(stage["blocks"]):
                top = self.block(f"{number}{block}", top, stage, i == 0)
        return top

    def classifier(self, bottom: str, classifier_set: str) -> str:
        """ASPP ``fc1_<set>_c<i>`` summed into ``fc1_<set>`` (one branch: the conv ``fc1_<set>``);
        weights x10 LR, biases x20 LR without decay, Gaussian(0.01)/constant fillers."""
        base = f"fc1_{classifier_set}"
        branches = self.config["classifier"]["branches"]
        tops = []
        for i, b in enumerate(branches):
            shared = f"{base}_c{i}" if len(branches) > 1 else base
            name = (f"{self.name(base)}_c{i}" if len(branches) > 1 else self.name(base))
            layer = self._layer(name, "Convolution", [bottom], [name])
            bias = b.get("bias", True)
            _specs(layer, shared, ("w", "b")[: 1 + bias], (10, 20), (1, 0))
            p = layer.convolution_param
            p.num_output = self.config["n_classes"]
            p.kernel_size.append(b["kernel"])
            p.pad.append(b["pad"])
            p.dilation.append(b["dilation"])
            if not bias:
                p.bias_term = False
            p.weight_filler.type, p.weight_filler.std = "gaussian", 0.01
            if bias:
                p.bias_filler.type, p.bias_filler.value = "constant", 0.0
            tops.append(name)
        if len(tops) == 1:
            return tops[0]
        layer = self._layer(self.name(base), "Eltwise", tops, [self.name(base)])
        layer.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
        return self.name(base)


def _msc_scales(config: dict) -> list[tuple[str, int, int]]:
    """``(suffix, shrink, zoom)`` of the config's MSC scales, in the official graphs' order."""
    scales = []
    for scale in config["msc"]["scales"]:
        key = (scale["shrink"], scale.get("zoom", 1))
        if key not in MSC_CAFFE_SUFFIXES:
            raise ValueError(f"MSC scale shrink {key[0]} zoom {key[1]} has no DeepLab name (known: {sorted(MSC_CAFFE_SUFFIXES)})")
        scales.append((MSC_CAFFE_SUFFIXES[key], *key))
    return sorted(scales, key=lambda s: SECTION_ORDER.index(s[0]))


def _msc(net: caffe_pb2.NetParameter, config: dict, classifier_set: str, hw: tuple[int, int], opencv: bool) -> None:
    """The official MSC layout: pyramid Interps, the 1x backbone then each copy's, the 1x
    classifier then each copy's, the copies' score maps resized to the 1x map, ``fc_fusion``."""
    scales = _msc_scales(config)
    sizes = {}
    for suffix, shrink, zoom in scales:
        sizes[suffix] = caffe_interp_size(*hw, shrink=shrink, zoom=zoom)
        layer = net.layer.add(name=f"data_{suffix}", type="Interp", bottom=["data"], top=[f"data_{suffix}"])
        _interp(layer, shrink, zoom, sizes[suffix] if opencv else None)
    writers = [_GraphWriter(net, config)] + [_GraphWriter(net, config, suffix) for suffix, _, _ in scales]
    features = [w.backbone(f"data_{w.suffix}" if w.suffix else "data") for w in writers]
    scores = [w.classifier(top, classifier_set) for w, top in zip(writers, features)]
    resized = {}
    for (suffix, shrink, zoom), score in zip(scales, scores[1:]):
        layer = net.layer.add(name=f"{score}_interp", type="Interp", bottom=[score], top=[f"{score}_interp"])
        copy_hw = score_map_size(config, sizes[suffix])
        # back to the 1x map: the inverse factors (0.5x: zoom 2; 0.75x: zoom 4, shrink 3)
        explicit = opencv and zoom != 1
        _interp(layer, zoom, shrink, caffe_interp_size(*copy_hw, shrink=zoom, zoom=shrink) if explicit else None)
        resized[suffix] = f"{score}_interp"
    fused = [scores[0]] + [resized[s] for s in FUSION_ORDER if s in resized]
    net.layer.add(name="fc_fusion", type="Eltwise", bottom=fused, top=["fc_fusion"]).eltwise_param.operation = \
        caffe_pb2.EltwiseParameter.MAX


def deeplab_prototxt(config: dict, *, flavour: str = "caffe", input_size: tuple[int, int] = (513, 513),
                     classifier_set: str = "voc12", name: str = "") -> caffe_pb2.NetParameter:
    """The DeepLab-ResNet (v2) graph of a model config, as the official prototxts write it.

    Single scale: the official deploy net (``deeplabv2_resnet101_deploy.prototxt``). MSC: the
    official train net's model layers (``train.prototxt``) with its data layer replaced by the
    net input. Input ``data`` is ``1 x C x H x W`` (``input_size = (H, W)``, ``input_dim`` as the
    deploy net has it). ``flavour="opencv"`` writes every Interp that has a ``shrink_factor``
    with the explicit height/width Caffe would compute (OpenCV 4 has no shrink_factor).
    ``name`` becomes the net's name when given (the deploy net has none).
    """
    if flavour not in ("caffe", "opencv"):
        raise ValueError(f"flavour must be 'caffe' or 'opencv', got {flavour!r}")
    net = caffe_pb2.NetParameter()
    if name:
        net.name = name
    net.input.append("data")
    net.input_dim.extend([1, config.get("in_channels", 3), *input_size])
    if config.get("msc"):
        _msc(net, config, classifier_set, tuple(input_size), flavour == "opencv")
    else:
        writer = _GraphWriter(net, config)
        writer.classifier(writer.backbone("data"), classifier_set)
    return net


def deeplab_prototxt_text(config: dict, *, flavour: str = "caffe", input_size: tuple[int, int] = (513, 513),
                          classifier_set: str = "voc12", name: str = "") -> str:
    """``deeplab_prototxt`` in protobuf text format (a ``.prototxt``)."""
    net = deeplab_prototxt(config, flavour=flavour, input_size=input_size, classifier_set=classifier_set, name=name)
    return text_format.MessageToString(net)


def write_prototxt(path: str | Path, net: caffe_pb2.NetParameter) -> Path:
    """Write ``net`` as a text ``.prototxt``, whole or not at all; returns the path."""
    return write_text_atomic(path, text_format.MessageToString(net))


def _vgg_conv(net: caffe_pb2.NetParameter, name: str, bottom: str, out: int, kernel: int, pad: int,
              dilation: int) -> str:
    """A DeepLab-VGG16 convolution as the official graphs write it (lr 1/2, decay 1/0, bias)."""
    layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    layer.param.add(lr_mult=1, decay_mult=1)
    layer.param.add(lr_mult=2, decay_mult=0)
    p = layer.convolution_param
    p.num_output = out
    if pad:
        p.pad.append(pad)
    p.kernel_size.append(kernel)
    if dilation != 1:
        p.dilation.append(dilation)
    return name


def _vgg_pool(net: caffe_pb2.NetParameter, name: str, bottom: str, spec: dict) -> str:
    p = net.layer.add(name=name, type="Pooling", bottom=[bottom], top=[name]).pooling_param
    p.pool = caffe_pb2.PoolingParameter.MAX if spec["kind"] == "max" else caffe_pb2.PoolingParameter.AVE
    p.kernel_size, p.stride, p.pad = spec["kernel"], spec["stride"], spec["pad"]
    return name


def _relu_dropout(net: caffe_pb2.NetParameter, suffix: str, top: str, ratio: float) -> None:
    """In-place ``relu<suffix>`` and ``drop<suffix>`` on ``top``."""
    net.layer.add(name=f"relu{suffix}", type="ReLU", bottom=[top], top=[top])
    net.layer.add(name=f"drop{suffix}", type="Dropout", bottom=[top], top=[top]).dropout_param.dropout_ratio = ratio


def vgg_prototxt(config: dict, *, input_size: tuple[int, int] = (321, 321), classifier_set: str = "voc12",
                 name: str = "") -> caffe_pb2.NetParameter:
    """The DeepLab-VGG16 graph of a ``deeplab_vgg`` config, named as the official graphs name it.

    ``conv{s}_{i}`` + in-place ``relu{s}_{i}``, ``pool{s}``, ``pool5a`` (LargeFOV), then one
    branch ``fc6`` / ``relu6`` / ``drop6`` / ``fc7`` / ``relu7`` / ``drop7`` / ``fc8_<set>``
    (LargeFOV, DeepLab v1's test.prototxt) or, for several branches, ``fc6_{k}`` ...
    ``fc8_<set>_{k}`` (k from 1) summed by Eltwise ``fc8_<set>`` (DeepLab v2 VGG16 ASPP-L,
    ``cocostuff_deeplabv2_vgg16_train.prototxt``). Input ``data``: ``1 x C x H x W``.
    """
    net = caffe_pb2.NetParameter()
    if name:
        net.name = name
    net.input.append("data")
    net.input_dim.extend([1, config["in_channels"], *input_size])
    top = "data"
    for s, stage in enumerate(config["stages"], start=1):
        for i, width in enumerate(stage["channels"], start=1):
            top = _vgg_conv(net, f"conv{s}_{i}", top, width, 3, stage["pad"], stage["dilation"])
            net.layer.add(name=f"relu{s}_{i}", type="ReLU", bottom=[top], top=[top])
        top = _vgg_pool(net, f"pool{s}", top, stage["pool"])
    if config["pool5a"] is not None:
        top = _vgg_pool(net, "pool5a", top, config["pool5a"])
    head, branches = config["classifier"], config["classifier"]["branches"]
    scores = []
    for k, branch in enumerate(branches, start=1):
        tag = f"_{k}" if len(branches) > 1 else ""
        x = _vgg_conv(net, f"fc6{tag}", top, head["channels"], branch["kernel"], branch["pad"], branch["dilation"])
        _relu_dropout(net, f"6{tag}", x, head["dropout"])
        x = _vgg_conv(net, f"fc7{tag}", x, head["channels"], 1, 0, 1)
        _relu_dropout(net, f"7{tag}", x, head["dropout"])
        scores.append(_vgg_conv(net, f"fc8_{classifier_set}{tag}", x, config["n_classes"], 1, 0, 1))
    if len(scores) > 1:
        net.layer.add(name=f"fc8_{classifier_set}", type="Eltwise", bottom=scores,
                      top=[f"fc8_{classifier_set}"]).eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
    return net


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------

def _channels(net: Message) -> dict[str, int]:
    """Channels of the net inputs (``input_shape``, else ``input_dim``, else 3)."""
    channels = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape) and len(net.input_shape[i].dim) > 1:
            channels[name] = int(net.input_shape[i].dim[1])
        elif len(net.input_dim) >= 4 * (i + 1):
            channels[name] = int(net.input_dim[4 * i + 1])
        else:
            channels[name] = 3
    return channels


def _owner(layer: Message, owners: dict[str, str]) -> str | None:
    """The earlier layer whose blobs ``layer`` shares through its ``param { name }`` entries, if any."""
    names = [p.name for p in layer.param]
    if not any(n in owners for n in names):
        return None
    found = {owners.get(n) for n in names}
    if len(found) != 1 or None in found:
        raise ValueError(f"layer {layer.name!r} shares only some of its params ({names}): not a DeepLab graph")
    return found.pop()


def _fresh_blobs(layer: Message, c_in: int, rng: np.random.Generator, bn_scale_factor: float | None) -> list[np.ndarray]:
    """Seeded float32 blobs of one Convolution / BatchNorm / Scale layer (see ``random_blobs``)."""
    if layer.type == "Convolution":
        p = layer.convolution_param
        k = p.kernel_size[0] if p.kernel_size else p.kernel_h
        kw = p.kernel_size[-1] if p.kernel_size else p.kernel_w
        group = p.group or 1
        std = np.sqrt(2.0 / (c_in // group * k * kw)) / (60.0 if layer.name == "conv1" else 1.0)
        arrays = [rng.standard_normal((p.num_output, c_in // group, k, kw), dtype=np.float32) * np.float32(std)]
        if p.bias_term:
            arrays.append(rng.normal(0.0, 0.1, p.num_output).astype(np.float32))
        return arrays
    if layer.type == "BatchNorm":
        s = np.float32(rng.uniform(0.5, 5.0) if bn_scale_factor is None else bn_scale_factor)
        mean = rng.normal(0.0, 0.5, c_in).astype(np.float32)
        var = rng.uniform(0.5, 2.0, c_in).astype(np.float32)
        return [mean * s, var * s, np.array([s], np.float32)]
    low, high = (0.1, 0.3) if "branch2c" in layer.name else (0.6, 1.2)  # Scale
    return [rng.uniform(low, high, c_in).astype(np.float32), rng.normal(0.0, 0.1, c_in).astype(np.float32)]


def random_blobs(net: Message, *, seed: int = 0, bn_scale_factor: float | None = None,
                 include_msc_copies: bool = True) -> dict[str, list[np.ndarray]]:
    """Seeded random float32 blobs for every Convolution / BatchNorm / Scale layer of ``net``.

    Scales keep a ResNet-101 forward O(1)-O(10) on a mean-subtracted 0-255 image:
    He-normal convolutions (``conv1`` divided by 60, the input's spread), BatchNorm mean
    ~N(0, 0.5) and variance ~U(0.5, 2) stored times ``s`` (``bn_scale_factor``, or per layer
    ~U(0.5, 5) when None), Scale gamma ~U(0.6, 1.2) (~U(0.1, 0.3) on ``branch2c`` so residual
    sums stay bounded), beta and conv biases ~N(0, 0.1). A layer whose ``param { name }``
    entries name an earlier layer's (an MSC copy) shares that layer's arrays, as Caffe does;
    with ``include_msc_copies=False`` it gets no entry. ``net`` may be of any Caffe schema
    (with or without Split layers); tops of layers without bottoms (data layers) have 3 channels.
    """
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}
    owners: dict[str, str] = {}  # param name -> the layer that owns its blob
    channels = _channels(net)
    for layer in net.layer:
        c_in = channels.get(layer.bottom[0]) if layer.bottom else 3
        for top in layer.top:
            channels[top] = layer.convolution_param.num_output if layer.type == "Convolution" else c_in
        if layer.type not in PARAM_TYPES:
            continue
        owner = _owner(layer, owners)
        if owner is not None:
            if include_msc_copies:
                blobs[layer.name] = blobs[owner]
            continue
        if c_in is None:
            raise ValueError(f"layer {layer.name!r}: unknown number of input channels of {layer.bottom[0]!r}")
        blobs[layer.name] = _fresh_blobs(layer, c_in, rng, bn_scale_factor)
        owners.update((p.name, layer.name) for p in layer.param if p.name)
    return blobs


@dataclass
class SyntheticCaffemodel:
    """A serialised caffemodel and the blobs it holds ({layer: [float32 arrays]}, file order).

    ``blobs`` are exactly what a reader gets back (4-D with ``legacy_shapes``, Convolution
    layers only with ``v1_layers``); with ``double_data`` the same values are stored as float64.
    """

    data: bytes
    blobs: dict[str, list[np.ndarray]]

    def message(self) -> caffe_pb2.NetParameter:
        """``data`` parsed by protobuf."""
        return caffe_pb2.NetParameter.FromString(self.data)


def random_caffemodel(net: Message, *, seed: int = 0, bn_scale_factor: float | None = None,
                      include_msc_copies: bool = True, legacy_shapes: bool = False, double_data: bool = False,
                      unpacked: bool = False, v1_layers: bool = False) -> SyntheticCaffemodel:
    """``random_blobs`` of ``net`` serialised with ``net`` as it is by ``caffemodel_bytes`` (see both
    for the options); pass ``saved_net(net)`` for the graph Caffe would save."""
    blobs = random_blobs(net, seed=seed, bn_scale_factor=bn_scale_factor, include_msc_copies=include_msc_copies)
    options = dict(legacy_shapes=legacy_shapes, double_data=double_data, unpacked=unpacked, v1_layers=v1_layers)
    return SyntheticCaffemodel(caffemodel_bytes(net, blobs, **options),
                               blobs_as_written(net, blobs, legacy_shapes=legacy_shapes, v1_layers=v1_layers))


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticModel:
    """Paths of a written synthetic model and the blobs its caffemodel holds ({layer: [arrays]})."""

    prototxt_path: Path
    opencv_prototxt_path: Path
    caffemodel_path: Path
    blobs: dict[str, list[np.ndarray]]


def make_synthetic_deeplab(out_dir: str | Path, config: dict, *, seed: int = 0, input_size: tuple[int, int] = (513, 513),
                           classifier_set: str = "voc12", name: str = "deeplab_resnet",
                           msc_copies: bool = True, phase: str = "TRAIN") -> SyntheticModel:
    """Write ``<name>.prototxt`` (the official graph), ``<name>_opencv.prototxt`` and ``<name>.caffemodel``.

    The caffemodel is what DeepLab's Caffe saves after running the prototxt in ``phase`` (a
    solver snapshot, like the released files, is TRAIN): ``saved_net``'s graph (Split layers,
    renamed bottoms, ``phase`` on every layer, the net input's name) with every layer's
    parameters and packed float32 blobs, each MSC copy holding its shared blobs again.
    ``msc_copies=False`` leaves the copies' blobs out (their layers stay), a third of the size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = deeplab_prototxt(config, input_size=input_size, classifier_set=classifier_set, name=name)
    prototxt = write_prototxt(out_dir / f"{name}.prototxt", net)
    opencv = write_prototxt(out_dir / f"{name}_opencv.prototxt",
                            deeplab_prototxt(config, flavour="opencv", input_size=input_size,
                                             classifier_set=classifier_set, name=name))
    blobs = random_blobs(net, seed=seed, include_msc_copies=msc_copies)
    caffemodel = out_dir / f"{name}.caffemodel"
    written = write_caffemodel(caffemodel, saved_net(net, phase), blobs)
    return SyntheticModel(prototxt, opencv, caffemodel, written)
