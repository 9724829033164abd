"""Synthetic DeepLab-ResNet Caffe files: the official graph and naming, seeded random weights.

Tests, ``deeplab-convert --dataset synthetic``, the README's demo and the smoke parity suite
use these instead of downloads. Pure numpy + ``caffe_pb2`` (no torch).

Graph (``deeplab_prototxt``): DeepLab v2's ResNet deploy net with the official names:
``data`` -> ``conv1`` / ``bn_conv1`` / ``scale_conv1`` / ``conv1_relu`` -> ``pool1``; blocks
``res{S}{B}_branch{1,2a,2b,2c}`` each followed by in-place ``bn{S}{B}_branch..`` and
``scale{S}{B}_branch..``, ReLUs ``res{S}{B}_branch2a_relu`` / ``_branch2b_relu``, Eltwise SUM
``res{S}{B}`` (bottoms: shortcut, branch2c) and ``res{S}{B}_relu``; the ASPP ``fc1_<set>_c{i}``
summed into ``fc1_<set>`` (one branch: a single conv ``fc1_<set>``). MSC nets add the input
pyramid ``data075`` / ``data05`` (Interp), repeat backbone + classifier with layer and top names
suffixed ``_res075`` / ``_res05`` sharing weights through ``param { name }`` (``<layer>_w`` /
``<layer>_b`` for Convolution and Scale, ``<layer>_mean`` / ``_var`` / ``_factor`` for
BatchNorm, always the un-suffixed layer's name), resize the copies' scores to the 1x map with
``fc1_<set>_res075_interp`` / ``fc1_<set>_res05_interp`` (explicit height/width) and fuse the
three maps with Eltwise MAX ``fc_fusion``. The ``"opencv"`` flavour writes the pyramid's
``shrink_factor`` Interps with explicit height/width instead (OpenCV 4 has no shrink_factor).

Weights (``random_blobs`` / ``random_caffemodel``), all float32:
- Convolution: ``[weight OIHW]`` (+ ``[bias (O,)]`` when ``bias_term``), He-normal.
- BatchNorm: ``[mean * s, var * s, [s]]`` with Caffe's moving-average scale factor ``s``
  (per layer in [0.5, 5] unless fixed), variances positive.
- Scale: ``[gamma, beta]``.
MSC copies repeat their original's arrays (Caffe saves shared blobs again under each layer).

Binary files are serialised by hand from numpy bytes, field by field in field-number order as
protobuf (and so Caffe) writes them: never float by float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from caffe_proto import caffe_pb2
from models import caffe_interp_size
from converter.write import blobs_as_written, caffemodel_bytes, write_caffemodel, write_caffemodel_h5  # noqa: F401 (re-exported)

# (shrink_factor, zoom_factor) of an MSC scale -> the suffix of its copy's layer names.
MSC_SUFFIXES = {(4, 3): "res075", (2, 1): "res05"}

# Parameter-sharing names of each parameterised layer type (MSC nets), blob order.
_PARAM_NAMES = {"Convolution": ("w", "b"), "BatchNorm": ("mean", "var", "factor"), "Scale": ("w", "b")}



# --------------------------------------------------------------------------------------------
# Caffe size arithmetic
# --------------------------------------------------------------------------------------------

def interp_size(n: int, *, shrink: int = 1, zoom: int = 1) -> int:
    """Caffe Interp output length for shrink then zoom (one axis)."""
    return caffe_interp_size(n, n, shrink=shrink, zoom=zoom)[0]


def score_size(n: int, config: dict) -> int:
    """Length of the score map for an input of length ``n`` (Caffe arithmetic, ceil pool1)."""
    stem = config["stem"]
    n = (n + 2 * stem["conv_pad"] - stem["conv_kernel"]) // stem["conv_stride"] + 1
    k, s, p = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
    pooled = -(-(n + 2 * p - k) // s) + 1
    if p and (pooled - 1) * s >= n + p:  # the last window may not start in the padding
        pooled -= 1
    n = pooled
    for stage in config["stages"]:
        n = (n - 1) // stage["stride"] + 1  # 1x1 conv with the stride; 3x3 convs keep the size
    branch = config["classifier"]["branches"][0]
    return n + 2 * branch["pad"] - branch["dilation"] * (branch["kernel"] - 1)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------

class _GraphWriter:
    """Appends layers to a NetParameter; an MSC copy suffixes layer and top names.

    ``share`` adds ``param { name }`` entries named after the un-suffixed layer (MSC nets).
    """

    def __init__(self, net: caffe_pb2.NetParameter, suffix: str = "", share: bool = False) -> None:
        self.net = net
        self.suffix = suffix
        self.share = share

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}" if self.suffix else base

    def _layer(self, base: str, kind: str, bottoms: list[str], tops: list[str], n_params: int = 0) -> caffe_pb2.LayerParameter:
        layer = self.net.layer.add(name=self.name(base), type=kind, bottom=bottoms, top=tops)
        if self.share:
            for tag in _PARAM_NAMES.get(kind, ())[:n_params]:
                layer.param.add(name=f"{base}_{tag}")
        return layer

    def conv(self, base: str, bottom: str, out: int, kernel: int, *, stride: int = 1, pad: int = 0,
             dilation: int = 1, bias: bool = False) -> str:
        top = self.name(base)
        layer = self._layer(base, "Convolution", [bottom], [top], 2 if bias else 1)
        p = layer.convolution_param
        p.num_output = out
        if pad:
            p.pad.append(pad)
        p.kernel_size.append(kernel)
        if stride != 1:
            p.stride.append(stride)
        p.bias_term = bias
        if dilation != 1:
            p.dilation.append(dilation)
        return top

    def bn_scale(self, bn: str, scale: str, top: str, eps: float) -> None:
        layer = self._layer(bn, "BatchNorm", [top], [top], 3)
        layer.batch_norm_param.use_global_stats = True
        layer.batch_norm_param.eps = eps
        self._layer(scale, "Scale", [top], [top], 2).scale_param.bias_term = True

    def relu(self, base: str, top: str) -> None:
        self._layer(base, "ReLU", [top], [top])

    def eltwise(self, base: str, bottoms: list[str], op: int) -> str:
        top = self.name(base)
        self._layer(base, "Eltwise", bottoms, [top]).eltwise_param.operation = op
        return top

    def network(self, config: dict, data: str, classifier_set: str) -> str:
        """Backbone and classifier on ``data``; returns the score map's top."""
        stem, eps = config["stem"], config["bn_eps"]
        top = self.conv("conv1", data, stem["channels"], stem["conv_kernel"], stride=stem["conv_stride"],
                        pad=stem["conv_pad"])
        self.bn_scale("bn_conv1", "scale_conv1", top, eps)
        self.relu("conv1_relu", top)
        pool = self._layer("pool1", "Pooling", [top], [self.name("pool1")])
        pp = pool.pooling_param
        pp.pool = caffe_pb2.PoolingParameter.MAX
        pp.kernel_size, pp.stride, pp.pad = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
        top = self.name("pool1")
        for stage in config["stages"]:
            number = stage["name"].removeprefix("res")
            d = stage["dilation"]
            for i, block in enumerate(stage["blocks"]):
                ident = f"{number}{block}"
                stride = stage["stride"] if i == 0 else 1
                if i == 0:
                    shortcut = self.conv(f"res{ident}_branch1", top, stage["out_channels"], 1, stride=stride)
                    self.bn_scale(f"bn{ident}_branch1", f"scale{ident}_branch1", shortcut, eps)
                else:
                    shortcut = top
                branch = self.conv(f"res{ident}_branch2a", top, stage["mid_channels"], 1, stride=stride)
                self.bn_scale(f"bn{ident}_branch2a", f"scale{ident}_branch2a", branch, eps)
                self.relu(f"res{ident}_branch2a_relu", branch)
                branch = self.conv(f"res{ident}_branch2b", branch, stage["mid_channels"], 3, pad=d, dilation=d)
                self.bn_scale(f"bn{ident}_branch2b", f"scale{ident}_branch2b", branch, eps)
                self.relu(f"res{ident}_branch2b_relu", branch)
                branch = self.conv(f"res{ident}_branch2c", branch, stage["out_channels"], 1)
                self.bn_scale(f"bn{ident}_branch2c", f"scale{ident}_branch2c", branch, eps)
                top = self.eltwise(f"res{ident}", [shortcut, branch], caffe_pb2.EltwiseParameter.SUM)
                self.relu(f"res{ident}_relu", top)
        branches, n_classes = config["classifier"]["branches"], config["n_classes"]
        if len(branches) == 1:
            b = branches[0]
            return self.conv(f"fc1_{classifier_set}", top, n_classes, b["kernel"], pad=b["pad"],
                             dilation=b["dilation"], bias=b.get("bias", True))
        tops = [self.conv(f"fc1_{classifier_set}_c{i}", top, n_classes, b["kernel"], pad=b["pad"],
                          dilation=b["dilation"], bias=b.get("bias", True)) for i, b in enumerate(branches)]
        return self.eltwise(f"fc1_{classifier_set}", tops, caffe_pb2.EltwiseParameter.SUM)


