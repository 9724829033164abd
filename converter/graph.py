"""Derive a model config from a DeepLab-ResNet layer graph.

Block counts, widths, strides, dilations, pool1's geometry, BatchNorm eps, the classifier
(ASPP branches or the single COCO-init conv), the class count and the MSC scales all come from
the graph (its 1x layers and its input pyramid, see ``converter.topology``), so a smaller net
with the official naming converts too. ``converter.checks`` then compares the graph with the
model built from that config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.mapping import caffe_target, classifier_index
from deeplab_caffe.converter.read import CaffeLayer, upgrade_v1_layer
from deeplab_caffe.converter.topology import Topology
_BRANCH_CONV = re.compile(r"^res(?P<stage>\d)(?P<block>[a-z]\d*)_branch(?P<branch>1|2[abc])$")


def layers_from_net(net: caffe_pb2.NetParameter) -> list[CaffeLayer]:
    """The layers of a parsed prototxt as CaffeLayer (no blobs); old-style V1 ``layers`` are
    upgraded to new-style LayerParameters (``read.upgrade_v1_layer``)."""
    layers = [CaffeLayer(name=p.name, type=p.type, params=p) for p in net.layer]
    for p in net.layers:
        upgraded = upgrade_v1_layer(p)
        layers.append(CaffeLayer(name=upgraded.name, type=upgraded.type or None, params=upgraded))
    return layers


def check_bottoms(net: caffe_pb2.NetParameter, layers: list[CaffeLayer], source: Path | str) -> None:
    """Refuse a layer whose bottom is no net input (``input:``) and no top of an earlier layer,
    as Caffe's ``Net::Init`` ("Unknown bottom blob") and OpenCV's importer refuse it."""
    available = set(net.input)
    for layer in layers:
        for bottom in layer.params.bottom:
            if bottom not in available:
                raise ConversionError(source, f"layer {layer.name}: bottom {bottom!r} is no net input and no top "
                                              f"of an earlier layer (Caffe refuses it: unknown bottom blob)")
        available.update(layer.params.top)


def net_input_size(net: caffe_pb2.NetParameter) -> tuple[int, int] | None:
    """The ``(H, W)`` of a prototxt's net-level input (``input_shape`` or legacy ``input_dim``)."""
    if net.input_shape and len(net.input_shape[0].dim) == 4:
        return int(net.input_shape[0].dim[2]), int(net.input_shape[0].dim[3])
    if len(net.input_dim) >= 4:
        return int(net.input_dim[2]), int(net.input_dim[3])
    return None


@dataclass(frozen=True)
class ConvGeometry:
    """A Convolution layer's hyper-parameters (square kernels only)."""

    num_output: int
    kernel: int
    stride: int
    pad: int
    dilation: int
    bias: bool
    group: int


def conv_geometry(layer: CaffeLayer, source: Path | str) -> ConvGeometry:
    """Read kernel/stride/pad/dilation (repeated or _h/_w forms) of a Convolution layer."""
    p = layer.params.convolution_param

    def square(values, h: int, w: int, has_hw: bool, default: int, what: str) -> int:
        if has_hw:
            if h != w:
                raise ConversionError(source, f"layer {layer.name}: non-square {what} {h}x{w} is not supported")
            return h
        if not values:
            return default
        if len(set(values)) != 1:
            raise ConversionError(source, f"layer {layer.name}: non-square {what} {list(values)} is not supported")
        return int(values[0])

    kernel = square(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 1, "kernel")
    stride = square(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, "stride")
    pad = square(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0, "pad")
    dilation = square(p.dilation, 0, 0, False, 1, "dilation")
    return ConvGeometry(int(p.num_output), kernel, stride, pad, dilation, bool(p.bias_term), int(p.group))


