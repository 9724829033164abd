"""Structural parity: the Caffe graph against the PyTorch model built from it.

Every check compares a value read from the graph with the same value read from the built
model (a module attribute, the model's MSC scales, or its dataflow), never with a second copy
of the graph. Four kinds, counted per unique layer (an MSC copy is checked once, against its
1x layer, not again against the model):

- ``hyper-parameter``: each 1x layer's parameters against its module (conv geometry, BN eps,
  pooling kind/size/rounding, Eltwise operation, ReLU slope);
- ``interp``: each pyramid Interp's shrink/zoom/pads against the model's MSC scale, and each
  score-map Interp's output size against the 1x map size the model resizes to (at 321 and
  513 px, the sizes DeepLab trains and tests at, and at the graph's own input size; an
  explicit height/width only at the graph's own size when it states one);
- ``topology``: each 1x layer's inputs against the model's dataflow (stem, residual blocks,
  shortcuts, ASPP branches summed, MSC branches all fused);
- ``msc-copy``: each MSC copy's parameters equal to its 1x layer's.

A DeepLab-VGG16 graph (``Topology.family == "vgg"``) is checked against ``models.vgg``: every
convolution, pooling (kind, size, stride, pad, ceil rounding, AVE's divisor), dropout ratio,
ReLU and the fc8 sum (hyper-parameter), no MSC pyramid (interp), and each layer's inputs against
the model's chain and branches (topology).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from deeplab_caffe.caffe_proto import caffe_pb2
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.graph import conv_geometry
from deeplab_caffe.converter.mapping import caffe_target, vgg_module
from deeplab_caffe.converter.read import CaffeLayer
from deeplab_caffe.converter.topology import Topology
from deeplab_caffe.models import caffe_interp_size, score_map_size

CHECK_SIZES = (321, 513)
KINDS = ("hyper-parameter", "interp", "topology", "msc-copy")
_PARAM_FIELDS = ("convolution_param", "batch_norm_param", "scale_param", "pooling_param", "eltwise_param",
                 "relu_param", "interp_param")


@dataclass
class Check:
    """One comparison: ``caffe`` (read from the graph) against ``model`` (read from the model)."""

    kind: str
    layer: str
    what: str
    caffe: object
    model: object

    @property
    def ok(self) -> bool:
        return self.caffe == self.model


class _Checker:
    def __init__(self, source: Path | str) -> None:
        self.source = source
        self.checks: list[Check] = []

    def add(self, kind: str, layer: str, what: str, caffe: object, model: object) -> None:
        check = Check(kind, layer, what, caffe, model)
        self.checks.append(check)
        if not check.ok:
            raise ConversionError(self.source, f"layer {layer}: {what} is {caffe} in the graph but {model} in the model")


def check_model(model: nn.Module, topo: Topology, source: Path | str) -> list[Check]:
    """Run every check (see the module docstring); fail on the first mismatch, else return them."""
    checker = _Checker(source)
    if topo.family == "vgg":
        _check_vgg(checker, model, topo)
        return checker.checks
    for layer in topo.unique_layers():
        _check_layer(checker, model, layer)
    _check_interps(checker, model, topo)
    _check_dataflow(checker, model, topo)
    for copy_name, one_name in topo.original.items():
        copy, one = _by_name(topo, copy_name), _by_name(topo, one_name)
        checker.add("msc-copy", copy_name, f"parameters equal to {one_name}'s", _params(copy), _params(one))
    return checker.checks


def _by_name(topo: Topology, name: str) -> CaffeLayer:
    return next(layer for layer in topo.layers if layer.name == name)


def _params(layer: CaffeLayer) -> str:
    """The layer's type-specific parameters as text (what an MSC copy must repeat)."""
    return "; ".join(f"{f}: {getattr(layer.params, f)}".replace("\n", " ").strip()
                     for f in _PARAM_FIELDS if layer.params.HasField(f))


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _check_layer(checker: _Checker, model: nn.Module, layer: CaffeLayer) -> None:
    add = lambda what, caffe, ours: checker.add("hyper-parameter", layer.name, what, caffe, ours)  # noqa: E731
    target = caffe_target(layer.name) if layer.type in ("Convolution", "BatchNorm", "Scale") else None
    module = _module(model, target.module) if target else None
    if layer.type == "Convolution":
        _check_conv(checker, layer, module)
    elif layer.type in ("BatchNorm", "Scale"):
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ConversionError(checker.source, f"layer {layer.name}: {layer.type} has no BatchNorm counterpart in the model")
        if layer.type == "BatchNorm":
            add("eps", round(float(layer.params.batch_norm_param.eps), 12), round(float(module.eps), 12))
        else:
            add("bias_term", bool(layer.params.scale_param.bias_term), True)
    elif layer.type == "Pooling":
        pool = _module(model, "backbone.stem.pool1")
        if layer.name != "pool1" or pool is None:
            raise ConversionError(checker.source, f"layer {layer.name}: pooling has no counterpart in the model (only pool1)")
        _check_pool(checker, layer, pool)
    else:
        _check_functional(checker, layer)


