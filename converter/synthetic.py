"""Synthetic DeepLab-ResNet Caffe files: the official graph and naming, seeded random weights.

Tests, ``deeplab-convert --dataset synthetic`` and the smoke parity suite use these instead of
downloads. The graph follows DeepLab v2's prototxt exactly (``conv1`` / ``bn_conv1`` /
``scale_conv1`` / ``conv1_relu`` / ``pool1``, blocks ``res{S}{B}_branch{1,2a,2b,2c}`` with their
``bn``/``scale`` layers in place, ``res{S}{B}`` Eltwise SUM + ``res{S}{B}_relu``, the ASPP
``fc1_<set>_c{i}`` summed into ``fc1_<set>``, and for MSC the ``_res075`` / ``_res05`` copies
sharing weights by ``param { name }`` fused by ``fc_fusion`` Eltwise MAX).

The caffemodel is written as Caffe writes one: every layer with its full parameters (so the
file carries its own graph) and the blobs of the layers that have them, MSC copies included
unless asked otherwise. Blobs are serialised straight from numpy bytes (``converter.write``). Conventions: convolution weights OIHW float32;
BatchNorm blobs ``[mean * s, var * s, [s]]`` with a per-layer scale factor ``s != 1``; Scale
blobs ``[gamma, beta]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from caffe_proto import caffe_pb2
from converter.write import write_caffemodel

MSC_SUFFIXES = {(4, 3): "res075", (2, 1): "res05"}


def interp_size(n: int, *, shrink: int = 1, zoom: int = 1) -> int:
    """Caffe Interp output length for shrink then zoom (integer arithmetic of the DeepLab fork)."""
    n = (n - 1) // shrink + 1
    return n + (n - 1) * (zoom - 1)


def score_size(n: int, config: dict) -> int:
    """Length of the stride-8 score map for an input of length ``n`` (conv1, ceil pool1, res3 stride)."""
    stem = config["stem"]
    n = (n + 2 * stem["conv_pad"] - stem["conv_kernel"]) // stem["conv_stride"] + 1
    k, s, p = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
    pooled = -(-(n + 2 * p - k) // s) + 1
    if (pooled - 1) * s >= n + p:
        pooled -= 1
    n = pooled
    for stage in config["stages"]:
        n = (n - 1) // stage["stride"] + 1
    return n


class _GraphWriter:
    """Appends layers to a NetParameter, optionally suffixing names/tops for an MSC copy."""

    def __init__(self, net: caffe_pb2.NetParameter, suffix: str = "") -> None:
        self.net = net
        self.suffix = suffix

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}" if self.suffix else base

    def _layer(self, base: str, kind: str, bottoms: list[str], tops: list[str], n_params: int = 0) -> caffe_pb2.LayerParameter:
        layer = self.net.layer.add(name=self.name(base), type=kind, bottom=bottoms, top=tops)
        for i in range(n_params):
            layer.param.add(name=f"{base}_p{i}")  # MSC copies share weights by param name
        return layer

    def conv(self, base: str, bottom: str, out: int, kernel: int, *, stride: int = 1, pad: int = 0,
             dilation: int = 1, bias: bool = False) -> str:
        top = self.name(base)
        layer = self._layer(base, "Convolution", [bottom], [top], 2 if bias else 1)
        p = layer.convolution_param
        p.num_output, p.bias_term = out, bias
        p.kernel_size.append(kernel)
        if pad:
            p.pad.append(pad)
        if stride != 1:
            p.stride.append(stride)
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

    def eltwise(self, base: str, bottoms: list[str], op: str) -> str:
        top = self.name(base)
        layer = self._layer(base, "Eltwise", bottoms, [top])
        layer.eltwise_param.operation = caffe_pb2.EltwiseParameter.EltwiseOp.Value(op)
        return top

    def network(self, config: dict, data: str, classifier_set: str) -> str:
        """The backbone and classifier on ``data``; returns the score map's top."""
        stem, eps = config["stem"], config["bn_eps"]
        top = self.conv("conv1", data, stem["channels"], stem["conv_kernel"], stride=stem["conv_stride"], pad=stem["conv_pad"])
        self.bn_scale("bn_conv1", "scale_conv1", top, eps)
        self.relu("conv1_relu", top)
        pool = self._layer("pool1", "Pooling", [top], [self.name("pool1")])
        pp = pool.pooling_param
        pp.pool = caffe_pb2.PoolingParameter.MAX
        pp.kernel_size, pp.stride, pp.pad = stem["pool_kernel"], stem["pool_stride"], stem["pool_pad"]
        top = self.name("pool1")
        for stage in config["stages"]:
            number = stage["name"][3:]
            for i, block in enumerate(stage["blocks"]):
                ident = f"{number}{block}"
                stride = stage["stride"] if i == 0 else 1
                d = stage["dilation"]
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
                top = self.eltwise(f"res{ident}", [shortcut, branch], "SUM")
                self.relu(f"res{ident}_relu", top)
        branches = config["classifier"]["branches"]
        n_classes = config["n_classes"]
        if len(branches) == 1:
            b = branches[0]
            return self.conv(f"fc1_{classifier_set}", top, n_classes, b["kernel"], pad=b["pad"], dilation=b["dilation"], bias=b["bias"])
        tops = [self.conv(f"fc1_{classifier_set}_c{i}", top, n_classes, b["kernel"], pad=b["pad"], dilation=b["dilation"], bias=b["bias"])
                for i, b in enumerate(branches)]
        return self.eltwise(f"fc1_{classifier_set}", tops, "SUM")