def derive_config(topo: Topology, source: Path | str) -> dict:
    """Derive a ``models.build_model`` config (docs/architecture.md) from a DeepLab-ResNet graph
    (or a DeepLab-VGG16 one: ``derive_vgg_config``).

    Values are taken from the 1x net's layers (the first block of each stage) and the input
    pyramid; ``converter.checks`` verifies every layer against the built model.
    """
    if topo.family == "vgg":
        return derive_vgg_config(topo, source)
    base = topo.unique_layers()
    stem = _derive_stem({layer.name: layer for layer in base}, source)
    stages = _derive_stages(base, source)
    eps_values = {round(float(layer.params.batch_norm_param.eps), 12) for layer in base if layer.type == "BatchNorm"}
    if len(eps_values) > 1:
        raise ConversionError(source, f"BatchNorm layers use different eps values {sorted(eps_values)}")
    bn_eps = eps_values.pop() if eps_values else 1e-5
    branches = _derive_classifier(base, source)
    n_classes = {g.num_output for g in branches.values()}
    if len(n_classes) != 1:
        raise ConversionError(source, f"classifier branches disagree on the class count {sorted(n_classes)}")

    return {
        "arch": "deeplab_v2",
        "n_classes": n_classes.pop(),
        "in_channels": 3,
        "bn_eps": bn_eps,
        "stem": stem,
        "stages": [stages[s] for s in sorted(stages)],
        "classifier": {"branches": [
            {"kernel": g.kernel, "dilation": g.dilation, "pad": g.pad, "bias": g.bias}
            for _, g in sorted(branches.items())
        ]},
        "msc": {"scales": [{"shrink": int(layer.params.interp_param.shrink_factor),
                             "zoom": int(layer.params.interp_param.zoom_factor)} for layer in topo.pyramid]}
        if topo.pyramid else None,
    }


def _derive_stem(by_name: dict[str, CaffeLayer], source: Path | str) -> dict:
    """conv1 and pool1's geometry."""
    def need(name: str, kind: str) -> CaffeLayer:
        layer = by_name.get(name)
        if layer is None or layer.type != kind:
            raise ConversionError(source, f"no {kind} layer {name!r}: not a DeepLab-ResNet graph")
        return layer

    conv1 = conv_geometry(need("conv1", "Convolution"), source)
    pool1 = need("pool1", "Pooling").params.pooling_param
    return {
        "channels": conv1.num_output, "conv_kernel": conv1.kernel, "conv_stride": conv1.stride,
        "conv_pad": conv1.pad, "pool_kernel": int(pool1.kernel_size or pool1.kernel_h),
        "pool_stride": int(pool1.stride_h or pool1.stride), "pool_pad": int(pool1.pad_h or pool1.pad),
    }


def _derive_stages(base: list[CaffeLayer], source: Path | str) -> dict[int, dict]:
    """Stages res2..res5: block ids in order, widths, stride and dilation of the first block."""
    stages: dict[int, dict] = {}
    for layer in base:
        match = _BRANCH_CONV.match(layer.name)
        if not match or layer.type != "Convolution":
            continue
        stage = stages.setdefault(int(match["stage"]), {"name": f"res{match['stage']}", "blocks": []})
        if match["block"] not in stage["blocks"]:
            stage["blocks"].append(match["block"])
        if match["block"] == stage["blocks"][0]:
            geometry = conv_geometry(layer, source)
            if match["branch"] == "2a":
                stage["mid_channels"], stage["stride"] = geometry.num_output, geometry.stride
            elif match["branch"] == "2b":
                stage["dilation"] = geometry.dilation
            elif match["branch"] == "2c":
                stage["out_channels"] = geometry.num_output
    if sorted(stages) != [2, 3, 4, 5]:
        raise ConversionError(source, f"expected residual stages res2..res5, found {['res%d' % s for s in sorted(stages)]}")
    for number, stage in stages.items():
        missing = {"mid_channels", "out_channels", "stride", "dilation"} - set(stage)
        if missing:
            raise ConversionError(source, f"stage res{number} block {stage['blocks'][0]} lacks branch convolutions")
    return stages