def _check_functional(checker: _Checker, layer: CaffeLayer) -> None:
    """Layers without a module: an Eltwise is a plain SUM, a ReLU has slope 0, no Interp in the 1x net."""
    add = lambda what, caffe, ours: checker.add("hyper-parameter", layer.name, what, caffe, ours)  # noqa: E731
    if layer.type == "Eltwise":
        add("operation", caffe_pb2.EltwiseParameter.EltwiseOp.Name(layer.params.eltwise_param.operation), "SUM")
        coeffs = list(layer.params.eltwise_param.coeff)
        add("coefficients", coeffs or "none", [1.0] * len(coeffs) if coeffs else "none")
    elif layer.type == "ReLU":
        add("negative_slope", float(layer.params.relu_param.negative_slope), 0.0)
    elif layer.type == "Interp":
        raise ConversionError(checker.source, f"layer {layer.name}: Interp inside the 1x net has no counterpart in the model")


def _check_conv(checker: _Checker, layer: CaffeLayer, module: nn.Module | None) -> None:
    """A Convolution layer's geometry against its ``nn.Conv2d``."""
    if not isinstance(module, nn.Conv2d):
        raise ConversionError(checker.source, f"layer {layer.name}: convolution has no counterpart in the model")
    g = conv_geometry(layer, checker.source)
    for what, caffe, ours in (("num_output", g.num_output, module.out_channels), ("kernel", g.kernel, module.kernel_size[0]),
                              ("stride", g.stride, module.stride[0]), ("pad", g.pad, module.padding[0]),
                              ("dilation", g.dilation, module.dilation[0]), ("bias_term", g.bias, module.bias is not None),
                              ("group", g.group, module.groups)):
        checker.add("hyper-parameter", layer.name, what, caffe, ours)


_POOL_KINDS = {nn.MaxPool2d: "MAX", nn.AvgPool2d: "AVE"}


def _check_pool(checker: _Checker, layer: CaffeLayer, pool: nn.Module) -> None:
    """A Pooling layer against its PyTorch pool: kind, size, stride, pad, ceil rounding, and for
    AVE, Caffe's divisor (the window clipped to input + pad: ``count_include_pad``)."""
    add = lambda what, caffe, ours: checker.add("hyper-parameter", layer.name, what, caffe, ours)  # noqa: E731
    p = layer.params.pooling_param
    method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
    add("pool", method, _POOL_KINDS.get(type(pool), type(pool).__name__))
    add("kernel", int(p.kernel_size or p.kernel_h), _first(pool.kernel_size))
    add("stride", int(p.stride_h or p.stride), _first(pool.stride))
    add("pad", int(p.pad_h or p.pad), _first(pool.padding))
    add("round mode (Caffe pools with ceil)", "ceil", "ceil" if pool.ceil_mode else "floor")
    if method == "AVE":
        add("AVE divisor (Caffe counts the padding)", "padding counted",
            "padding counted" if pool.count_include_pad else "padding not counted")


def _check_interps(checker: _Checker, model: nn.Module, topo: Topology) -> None:
    """Pyramid Interps against the model's MSC scales; score-map Interps against the 1x size."""
    scales = list(getattr(model, "scales", None) or [])
    checker.add("interp", "(graph)", "MSC scales", len(topo.pyramid), len(scales))
    for k, (layer, scale) in enumerate(zip(topo.pyramid, scales), start=1):
        p = layer.params.interp_param
        for what, caffe, ours in (("shrink_factor", int(p.shrink_factor), scale["shrink"]),
                                  ("zoom_factor", int(p.zoom_factor), scale["zoom"]),
                                  ("explicit height/width", (int(p.height), int(p.width)), (0, 0)),
                                  ("pad_beg/pad_end", (int(p.pad_beg), int(p.pad_end)), (0, 0))):
            checker.add("interp", layer.name, what, caffe, ours)
        score = topo.score_interps.get(k)
        if score is None:
            raise ConversionError(checker.source, f"MSC branch of {layer.name} has no Interp resizing its scores to the 1x map")
        q = score.params.interp_param
        checker.add("interp", score.name, "pad_beg/pad_end", (int(q.pad_beg), int(q.pad_end)), (0, 0))
        # Factors resize alike at any size: check the sizes DeepLab runs at. An explicit size
        # holds for one input only: check the graph's own (none stated: the standard sizes).
        explicit = bool(q.height or q.width)
        sizes = [topo.input_size] if explicit and topo.input_size else [(n, n) for n in CHECK_SIZES]
        if topo.input_size and topo.input_size not in sizes:
            sizes.append(topo.input_size)
        for h, w in sizes:
            branch = score_map_size(model.config, caffe_interp_size(h, w, shrink=scale["shrink"], zoom=scale["zoom"]))
            caffe = caffe_interp_size(*branch, height=q.height, width=q.width, zoom=q.zoom_factor, shrink=q.shrink_factor)
            checker.add("interp", score.name, f"output size at {h}x{w} (the 1x score map)", tuple(caffe),
                        score_map_size(model.config, (h, w)))


