"""The DeepLab-ResNet layer graph: derive a model config from it, and check a model against it.

Block counts, widths, strides, dilations, pool1's geometry, BatchNorm eps, the classifier
(ASPP branches or the single COCO-init conv), the class count and MSC all come from the graph,
so a smaller net with the official naming converts too. ``check_hyperparameters`` then compares
every layer of the graph with the PyTorch module built from that config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from caffe_proto import caffe_pb2
from converter.errors import ConversionError
from converter.mapping import caffe_target, classifier_index, split_msc_suffix
from converter.read import _V1_TYPE_NAMES, CaffeLayer

# Layer types the model implements, and types that carry no weights and do not change the
# inference graph (data, loss, bookkeeping). Anything else is an unknown layer type.
MODEL_TYPES = {"Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "Interp"}
IGNORED_TYPES = {
    "Input", "Data", "ImageData", "ImageSegData", "MemoryData", "HDF5Data", "DummyData", "WindowData",
    "SoftmaxWithLoss", "Softmax", "Accuracy", "SegAccuracy", "Silence", "Split", "ArgMax", "MatWrite",
    "MatRead", "DenseCRF",
}
_BRANCH_CONV = re.compile(r"^res(?P<stage>\d)(?P<block>[a-z]\d*)_branch(?P<branch>1|2[abc])$")


def layers_from_net(net: caffe_pb2.NetParameter) -> list[CaffeLayer]:
    """The layers of a parsed prototxt as CaffeLayer (no blobs), V1 types named new-style."""
    layers = [CaffeLayer(name=p.name, type=p.type, params=p) for p in net.layer]
    for p in net.layers:
        enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(p.type)
        layers.append(CaffeLayer(name=p.name, type=_V1_TYPE_NAMES.get(enum_name, enum_name), params=p))
    return layers


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


def check_layer_types(layers: list[CaffeLayer], source: Path | str) -> None:
    """Fail on a layer type the model cannot represent, naming the layer."""
    for layer in layers:
        if layer.type not in MODEL_TYPES and layer.type not in IGNORED_TYPES:
            raise ConversionError(source, f"layer {layer.name}: unknown layer type {layer.type!r}")


def derive_config(layers: list[CaffeLayer], source: Path | str) -> dict:
    """Derive a ``models.build_model`` config (docs/architecture.md) from a DeepLab-ResNet graph.

    ``layers`` carry parameters (from a prototxt or a caffemodel's embedded graph). Values are
    taken from the first block of each stage; ``check_hyperparameters`` verifies every layer.
    """
    check_layer_types(layers, source)
    base = [layer for layer in layers if split_msc_suffix(layer.name)[1] is None]
    by_name = {layer.name: layer for layer in base}

    def need(name: str, kind: str) -> CaffeLayer:
        layer = by_name.get(name)
        if layer is None or layer.type != kind:
            raise ConversionError(source, f"no {kind} layer {name!r}: not a DeepLab-ResNet graph")
        return layer

    conv1 = conv_geometry(need("conv1", "Convolution"), source)
    pool1 = need("pool1", "Pooling").params.pooling_param
    stem = {
        "channels": conv1.num_output, "conv_kernel": conv1.kernel, "conv_stride": conv1.stride,
        "conv_pad": conv1.pad, "pool_kernel": int(pool1.kernel_size or pool1.kernel_h),
        "pool_stride": int(pool1.stride_h or pool1.stride), "pool_pad": int(pool1.pad_h or pool1.pad),
    }

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

    eps_values = {round(float(layer.params.batch_norm_param.eps), 12) for layer in base if layer.type == "BatchNorm"}
    if len(eps_values) > 1:
        raise ConversionError(source, f"BatchNorm layers use different eps values {sorted(eps_values)}")
    bn_eps = eps_values.pop() if eps_values else 1e-5

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
        "msc": _derive_msc(layers, source),
    }


def _derive_msc(layers: list[CaffeLayer], source: Path | str) -> dict | None:
    """MSC scales from the Interp layers that resize the input, in graph order."""
    copies = [layer for layer in layers if split_msc_suffix(layer.name)[1] is not None]
    if not copies:
        return None
    inputs = {"data"}
    scales = []
    for layer in layers:
        if layer.type == "Interp" and list(layer.params.bottom)[:1] and layer.params.bottom[0] in inputs:
            p = layer.params.interp_param
            scales.append({"shrink": int(p.shrink_factor), "zoom": int(p.zoom_factor)})
    if not scales:
        raise ConversionError(source, "MSC copies (_res075/_res05) present but no Interp layer resizes 'data'")
    return {"scales": scales}


@dataclass
class Check:
    """One hyper-parameter comparison between the graph and the model."""

    layer: str
    what: str
    caffe: object
    model: object

    @property
    def ok(self) -> bool:
        return self.caffe == self.model


def _module(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def check_hyperparameters(model, layers: list[CaffeLayer], source: Path | str) -> list[Check]:
    """Compare every graph layer's hyper-parameters with the model; fail on the first mismatch.

    Checks convolutions (out channels, kernel, stride, pad, dilation, bias, group), BatchNorm eps,
    pool1 (MAX, kernel, stride, pad, ceil mode), Eltwise operations (SUM in blocks and the ASPP,
    MAX for the MSC fusion) and ReLU slopes. MSC copies are checked against the same modules.
    Returns every check made (all passing).
    """
    import torch.nn as nn

    checks: list[Check] = []
    producers = {top: other for other in layers for top in other.params.top}

    def add(layer: str, what: str, caffe: object, ours: object) -> None:
        check = Check(layer, what, caffe, ours)
        checks.append(check)
        if not check.ok:
            raise ConversionError(source, f"layer {layer}: {what} is {caffe} in the graph but {ours} in the model")

    for layer in layers:
        target = caffe_target(layer.name) if layer.type in ("Convolution", "BatchNorm", "Scale") else None
        if layer.type == "Convolution":
            module = _module(model, target.module) if target else None
            if not isinstance(module, nn.Conv2d):
                raise ConversionError(source, f"layer {layer.name}: convolution has no counterpart in the model")
            g = conv_geometry(layer, source)
            add(layer.name, "num_output", g.num_output, module.out_channels)
            add(layer.name, "kernel", g.kernel, module.kernel_size[0])
            add(layer.name, "stride", g.stride, module.stride[0])
            add(layer.name, "pad", g.pad, module.padding[0])
            add(layer.name, "dilation", g.dilation, module.dilation[0])
            add(layer.name, "bias_term", g.bias, module.bias is not None)
            add(layer.name, "group", g.group, module.groups)
        elif layer.type == "BatchNorm":
            module = _module(model, target.module) if target else None
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise ConversionError(source, f"layer {layer.name}: BatchNorm has no counterpart in the model")
            add(layer.name, "eps", round(float(layer.params.batch_norm_param.eps), 12), round(float(module.eps), 12))
        elif layer.type == "Scale":
            if target is None or not isinstance(_module(model, target.module), nn.modules.batchnorm._BatchNorm):
                raise ConversionError(source, f"layer {layer.name}: Scale has no BatchNorm counterpart in the model")
        elif layer.type == "Pooling" and split_msc_suffix(layer.name)[0] == "pool1":
            p = layer.params.pooling_param
            pool = _module(model, "backbone.stem.pool1")
            add(layer.name, "pool", caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool), "MAX" if isinstance(pool, nn.MaxPool2d) else type(pool).__name__)
            add(layer.name, "kernel", int(p.kernel_size or p.kernel_h), _first(pool.kernel_size))
            add(layer.name, "stride", int(p.stride_h or p.stride), _first(pool.stride))
            add(layer.name, "pad", int(p.pad_h or p.pad), _first(pool.padding))
            add(layer.name, "round mode", "ceil", "ceil" if pool.ceil_mode else "floor")
        elif layer.type == "Eltwise":
            op = caffe_pb2.EltwiseParameter.EltwiseOp.Name(layer.params.eltwise_param.operation)
            expected = "MAX" if len(layer.params.bottom) > 1 and _is_msc_fusion(layer, producers) else "SUM"
            add(layer.name, "operation", op, expected)
            coeffs = list(layer.params.eltwise_param.coeff)
            add(layer.name, "coefficients", coeffs if coeffs else "none", [1.0] * len(coeffs) if coeffs else "none")
        elif layer.type == "ReLU":
            add(layer.name, "negative_slope", float(layer.params.relu_param.negative_slope), 0.0)
    return checks


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _is_msc_fusion(layer: CaffeLayer, producers: dict[str, CaffeLayer]) -> bool:
    """An Eltwise whose bottoms come from different MSC scales (the score-map fusion)."""
    scales = set()
    for bottom in layer.params.bottom:
        producer = producers.get(bottom)
        name = producer.name if producer is not None else bottom
        scales.add(split_msc_suffix(name.removesuffix("_interp"))[1])
    return len(scales) > 1
