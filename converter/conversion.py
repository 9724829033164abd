"""Convert a DeepLab-ResNet Caffe model to our PyTorch DeepLab v2, accounting for every blob.

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

import models
from converter.errors import ConversionError
from converter.checks import Check, check_model
from converter.graph import derive_config, layers_from_net, net_input_size
from converter.mapping import caffe_target, fold_batchnorm
from converter.read import CaffeLayer, read_caffemodel_layers, read_prototxt
from converter.topology import Topology, analyse

CONVERTER_VERSION = "0.1.0"


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
        return analyse(layers, prototxt, net_input_size(net)), layers, prototxt
    layers = weights if weights is not None else read_caffemodel_layers(caffemodel)
    if any(layer.params is None for layer in layers):
        raise ConversionError(caffemodel, "HDF5 weights carry no layer graph: pass the prototxt too")
    return analyse(layers, caffemodel), layers, caffemodel


def convert(
    caffemodel: str | Path, prototxt: str | Path | None = None, *, n_classes: int | None = None,
    allow_nonfinite: bool = False,
) -> Conversion:
    """Convert a DeepLab-ResNet ``.caffemodel`` (or ``.caffemodel.h5``) to PyTorch.

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
    model = models.build_model(config)
    checks = check_model(model, graph, graph_source)
    expected = model.state_dict()

    graph_names = {layer.name for layer in layers}
    model_layers = {layer.name for layer in graph.layers}
    with_blobs = {layer.name: layer for layer in weights if layer.blobs}
    filled: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    records: list[BlobRecord] = []
    pending_bn: dict[str, dict] = {}

    def fill(key: str, value: np.ndarray, source: str) -> None:
        want = tuple(expected[key].shape)
        if key in filled:
            raise ConversionError(caffemodel, f"{source}: {key} was already filled from {filled[key]}")
        if tuple(value.shape) != want:
            raise ConversionError(caffemodel, f"{source}: shape {tuple(value.shape)} but the model's {key} is {want}")
        state[key] = torch.tensor(np.ascontiguousarray(value, dtype=np.float32))
        filled[key] = source

    for layer in weights:
        if not layer.blobs:
            continue
        where = f"layer {layer.name}"
        if graph_source != caffemodel and layer.name not in graph_names:
            raise ConversionError(caffemodel, f"{where} is not in the prototxt {graph_source.name}: the files do not match")
        for i, blob in enumerate(layer.blobs):
            if not allow_nonfinite and not np.all(np.isfinite(blob)):
                n_nan, n_inf = int(np.count_nonzero(np.isnan(blob))), int(np.count_nonzero(np.isinf(blob)))
                raise ConversionError(caffemodel, f"{where} blob {i} {tuple(blob.shape)} holds {n_nan} NaN and {n_inf} Inf "
                                                  "values (--allow-nonfinite converts it anyway)")
        original = graph.canonical(layer.name)
        target = caffe_target(original) if layer.name in model_layers else None
        if target is None:
            raise ConversionError(caffemodel, f"{where} ({layer.type}) has {len(layer.blobs)} blobs but no counterpart in the model")
        role_blobs = {"conv": (1, 2), "bn": (3, 3), "scale": (1, 2)}[target.role]
        if not role_blobs[0] <= len(layer.blobs) <= role_blobs[1]:
            raise ConversionError(caffemodel, f"{where}: {len(layer.blobs)} blobs, a {target.role} layer has {role_blobs[0]}-{role_blobs[1]}")

        if original != layer.name:
            shared = with_blobs.get(original)
            if shared is None:
                raise ConversionError(caffemodel, f"{where} is an MSC copy of {original}, which has no blobs")
            for i, blob in enumerate(layer.blobs):
                if i >= len(shared.blobs) or not np.array_equal(blob.reshape(-1), shared.blobs[i].reshape(-1), equal_nan=True):
                    raise ConversionError(caffemodel, f"{where} blob {i} differs from the shared {original} blob {i}")
                records.append(BlobRecord(layer.name, layer.type, i, tuple(blob.shape), str(blob.dtype), "shared",
                                          f"= {original}[{i}]", _blob_stats(blob)))
            continue

        if target.role == "conv":
            names = [f"{target.module}.weight", f"{target.module}.bias"]
            has_bias = names[1] in expected
            if has_bias != (len(layer.blobs) == 2):
                raise ConversionError(caffemodel, f"{where}: {len(layer.blobs)} blobs but the model's conv {'has' if has_bias else 'has no'} bias")
            fill(names[0], layer.blobs[0], f"{layer.name}[0]")
            if has_bias:
                fill(names[1], _as_vector(layer.blobs[1]), f"{layer.name}[1]")
            targets = names[: len(layer.blobs)]
        else:
            pending_bn.setdefault(target.module, {})[target.role] = layer
            targets = ([f"{target.module}.running_mean", f"{target.module}.running_var", "(scale factor)"]
                       if target.role == "bn" else [f"{target.module}.weight", f"{target.module}.bias"])
        for i, blob in enumerate(layer.blobs):
            records.append(BlobRecord(layer.name, layer.type, i, tuple(blob.shape), str(blob.dtype), "mapped",
                                      targets[i], _blob_stats(blob)))

    for module, parts in pending_bn.items():
        if "bn" not in parts:
            raise ConversionError(caffemodel, f"layer {parts['scale'].name} (Scale) has no BatchNorm layer beside it")
        channels = expected[f"{module}.running_mean"].shape[0]
        bn_layer, scale_layer = parts["bn"], parts.get("scale")
        for blob_index, blob in enumerate(bn_layer.blobs + (scale_layer.blobs if scale_layer else [])):
            if blob_index != 2 and blob.size != channels:
                raise ConversionError(caffemodel, f"layer {(bn_layer if blob_index < 3 else scale_layer).name}: {blob.size} values, the model's {module} has {channels} channels")
        folded = fold_batchnorm(bn_layer.blobs, scale_layer.blobs if scale_layer else None, channels)
        fill(f"{module}.running_mean", folded["running_mean"], f"{bn_layer.name}[0] / {bn_layer.name}[2]")
        fill(f"{module}.running_var", folded["running_var"], f"{bn_layer.name}[1] / {bn_layer.name}[2]")
        source = scale_layer.name if scale_layer else "(no Scale layer: 1)"
        fill(f"{module}.weight", folded["weight"], f"{source}[0]" if scale_layer else source)
        fill(f"{module}.bias", folded["bias"], f"{source}[1]" if scale_layer and len(scale_layer.blobs) > 1 else "(no bias: 0)")

    for key, tensor in expected.items():
        if key in filled:
            continue
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(tensor)
            filled[key] = "(bookkeeping, not in Caffe: 0)"
            continue
        module = key.rsplit(".", 1)[0]
        raise ConversionError(caffemodel, f"no blobs for the model's {key} (module {module}): the file lacks a layer the graph needs")

    model.load_state_dict(state, strict=True)
    model.eval()
    return Conversion(
        model=model, config=config, state_dict=state, caffemodel=caffemodel, prototxt=prototxt,
        caffemodel_sha256=sha256_file(caffemodel), records=records, checks=checks, filled=filled, graph=graph,
        ignored=[layer for layer in weights if layer.params is not None and layer.name not in model_layers],
    )
