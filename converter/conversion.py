"""Convert a DeepLab Caffe model (ResNet: our DeepLab v2; VGG16: ``models.vgg``), accounting for every blob.

``convert`` reads the weights and the layer graph (a prototxt, or the graph a ``.caffemodel``
carries inside itself), derives the model config, builds the model, checks every
hyper-parameter, maps every blob by the naming rules, and fills every PyTorch tensor. Any
blob without a home, any tensor left unfilled, a shape or value problem, fails with a
ConversionError naming the file and the layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeplab_caffe import models
from deeplab_caffe.converter.errors import CaffeFileError, ConversionError
from deeplab_caffe.models.bounds import human_bytes
from deeplab_caffe.converter.checks import Check, check_model
from deeplab_caffe.converter.graph import check_bottoms, derive_config, layers_from_net, net_input_size
from deeplab_caffe.converter.mapping import caffe_target, fold_batchnorm
from deeplab_caffe.converter.read import CaffeLayer, read_caffemodel_layers, read_prototxt
from deeplab_caffe.converter.topology import Topology, analyse

CONVERTER_VERSION = "0.1.0"
#: a graph needing over twice its caffemodel's values is refused unbuilt past this many values (256 MiB float32)
MODEL_VALUES_LIMIT = 64 << 20


@dataclass
class BlobRecord:
    """What happened to one blob of the file (one row of the conversion report)."""

    layer: str
    layer_type: str | None
    index: int
    shape: tuple[int, ...]
    dtype: str
    status: str  # "mapped" | "shared" (MSC copy, equal to its original)
    target: str  # PyTorch tensor name(s) it filled or shares
    stats: dict[str, float]


@dataclass
class Conversion:
    """The result of ``convert``: the model (eval mode), its config and the accounting."""

    model: torch.nn.Module
    config: dict
    state_dict: dict[str, torch.Tensor]
    caffemodel: Path
    prototxt: Path | None
    caffemodel_sha256: str
    records: list[BlobRecord]
    checks: list[Check]
    filled: dict[str, str]  # PyTorch tensor -> Caffe source ("layer[i]" or a note)
    graph: Topology  # the layer graph the config came from (prototxt or the caffemodel's own), analysed
    ignored: list[CaffeLayer]  # layers of the file outside the model (data, loss, accuracy, Split, ...)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _blob_stats(blob: np.ndarray) -> dict[str, float]:
    values = np.asarray(blob, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN/Inf blobs (--allow-nonfinite) give NaN statistics
        return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                "std": float(values.std())}


def _as_vector(blob: np.ndarray) -> np.ndarray:
    """A BN/Scale/bias blob as (C,): accepts (C,) and the legacy 1x1x1xC form."""
    return blob.reshape(-1)


def load_graph(caffemodel: Path, prototxt: Path | None, weights: list[CaffeLayer] | None = None) -> tuple[Topology, list[CaffeLayer], Path]:
    """The analysed graph, its raw layers and the file it came from: the prototxt when given,
    else the graph the binary caffemodel stores (``weights``, read here when not given)."""
    if prototxt is not None:
        net = read_prototxt(prototxt)
        layers = layers_from_net(net)
        check_bottoms(net, layers, prototxt)
        return analyse(layers, prototxt, net_input_size(net)), layers, prototxt
    layers = weights if weights is not None else read_caffemodel_layers(caffemodel)
    if any(layer.params is None for layer in layers):
        raise ConversionError(caffemodel, "HDF5 weights carry no layer graph: pass the prototxt too")
    return analyse(layers, caffemodel), layers, caffemodel


class _StateBuilder:
    """Fills the model's state_dict from the file's blobs, one record per blob, refusing any
    blob without a home, any shape or count that disagrees, and any tensor left unfilled."""

    def __init__(self, caffemodel: Path, expected: dict[str, torch.Tensor], graph: Topology,
                 with_blobs: dict[str, CaffeLayer]) -> None:
        self.caffemodel, self.expected, self.graph, self.with_blobs = caffemodel, expected, graph, with_blobs
        self.filled: dict[str, str] = {}
        self.state: dict[str, torch.Tensor] = {}
        self.records: list[BlobRecord] = []
        self.pending_bn: dict[str, dict[str, CaffeLayer]] = {}

    def fail(self, problem: str) -> None:
        raise ConversionError(self.caffemodel, problem)

    def fill(self, key: str, value: np.ndarray, source: str) -> None:
        want = tuple(self.expected[key].shape)
        if key in self.filled:
            self.fail(f"{source}: {key} was already filled from {self.filled[key]}")
        if tuple(value.shape) != want:
            self.fail(f"{source}: shape {tuple(value.shape)} but the model's {key} is {want}")
        self.state[key] = torch.tensor(np.ascontiguousarray(value, dtype=np.float32))
        self.filled[key] = source

    def record(self, layer: CaffeLayer, status: str, targets: list[str]) -> None:
        for i, blob in enumerate(layer.blobs):
            self.records.append(BlobRecord(layer.name, layer.type, i, tuple(blob.shape), str(blob.dtype), status,
                                           targets[i], _blob_stats(blob)))

    def add_layer(self, layer: CaffeLayer, allow_nonfinite: bool) -> None:
        """Map one layer's blobs: an MSC copy is checked equal to its 1x layer, others fill tensors."""
        where = f"layer {layer.name}"
        for i, blob in enumerate(layer.blobs):
            if not allow_nonfinite and not np.all(np.isfinite(blob)):
                n_nan, n_inf = int(np.count_nonzero(np.isnan(blob))), int(np.count_nonzero(np.isinf(blob)))
                self.fail(f"{where} blob {i} {tuple(blob.shape)} holds {n_nan} NaN and {n_inf} Inf "
                          "values (--allow-nonfinite converts it anyway)")
        original = self.graph.canonical(layer.name)
        target = caffe_target(original) if layer.name in self.graph.branch else None  # a model layer
        if target is None:
            self.fail(f"{where} ({layer.type}) has {len(layer.blobs)} blobs but no counterpart in the model")
        low, high = {"conv": (1, 2), "bn": (3, 3), "scale": (1, 2)}[target.role]
        if not low <= len(layer.blobs) <= high:
            self.fail(f"{where}: {len(layer.blobs)} blobs, a {target.role} layer has {low}-{high}")
        if original != layer.name:
            self._add_copy(layer, original)
        elif target.role == "conv":
            self._add_conv(layer, target.module)
        else:
            self.pending_bn.setdefault(target.module, {})[target.role] = layer
            self.record(layer, "mapped", [f"{target.module}.running_mean", f"{target.module}.running_var", "(scale factor)"]
                        if target.role == "bn" else [f"{target.module}.weight", f"{target.module}.bias"])

    def _add_copy(self, layer: CaffeLayer, original: str) -> None:
        shared = self.with_blobs.get(original)
        if shared is None:
            self.fail(f"layer {layer.name} is an MSC copy of {original}, which has no blobs")
        for i, blob in enumerate(layer.blobs):
            if i >= len(shared.blobs) or not np.array_equal(blob.reshape(-1), shared.blobs[i].reshape(-1), equal_nan=True):
                self.fail(f"layer {layer.name} blob {i} differs from the shared {original} blob {i}")
        self.record(layer, "shared", [f"= {original}[{i}]" for i in range(len(layer.blobs))])

    def _add_conv(self, layer: CaffeLayer, module: str) -> None:
        names = [f"{module}.weight", f"{module}.bias"]
        has_bias = names[1] in self.expected
        if has_bias != (len(layer.blobs) == 2):
            self.fail(f"layer {layer.name}: {len(layer.blobs)} blobs but the model's conv {'has' if has_bias else 'has no'} bias")
        self.fill(names[0], layer.blobs[0], f"{layer.name}[0]")
        if has_bias:
            self.fill(names[1], _as_vector(layer.blobs[1]), f"{layer.name}[1]")
        self.record(layer, "mapped", names[: len(layer.blobs)])

    def fold_batchnorms(self) -> None:
        """Each BatchNorm (statistics times its scale factor) with its Scale into one BatchNorm2d."""
        for module, parts in self.pending_bn.items():
            if "bn" not in parts:
                self.fail(f"layer {parts['scale'].name} (Scale) has no BatchNorm layer beside it")
            channels = self.expected[f"{module}.running_mean"].shape[0]
            bn_layer, scale_layer = parts["bn"], parts.get("scale")
            for blob_index, blob in enumerate(bn_layer.blobs + (scale_layer.blobs if scale_layer else [])):
                if blob_index != 2 and blob.size != channels:
                    self.fail(f"layer {(bn_layer if blob_index < 3 else scale_layer).name}: {blob.size} values, "
                              f"the model's {module} has {channels} channels")
            folded = fold_batchnorm(bn_layer.blobs, scale_layer.blobs if scale_layer else None, channels)
            self.fill(f"{module}.running_mean", folded["running_mean"], f"{bn_layer.name}[0] / {bn_layer.name}[2]")
            self.fill(f"{module}.running_var", folded["running_var"], f"{bn_layer.name}[1] / {bn_layer.name}[2]")
            source = scale_layer.name if scale_layer else "(no Scale layer: 1)"
            self.fill(f"{module}.weight", folded["weight"], f"{source}[0]" if scale_layer else source)
            self.fill(f"{module}.bias", folded["bias"],
                      f"{source}[1]" if scale_layer and len(scale_layer.blobs) > 1 else "(no bias: 0)")

    def fill_bookkeeping(self) -> None:
        """``num_batches_tracked`` (not in Caffe) gets 0; any other unfilled tensor fails."""
        for key, tensor in self.expected.items():
            if key in self.filled:
                continue
            if not key.endswith("num_batches_tracked"):
                self.fail(f"no blobs for the model's {key} (module {key.rsplit('.', 1)[0]}): "
                          "the file lacks a layer the graph needs")
            self.state[key] = torch.zeros_like(tensor)
            self.filled[key] = "(bookkeeping, not in Caffe: 0)"