def deeplab_prototxt(config: dict, *, flavour: str = "caffe", input_size: tuple[int, int] = (513, 513),
                     classifier_set: str = "voc12") -> caffe_pb2.NetParameter:
    """The DeepLab-ResNet deploy graph for a model config (docs/architecture.md).

    ``flavour="opencv"`` writes every Interp with explicit height/width (OpenCV 4 lacks
    ``shrink_factor``); ``"caffe"`` writes the MSC input pyramid as DeepLab does.
    """
    if flavour not in ("caffe", "opencv"):
        raise ValueError(f"flavour must be 'caffe' or 'opencv', got {flavour!r}")
    net = caffe_pb2.NetParameter(name="DeepLab-ResNet")
    net.input.append("data")
    net.input_shape.add().dim.extend([1, 3, *input_size])
    scores = _GraphWriter(net).network(config, "data", classifier_set)
    if not config.get("msc"):
        return net
    h, w = input_size
    final_h, final_w = score_size(h, config), score_size(w, config)
    fused = [scores]
    for scale in config["msc"]["scales"]:
        suffix = MSC_SUFFIXES[(scale["shrink"], scale["zoom"])]
        data = f"data{suffix[3:]}"
        layer = net.layer.add(name=data, type="Interp", bottom=["data"], top=[data])
        if flavour == "opencv":
            layer.interp_param.height = interp_size(h, shrink=scale["shrink"], zoom=scale["zoom"])
            layer.interp_param.width = interp_size(w, shrink=scale["shrink"], zoom=scale["zoom"])
        else:
            layer.interp_param.shrink_factor = scale["shrink"]
            if scale["zoom"] != 1:
                layer.interp_param.zoom_factor = scale["zoom"]
        top = _GraphWriter(net, suffix).network(config, data, classifier_set)
        resized = net.layer.add(name=f"{top}_interp", type="Interp", bottom=[top], top=[f"{top}_interp"])
        resized.interp_param.height, resized.interp_param.width = final_h, final_w
        fused.append(f"{top}_interp")
    layer = net.layer.add(name="fc_fusion", type="Eltwise", bottom=fused, top=["fc_fusion"])
    layer.eltwise_param.operation = caffe_pb2.EltwiseParameter.MAX
    return net