def _unit(name: str) -> str:
    """The model unit a weight layer belongs to: ``backbone.res2.a.branch2a``, ``classifier.branches.0``."""
    module = caffe_target(name).module
    return module.rsplit(".", 1)[0] if module.endswith((".conv", ".bn")) else module


def _expected_inputs(model: nn.Module) -> tuple[dict[str, str], dict[str, str], set[str], str]:
    """The model's dataflow in tokens: what each unit reads, each block's shortcut, the values
    the model rectifies, and the output.

    Tokens name values: ``input``, ``<unit>.conv`` / ``<unit>.bn`` (after Scale), ``relu(..)``,
    ``<block>(sum)``, ``backbone.stem.pool1``, ``classifier.branches.<i>``, ``classifier``.
    """
    reads = {"backbone.stem.conv1": "input"}
    shortcut: dict[str, str] = {}
    rectified = {"backbone.stem.conv1.bn"}
    previous = "backbone.stem.pool1"
    for stage in model.config["stages"]:
        for block in stage["blocks"]:
            path = f"backbone.{stage['name']}.{block}"
            has_projection = getattr(model.get_submodule(path), "branch1", None) is not None
            rectified |= {f"{path}.branch2a.bn", f"{path}.branch2b.bn", f"{path}(sum)"}
            reads[f"{path}.branch2a"] = previous
            reads[f"{path}.branch2b"] = f"relu({path}.branch2a.bn)"
            reads[f"{path}.branch2c"] = f"relu({path}.branch2b.bn)"
            if has_projection:
                reads[f"{path}.branch1"] = previous
            shortcut[path] = f"{path}.branch1.bn" if has_projection else previous
            previous = f"relu({path}(sum))"
    branches = len(model.config["classifier"]["branches"])
    for i in range(branches):
        reads[f"classifier.branches.{i}"] = previous
    return reads, shortcut, rectified, "classifier" if branches > 1 else "classifier.branches.0"


def _check_dataflow(checker: _Checker, model: nn.Module, topo: Topology) -> None:
    """Each 1x layer's inputs against the model's dataflow; the MSC fusion against the branches."""
    reads, shortcut, rectified, output = _expected_inputs(model)
    value = {topo.input: "input"}
    for layer in topo.unique_layers():
        got = [value.get(bottom, f"(unknown blob {bottom})") for bottom in layer.params.bottom]
        if layer.type == "Convolution":
            unit = _unit(layer.name)
            expected, out = [reads.get(unit, "(not in the model)")], f"{unit}.conv" if unit.startswith("backbone") else unit
        elif layer.type == "BatchNorm":
            unit = _unit(layer.name)
            expected, out = [f"{unit}.conv"], f"{unit}.bn(statistics)"
        elif layer.type == "Scale":
            unit = _unit(layer.name)
            expected, out = [f"{unit}.bn(statistics)"], f"{unit}.bn"
        elif layer.type == "ReLU":  # only where the model has one (after a stem/branch2a/2b BN or a block sum)
            expected = got if got and got[0] in rectified else ["(a value the model does not rectify)"]
            out = f"relu({got[0]})"
        elif layer.type == "Pooling":
            expected, out = ["relu(backbone.stem.conv1.bn)"], "backbone.stem.pool1"
        else:  # Eltwise SUM: a residual block or the ASPP
            expected, out = _sum_inputs(got, shortcut, len(model.config["classifier"]["branches"]))
        checker.add("topology", layer.name, "inputs", sorted(got) if layer.type == "Eltwise" else got, expected)
        for top in layer.params.top:
            value[top] = out
    if topo.fusion is None:
        top = _by_name(topo, topo.output).params.top[0]
        checker.add("topology", topo.output, "output", value.get(top), output)
        return
    scores = sorted(blob for blob, token in value.items() if token == output)
    fused = sorted(scores + [interp.params.top[0] for interp in topo.score_interps.values()])
    checker.add("topology", topo.fusion.name, "inputs (the 1x scores and every resized MSC branch)",
                sorted(topo.fusion.params.bottom), fused)
    checker.add("topology", topo.fusion.name, "operation",
                caffe_pb2.EltwiseParameter.EltwiseOp.Name(topo.fusion.params.eltwise_param.operation), "MAX")