def check_model_fits(config: dict, weights: list[CaffeLayer], caffemodel: Path, graph_source: Path) -> None:
    """Refuse a graph whose model needs more than twice the values the caffemodel's blobs hold and
    more than ``MODEL_VALUES_LIMIT`` (a ``num_output`` far beyond its blob), before the model is
    allocated: the model is built on the meta device (no memory) and its state_dict's element
    count compared with the blobs'. Below that, a missing or misshapen blob (a prototxt of another
    width) is named by the accounting that follows, blob by blob."""
    with torch.device("meta"):
        meta = models.build_model(config, init=False)
    need = sum(t.numel() for t in meta.state_dict().values())
    held = sum(blob.size for layer in weights for blob in layer.blobs)
    if need > 2 * held and need > MODEL_VALUES_LIMIT:
        raise CaffeFileError(graph_source, f"its graph describes a model of {need:,} values "
                                           f"({human_bytes(4 * need)} as float32) but {caffemodel} holds "
                                           f"{held:,} values (a num_output or kernel that disagrees with its blob)")


def convert(
    caffemodel: str | Path, prototxt: str | Path | None = None, *, n_classes: int | None = None,
    allow_nonfinite: bool = False,
) -> Conversion:
    """Convert a DeepLab-ResNet or DeepLab-VGG16 ``.caffemodel`` (or ``.caffemodel.h5``) to PyTorch.

    ``prototxt`` gives the layer graph; without it the graph stored in the caffemodel itself is
    used (Caffe writes every layer's parameters into it). ``n_classes`` is the class count the
    caller expects (21 for VOC, 91 for COCO init); a file with another count fails. A blob
    holding NaN or Inf fails unless ``allow_nonfinite``.
    """
    caffemodel = Path(caffemodel)
    prototxt = Path(prototxt) if prototxt is not None else None
    weights = read_caffemodel_layers(caffemodel)
    graph, layers, graph_source = load_graph(caffemodel, prototxt, weights)
    config = derive_config(graph, graph_source)
    if n_classes is not None and config["n_classes"] != n_classes:
        raise ConversionError(graph_source, f"classifier has {config['n_classes']} classes, expected {n_classes}")
    check_model_fits(config, weights, caffemodel, graph_source)
    model = models.build_model(config)
    checks = check_model(model, graph, graph_source)

    graph_names = {layer.name for layer in layers}
    builder = _StateBuilder(caffemodel, model.state_dict(), graph, {layer.name: layer for layer in weights if layer.blobs})
    for layer in weights:
        if not layer.blobs:
            continue
        if graph_source != caffemodel and layer.name not in graph_names:
            builder.fail(f"layer {layer.name} is not in the prototxt {graph_source.name}: the files do not match")
        builder.add_layer(layer, allow_nonfinite)
    builder.fold_batchnorms()
    builder.fill_bookkeeping()
    model.load_state_dict(builder.state, strict=True)
    model.eval()
    return Conversion(
        model=model, config=config, state_dict=builder.state, caffemodel=caffemodel, prototxt=prototxt,
        caffemodel_sha256=sha256_file(caffemodel), records=builder.records, checks=checks, filled=builder.filled,
        graph=graph, ignored=[layer for layer in weights if layer.params is not None and layer.name not in graph.branch],
    )