def random_blobs(net: caffe_pb2.NetParameter, *, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Seeded random float32 blobs for every Convolution/BatchNorm/Scale layer of ``net``.

    Convolutions are He-normal (conv1 scaled for 0-255 input), BatchNorm statistics are stored
    times a per-layer scale factor in [0.5, 5], branch2c Scale gammas are small so 100 layers of
    residual sums stay O(1)-O(100). MSC copies (``_res075``/``_res05``) repeat their original's
    blobs, as Caffe stores shared parameters.
    """
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}
    channels: dict[str, int] = {}
    for layer in net.layer:
        base = layer.name
        for suffix in MSC_SUFFIXES.values():
            if base.endswith(f"_{suffix}"):
                base = base[: -len(suffix) - 1]
        if base != layer.name:
            if base in blobs:
                blobs[layer.name] = blobs[base]
            continue
        if layer.type == "Convolution":
            p = layer.convolution_param
            in_ch = channels.get(layer.bottom[0], 3)
            k = p.kernel_size[0]
            std = np.sqrt(2.0 / (in_ch * k * k)) * (1 / 60 if layer.name == "conv1" else 1.0)
            weight = (rng.standard_normal((p.num_output, in_ch, k, k)) * std).astype(np.float32)
            blobs[layer.name] = [weight] + ([(rng.standard_normal(p.num_output) * 0.1).astype(np.float32)] if p.bias_term else [])
            channels[layer.top[0]] = p.num_output
        elif layer.type == "BatchNorm":
            c = channels[layer.bottom[0]]
            factor = np.float32(rng.uniform(0.5, 5.0))
            mean = rng.normal(0.0, 0.5, c).astype(np.float32)
            var = rng.uniform(0.5, 2.0, c).astype(np.float32)
            blobs[layer.name] = [mean * factor, var * factor, np.array([factor], np.float32)]
        elif layer.type == "Scale":
            c = channels[layer.bottom[0]]
            low, high = (0.1, 0.3) if "branch2c" in layer.name else (0.6, 1.2)
            blobs[layer.name] = [rng.uniform(low, high, c).astype(np.float32), rng.normal(0.0, 0.1, c).astype(np.float32)]
        elif layer.type == "Eltwise":
            channels[layer.top[0]] = channels[layer.bottom[0]]
        elif layer.top and layer.bottom and layer.bottom[0] in channels:
            channels[layer.top[0]] = channels[layer.bottom[0]]
    return blobs


def write_caffemodel_h5(path: str | Path, blobs: dict[str, list[np.ndarray]]) -> None:
    """Caffe's HDF5 snapshot layout: dataset ``data/<layer>/<i>`` per blob (float32)."""
    import h5py

    with h5py.File(path, "w") as h5:
        for name, arrays in blobs.items():
            group = h5.create_group(f"data/{name}")
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=np.asarray(array, dtype=np.float32))


@dataclass
class SyntheticModel:
    """Paths of a written synthetic model and the blobs it holds ({layer: [arrays]})."""

    prototxt_path: Path
    opencv_prototxt_path: Path
    caffemodel_path: Path
    blobs: dict[str, list[np.ndarray]]


def make_synthetic_deeplab(out_dir: str | Path, config: dict, *, seed: int = 0, input_size: tuple[int, int] = (513, 513),
                           classifier_set: str = "voc12", name: str = "deeplab_resnet",
                           msc_copies: bool = True) -> SyntheticModel:
    """Write ``<name>.prototxt``, ``<name>_opencv.prototxt`` and ``<name>.caffemodel`` into ``out_dir``.

    ``msc_copies=False`` leaves the blobs of the ``_res075``/``_res05`` copies out of the
    caffemodel (their layers stay), a third of the size; the converter accepts both forms.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = deeplab_prototxt(config, input_size=input_size, classifier_set=classifier_set)
    blobs = random_blobs(net, seed=seed)
    prototxt = out_dir / f"{name}.prototxt"
    prototxt.write_text(text_format.MessageToString(net))
    opencv = out_dir / f"{name}_opencv.prototxt"
    opencv.write_text(text_format.MessageToString(
        deeplab_prototxt(config, flavour="opencv", input_size=input_size, classifier_set=classifier_set)))
    caffemodel = out_dir / f"{name}.caffemodel"
    if not msc_copies:
        blobs = {k: v for k, v in blobs.items() if not any(k.endswith(f"_{s}") for s in MSC_SUFFIXES.values())}
    write_caffemodel(caffemodel, list(net.layer), blobs, net.name)
    return SyntheticModel(prototxt, opencv, caffemodel, blobs)