def deeplab_prototxt(config: dict, *, flavour: str = "caffe", input_size: tuple[int, int] = (513, 513),
                     classifier_set: str = "voc12") -> caffe_pb2.NetParameter:
    """The DeepLab-ResNet (v2) deploy graph of a model config (docs/architecture.md).

    Input ``data`` is ``1 x 3 x H x W`` (``input_size = (H, W)``). ``flavour="caffe"`` writes
    the MSC pyramid as DeepLab does (``shrink_factor``/``zoom_factor``); ``"opencv"`` writes
    every shrink Interp with the explicit height/width Caffe would compute.
    """
    if flavour not in ("caffe", "opencv"):
        raise ValueError(f"flavour must be 'caffe' or 'opencv', got {flavour!r}")
    h, w = input_size
    net = caffe_pb2.NetParameter(name="DeepLab-ResNet")
    net.input.append("data")
    net.input_shape.add().dim.extend([1, config.get("in_channels", 3), h, w])
    msc = config.get("msc")
    if not msc:
        _GraphWriter(net).network(config, "data", classifier_set)
        return net

    copies = []
    for scale in msc["scales"]:
        key = (scale["shrink"], scale.get("zoom", 1))
        if key not in MSC_SUFFIXES:
            raise ValueError(f"MSC scale shrink {key[0]} zoom {key[1]} has no DeepLab name (known: {sorted(MSC_SUFFIXES)})")
        suffix = MSC_SUFFIXES[key]
        data = "data" + suffix.removeprefix("res")  # data075, data05
        layer = net.layer.add(name=data, type="Interp", bottom=["data"], top=[data])
        p = layer.interp_param
        if flavour == "opencv":
            p.height, p.width = caffe_interp_size(h, w, shrink=key[0], zoom=key[1])
        else:
            if key[1] != 1:
                p.zoom_factor = key[1]
            p.shrink_factor = key[0]
        copies.append((suffix, data))
    fused = [_GraphWriter(net, share=True).network(config, "data", classifier_set)]
    scores = [(_GraphWriter(net, suffix, share=True).network(config, data, classifier_set)) for suffix, data in copies]
    final_h, final_w = score_size(h, config), score_size(w, config)
    for top in scores:
        layer = net.layer.add(name=f"{top}_interp", type="Interp", bottom=[top], top=[f"{top}_interp"])
        layer.interp_param.height, layer.interp_param.width = final_h, final_w
        fused.append(f"{top}_interp")
    layer = net.layer.add(name="fc_fusion", type="Eltwise", bottom=fused, top=["fc_fusion"])
    layer.eltwise_param.operation = caffe_pb2.EltwiseParameter.MAX
    return net