def _derive_classifier(base: list[CaffeLayer], source: Path | str) -> dict[int, ConvGeometry]:
    """The classifier convolutions (ASPP branches or the single conv), by branch index."""
    branches: dict[int, ConvGeometry] = {}
    for layer in base:
        index = classifier_index(layer.name)
        if layer.type == "Convolution" and index is not None:
            if index in branches:
                raise ConversionError(source, f"layer {layer.name}: classifier branch {index} appears twice")
            branches[index] = conv_geometry(layer, source)
    if not branches:
        raise ConversionError(source, "no classifier convolution (fc1_*): not a DeepLab-ResNet graph")
    if sorted(branches) != list(range(len(branches))):
        raise ConversionError(source, f"classifier branches are numbered {sorted(branches)}, expected 0..{len(branches) - 1}")
    return branches


def pool_spec(layer: CaffeLayer) -> dict:
    """A Pooling layer as a ``models.vgg`` POOL: kind, kernel, stride, pad (square only)."""
    p = layer.params.pooling_param
    kind = {caffe_pb2.PoolingParameter.MAX: "max", caffe_pb2.PoolingParameter.AVE: "ave"}.get(p.pool, "stochastic")
    return {"kind": kind, "kernel": int(p.kernel_size or p.kernel_h), "stride": int(p.stride_h or p.stride),
            "pad": int(p.pad_h or p.pad)}


def derive_vgg_config(topo: Topology, source: Path | str) -> dict:
    """A ``deeplab_vgg`` config from a DeepLab-VGG16 graph (LargeFOV or ASPP-L): each stage's conv
    widths and its first conv's pad/dilation, the pools, ``pool5a`` if present, the fc6
    geometry of each branch, the fc6/fc7 width, the dropout ratio and the class count.
    ``converter.checks`` then compares every layer with the built model."""
    if topo.pyramid:
        raise ConversionError(source, "a multi-scale (MSC) DeepLab-VGG16 graph: only single-scale VGG graphs are supported")
    base = topo.unique_layers()
    by_name = {layer.name: layer for layer in base}
    stages = []
    for s in range(1, 6):
        convs = [conv_geometry(layer, source) for layer in base
                 if layer.type == "Convolution" and re.fullmatch(rf"conv{s}_\d+", layer.name)]
        pool = by_name.get(f"pool{s}")
        if not convs or pool is None or pool.type != "Pooling":
            raise ConversionError(source, f"no conv{s}_* convolutions followed by a Pooling pool{s}: "
                                          "not a DeepLab-VGG16 graph")
        stages.append({"channels": [g.num_output for g in convs], "pad": convs[0].pad,
                       "dilation": convs[0].dilation, "pool": pool_spec(pool)})
    fc: dict[str, dict[int, ConvGeometry]] = {"6": {}, "7": {}, "8": {}}
    for layer in base:
        target = caffe_target(layer.name) if layer.type == "Convolution" else None
        if target is not None and target.module.startswith("classifier."):
            index, kind = int(target.module.split(".")[2]), target.module[-1]
            fc[kind][index] = conv_geometry(layer, source)
    branches = sorted(fc["6"])
    if not branches or branches != list(range(len(branches))) or any(sorted(fc[k]) != branches for k in "78"):
        raise ConversionError(source, f"classifier branches fc6 {sorted(fc['6'])}, fc7 {sorted(fc['7'])}, "
                                      f"fc8 {sorted(fc['8'])} (numbered from 1): each branch needs fc6, fc7 and fc8")
    n_classes = {g.num_output for g in fc["8"].values()}
    if len(n_classes) != 1:
        raise ConversionError(source, f"classifier branches disagree on the class count {sorted(n_classes)}")
    ratios = [float(layer.params.dropout_param.dropout_ratio) for layer in base if layer.type == "Dropout"]
    pool5a = by_name.get("pool5a")
    return {
        "arch": "deeplab_vgg", "n_classes": n_classes.pop(), "in_channels": 3, "stages": stages,
        "pool5a": pool_spec(pool5a) if pool5a is not None and pool5a.type == "Pooling" else None,
        "classifier": {"channels": fc["6"][0].num_output, "dropout": ratios[0] if ratios else 0.5,
                       "branches": [{"kernel": fc["6"][i].kernel, "dilation": fc["6"][i].dilation, "pad": fc["6"][i].pad}
                                    for i in branches]},
        "msc": None,
    }