def _sum_inputs(got: list[str], shortcut: dict[str, str], n_branches: int) -> tuple[list[str], str]:
    """Expected (sorted) inputs and output token of an Eltwise SUM, identified by what it sums."""
    branch2c = [token for token in got if token.endswith(".branch2c.bn")]
    if branch2c:
        block = branch2c[0].removesuffix(".branch2c.bn")
        return sorted([branch2c[0], shortcut.get(block, "(no such block)")]), f"{block}(sum)"
    return sorted(f"classifier.branches.{i}" for i in range(n_branches)), "classifier"


# ----------------------------------------------------------------------------- DeepLab-VGG16


def _check_vgg(checker: _Checker, model: nn.Module, topo: Topology) -> None:
    """A DeepLab-VGG16 graph against ``models.vgg.DeepLabVGG``: every 1x layer's parameters,
    the (absent) MSC pyramid and the dataflow."""
    for layer in topo.unique_layers():
        path = vgg_module(layer.name, layer.type)
        module = _module(model, path) if path else None
        if layer.type == "Convolution":
            _check_conv(checker, layer, module)
        elif layer.type in ("Pooling", "Dropout") and module is None:
            raise ConversionError(checker.source, f"layer {layer.name}: {layer.type} has no counterpart in the model")
        elif layer.type == "Pooling":
            _check_pool(checker, layer, module)
        elif layer.type == "Dropout":
            checker.add("hyper-parameter", layer.name, "dropout_ratio",
                        round(float(layer.params.dropout_param.dropout_ratio), 6), round(float(module.p), 6))
        else:
            _check_functional(checker, layer)
    checker.add("interp", "(graph)", "MSC scales", len(topo.pyramid), len(getattr(model, "scales", None) or []))
    _check_vgg_dataflow(checker, model, topo)


def _vgg_reads(model: nn.Module) -> tuple[dict[str, list[str]], set[str], str]:
    """What each VGG module reads (tokens as in ``_expected_inputs``), the modules whose output
    the model rectifies, and the output token."""
    reads: dict[str, list[str]] = {}
    rectified: set[str] = set()
    previous = "input"
    for name, relu in model.backbone.order:
        unit = f"backbone.{name}"
        reads[unit] = [previous]
        rectified |= {unit} if relu else set()
        previous = f"relu({unit})" if relu else unit
    n_branches = len(model.classifier.branches)
    for k in range(n_branches):
        b = f"classifier.branches.{k}"
        reads |= {f"{b}.fc6": [previous], f"{b}.drop6": [f"relu({b}.fc6)"], f"{b}.fc7": [f"relu({b}.fc6)"],
                  f"{b}.drop7": [f"relu({b}.fc7)"], f"{b}.fc8": [f"relu({b}.fc7)"]}
        rectified |= {f"{b}.fc6", f"{b}.fc7"}
    reads["classifier"] = sorted(f"classifier.branches.{k}.fc8" for k in range(n_branches))
    return reads, rectified, "classifier" if n_branches > 1 else "classifier.branches.0.fc8"


def _check_vgg_dataflow(checker: _Checker, model: nn.Module, topo: Topology) -> None:
    """Each 1x layer's inputs against the model's chain: convs and pools in order, ReLUs on conv
    outputs, dropouts (identity at inference) after fc6/fc7, the branches' fc8 summed."""
    reads, rectified, output = _vgg_reads(model)
    value = {topo.input: "input"}
    for layer in topo.unique_layers():
        got = [value.get(bottom, f"(unknown blob {bottom})") for bottom in layer.params.bottom]
        unit = vgg_module(layer.name, layer.type)
        if layer.type == "ReLU":
            expected = got if got and got[0] in rectified else ["(a value the model does not rectify)"]
            out = f"relu({got[0]})"
        elif layer.type == "Dropout":
            expected, out = reads.get(unit, ["(not in the model)"]), got[0]
        else:
            got = sorted(got) if layer.type == "Eltwise" else got
            expected, out = reads.get(unit, ["(not in the model)"]), unit
        checker.add("topology", layer.name, "inputs", got, expected)
        for top in layer.params.top:
            value[top] = out
    top = _by_name(topo, topo.output).params.top[0]
    checker.add("topology", topo.output, "output", value.get(top), output)