def deeplab_prototxt_text(config: dict, *, flavour: str = "caffe", input_size: tuple[int, int] = (513, 513),
                          classifier_set: str = "voc12") -> str:
    """``deeplab_prototxt`` in protobuf text format (a ``.prototxt``)."""
    net = deeplab_prototxt(config, flavour=flavour, input_size=input_size, classifier_set=classifier_set)
    return text_format.MessageToString(net)


def write_prototxt(path: str | Path, net: caffe_pb2.NetParameter) -> Path:
    """Write ``net`` as a text ``.prototxt``; returns the path."""
    path = Path(path)
    path.write_text(text_format.MessageToString(net))
    return path


# --------------------------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------------------------

def msc_base_name(name: str) -> str:
    """``"res2a_branch2a_res075"`` -> ``"res2a_branch2a"``; other names unchanged."""
    for suffix in MSC_SUFFIXES.values():
        if name.endswith(f"_{suffix}"):
            return name[: -len(suffix) - 1]
    return name


def _input_channels(net: caffe_pb2.NetParameter) -> dict[str, int]:
    channels = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape) and len(net.input_shape[i].dim) > 1:
            channels[name] = int(net.input_shape[i].dim[1])
        elif len(net.input_dim) >= 4 * (i + 1):
            channels[name] = int(net.input_dim[4 * i + 1])
        else:
            channels[name] = 3
    return channels


def random_blobs(net: caffe_pb2.NetParameter, *, seed: int = 0, bn_scale_factor: float | None = None,
                 include_msc_copies: bool = True) -> dict[str, list[np.ndarray]]:
    """Seeded random float32 blobs for every Convolution / BatchNorm / Scale layer of ``net``.

    Scales keep a ResNet-101 forward O(1)-O(10) on a mean-subtracted 0-255 image:
    He-normal convolutions (``conv1`` divided by 60, the input's spread), BatchNorm mean
    ~N(0, 0.5) and variance ~U(0.5, 2) stored times ``s`` (``bn_scale_factor``, or per layer
    ~U(0.5, 5) when None), Scale gamma ~U(0.6, 1.2) (~U(0.1, 0.3) on ``branch2c`` so residual
    sums stay bounded), beta and conv biases ~N(0, 0.1). MSC copies (``_res075``/``_res05``)
    get their original's arrays when ``include_msc_copies``, else no entry.
    """
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}
    channels = _input_channels(net)
    for layer in net.layer:
        c_in = channels.get(layer.bottom[0]) if layer.bottom else None
        if layer.type == "Convolution":
            channels[layer.top[0]] = layer.convolution_param.num_output
        elif layer.top and c_in is not None:
            channels[layer.top[0]] = c_in
        if layer.type not in _PARAM_NAMES:
            continue
        base = msc_base_name(layer.name)
        if base != layer.name:
            if include_msc_copies and base in blobs:
                blobs[layer.name] = blobs[base]
            continue
        if c_in is None:
            raise ValueError(f"layer {layer.name!r}: unknown number of input channels of {layer.bottom[0]!r}")
        if layer.type == "Convolution":
            p = layer.convolution_param
            k = p.kernel_size[0] if p.kernel_size else p.kernel_h
            kw = p.kernel_size[-1] if p.kernel_size else p.kernel_w
            group = p.group or 1
            fan_in = c_in // group * k * kw
            std = np.sqrt(2.0 / fan_in) / (60.0 if base == "conv1" else 1.0)
            weight = rng.standard_normal((p.num_output, c_in // group, k, kw), dtype=np.float32) * np.float32(std)
            arrays = [weight]
            if p.bias_term:
                arrays.append(rng.normal(0.0, 0.1, p.num_output).astype(np.float32))
        elif layer.type == "BatchNorm":
            s = np.float32(rng.uniform(0.5, 5.0) if bn_scale_factor is None else bn_scale_factor)
            mean = rng.normal(0.0, 0.5, c_in).astype(np.float32)
            var = rng.uniform(0.5, 2.0, c_in).astype(np.float32)
            arrays = [mean * s, var * s, np.array([s], np.float32)]
        else:  # Scale
            low, high = (0.1, 0.3) if "branch2c" in base else (0.6, 1.2)
            arrays = [rng.uniform(low, high, c_in).astype(np.float32), rng.normal(0.0, 0.1, c_in).astype(np.float32)]
        blobs[layer.name] = arrays
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


def random_caffemodel(net: caffe_pb2.NetParameter, *, seed: int = 0, bn_scale_factor: float | None = None,
                      include_msc_copies: bool = True, legacy_shapes: bool = False, double_data: bool = False,
                      unpacked: bool = False, v1_layers: bool = False) -> SyntheticCaffemodel:
    """``random_blobs`` of ``net`` serialised by ``caffemodel_bytes`` (see both for the options)."""
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
                           msc_copies: bool = True) -> SyntheticModel:
    """Write ``<name>.prototxt`` (Caffe flavour), ``<name>_opencv.prototxt`` and ``<name>.caffemodel``.

    The caffemodel carries every layer's parameters (the graph travels with the weights) and
    packed float32 blobs. ``msc_copies=False`` leaves the blobs of the ``_res075``/``_res05``
    copies out (their layers stay), a third of the size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = deeplab_prototxt(config, input_size=input_size, classifier_set=classifier_set)
    prototxt = write_prototxt(out_dir / f"{name}.prototxt", net)
    opencv = write_prototxt(out_dir / f"{name}_opencv.prototxt",
                            deeplab_prototxt(config, flavour="opencv", input_size=input_size, classifier_set=classifier_set))
    blobs = random_blobs(net, seed=seed, include_msc_copies=msc_copies)
    caffemodel = out_dir / f"{name}.caffemodel"
    written = write_caffemodel(caffemodel, net, blobs)
    return SyntheticModel(prototxt, opencv, caffemodel, written)
