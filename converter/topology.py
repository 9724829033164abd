"""The dataflow of a DeepLab-ResNet Caffe graph, derived from bottoms and tops, never from names.

A graph as Caffe saved it (``Net::ToProto``) carries the ``Split`` layers Caffe inserts where a
blob feeds several layers, with the consumers' bottoms renamed (``data`` read as
``data_data_0_split_0``); train graphs add data, label, loss and accuracy layers. ``analyse``
turns any of these into what the model needs:

- the Split layers removed and every bottom resolved to the blob it splits;
- the image input (the one source blob from which the convolutions are reached; a label blob
  and what hangs off it, e.g. ``label_shrink``, is outside the model);
- the MSC pyramid: Interp layers that resize the input, each starting a branch;
- for every layer of a branch, the 1x layer it repeats: by position in the branch (the same
  sequence of layer types), cross-checked with ``param { name }`` sharing where the graph has
  it. Nothing assumes where a name suffix sits (the official graphs name copies
  ``res2a_branch1_res05`` but ``fc1_voc12_res05_c0``);
- the branch's score-map Interp (resize to the 1x map) and the MSC fusion (Eltwise over all
  branches), and the model's output layer; in a single-scale graph, an Interp that only resizes
  the final scores (v1's ``fc8_interp``) is post-processing, left outside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.read import CaffeLayer

# Layer types the model implements.
MODEL_TYPES = {"Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "Eltwise", "Interp", "Dropout"}
# Types outside the inference graph: data, loss, bookkeeping, the fork's extras. They may be
# present (train snapshots carry them) and carry no weights.
IGNORED_TYPES = {
    "Input", "Data", "ImageData", "ImageSegData", "MemoryData", "HDF5Data", "DummyData", "WindowData",
    "SoftmaxWithLoss", "Softmax", "Accuracy", "SegAccuracy", "Silence", "Split", "ArgMax", "MatWrite",
    "MatRead", "DenseCRF", "UniqueLabel",
}
WEIGHT_TYPES = ("Convolution", "BatchNorm", "Scale")


@dataclass
class Topology:
    """A DeepLab graph's model layers and dataflow (see the module docstring).

    layers: model layers in graph order, Split layers removed, bottoms resolved (fresh params).
    input: the image blob. pyramid: the Interp layers resizing the input, graph order (MSC
    scale k+1 = pyramid[k]). branch: layer -> 0 (the 1x net), k (the k-th pyramid input) or
    None (fusion). original: MSC copy -> the 1x layer it repeats. score_interps: branch k ->
    the Interp resizing its score map to the 1x size. output: the layer producing the model's
    output. ignored: layers outside the model, by name. input_size: the ``(H, W)`` the graph
    states for its input (net input dims or the data layer's crop), if any. family:
    ``"resnet"`` (DeepLab-ResNet) or ``"vgg"`` (DeepLab-VGG16: ``conv1_1``, no ``conv1``).
    """

    layers: list[CaffeLayer]
    input: str
    input_size: tuple[int, int] | None = None
    pyramid: list[CaffeLayer] = field(default_factory=list)
    branch: dict[str, int | None] = field(default_factory=dict)
    original: dict[str, str] = field(default_factory=dict)
    score_interps: dict[int, CaffeLayer] = field(default_factory=dict)
    fusion: CaffeLayer | None = None
    output: str = ""
    ignored: list[str] = field(default_factory=list)
    family: str = "resnet"

    def canonical(self, name: str) -> str:
        """The 1x layer whose weights and hyper-parameters ``name`` shares (itself if not a copy)."""
        return self.original.get(name, name)

    def unique_layers(self) -> list[CaffeLayer]:
        """The 1x net's layers (no MSC copies, pyramid, score resizes or fusion)."""
        return [layer for layer in self.layers if self.branch.get(layer.name) == 0]


def _copy_params(layer: CaffeLayer, bottoms: list[str]) -> CaffeLayer:
    params = type(layer.params)()
    params.CopyFrom(layer.params)
    del params.bottom[:]
    params.bottom.extend(bottoms)
    return CaffeLayer(name=layer.name, type=layer.type, blobs=layer.blobs, params=params)


def resolve_splits(layers: list[CaffeLayer]) -> list[CaffeLayer]:
    """The graph without Caffe's ``Split`` layers: each consumer reads the blob that was split."""
    alias: dict[str, str] = {}
    out = []
    for layer in layers:
        bottoms = [alias.get(b, b) for b in layer.params.bottom]
        if layer.type == "Split":
            for top in layer.params.top:
                alias[top] = bottoms[0]
            continue
        out.append(_copy_params(layer, bottoms) if bottoms != list(layer.params.bottom) else layer)
    return out


def _find_input(layers: list[CaffeLayer], source: Path | str | None) -> str:
    """The source blob (consumed, never produced by a model layer) that reaches a convolution."""
    produced = {top for layer in layers if layer.type in MODEL_TYPES for top in layer.params.top}
    reach: dict[str, set[str]] = {}  # blob -> the source blobs it derives from
    inputs: set[str] = set()
    for layer in layers:
        if layer.type not in MODEL_TYPES:
            continue
        origins: set[str] = set()
        for bottom in layer.params.bottom:
            origins |= reach.get(bottom, {bottom} if bottom not in produced else set())
        if layer.type == "Convolution":
            inputs |= origins
        for top in layer.params.top:
            reach[top] = origins
    if len(inputs) != 1:
        found = ", ".join(sorted(inputs)) or "none"
        raise ConversionError(source, f"expected one image input feeding the convolutions, found {found}")
    return inputs.pop()


def analyse(layers: list[CaffeLayer], source: Path | str | None = None,
            input_size: tuple[int, int] | None = None) -> Topology:
    """Resolve splits, find the input, the MSC branches and the layer each copy repeats.

    ``input_size``: the input ``(H, W)`` a prototxt states at net level (``input_dim`` /
    ``input_shape``); otherwise a data layer's ``crop_size`` is used when there is one.
    """
    for layer in layers:
        if layer.params is None:
            raise ConversionError(source, "a layer graph is needed (HDF5 weights carry none): pass the prototxt")
        if layer.type not in MODEL_TYPES and layer.type not in IGNORED_TYPES:
            raise ConversionError(source, f"layer {layer.name}: unknown layer type {layer.type!r}")
    resolved = resolve_splits(layers)
    image = _find_input(resolved, source)
    topo = Topology(layers=[], input=image, input_size=input_size or _crop_size(resolved, image),
                    family=graph_family(resolved))
    blob_branch: dict[str, int | None] = {image: 0}
    for layer in resolved:
        bottoms = list(layer.params.bottom)
        if layer.type not in MODEL_TYPES or not bottoms or any(b not in blob_branch for b in bottoms):
            topo.ignored.append(layer.name)
            continue
        if layer.type == "Interp" and bottoms == [image]:
            topo.pyramid.append(layer)
            branch: int | None = len(topo.pyramid)
        else:
            branches = {blob_branch[b] for b in bottoms}
            branch = branches.pop() if len(branches) == 1 else None
        topo.branch[layer.name] = branch
        topo.layers.append(layer)
        for top in layer.params.top:
            blob_branch[top] = branch
    _drop_output_resize(topo)
    _match_copies(topo, source)
    topo.output = _output_layer(topo, source)
    return topo


def _drop_output_resize(topo: Topology) -> None:
    """A single-scale graph's Interp whose output no model layer reads (DeepLab v1's test graph
    upsamples ``fc8`` by ``fc8_interp`` for MatWrite / SegAccuracy) resizes the final scores for
    post-processing: it is left outside the model, in ``ignored``."""
    if topo.pyramid:
        return
    read = {bottom for layer in topo.layers for bottom in layer.params.bottom}
    for layer in [layer for layer in topo.layers if layer.type == "Interp"]:
        if not read & set(layer.params.top):
            topo.layers.remove(layer)
            del topo.branch[layer.name]
            topo.ignored.append(layer.name)


def graph_family(layers: list[CaffeLayer]) -> str:
    """``"vgg"`` for a DeepLab-VGG16 graph (a ``conv1_1`` convolution, no ``conv1``), else ``"resnet"``."""
    convs = {layer.name for layer in layers if layer.type == "Convolution"}
    return "vgg" if "conv1_1" in convs and "conv1" not in convs else "resnet"


def _crop_size(layers: list[CaffeLayer], image: str) -> tuple[int, int] | None:
    """The crop of the data layer producing ``image`` (train graphs), if it states one."""
    for layer in layers:
        if layer.type not in MODEL_TYPES and image in layer.params.top and hasattr(layer.params, "transform_param"):
            crop = int(layer.params.transform_param.crop_size)
            return (crop, crop) if crop else None
    return None


def _param_names(layer: CaffeLayer) -> tuple[str, ...]:
    return tuple(p.name for p in layer.params.param)


def _match_copies(topo: Topology, source: Path | str | None) -> None:
    """Pair each branch's layers with the 1x net's, position by position; check param sharing."""
    ones = topo.unique_layers()
    for k, interp in enumerate(topo.pyramid, start=1):
        copies = [layer for layer in topo.layers if topo.branch[layer.name] == k and layer is not interp]
        if len(copies) == len(ones) + 1 and copies[-1].type == "Interp":
            topo.score_interps[k] = copies.pop()
        if len(copies) != len(ones):
            raise ConversionError(source, f"MSC branch of {interp.name} has {len(copies)} layers, the 1x net {len(ones)}: "
                                          "not copies of one net")
        for copy, one in zip(copies, ones):
            if copy.type != one.type:
                raise ConversionError(source, f"layer {copy.name} ({copy.type}) stands where the 1x net has {one.name} ({one.type})")
            names, own = _param_names(copy), _param_names(one)
            if copy.type in WEIGHT_TYPES and any(names) and names != own:
                raise ConversionError(source, f"layer {copy.name} shares params {list(names)} but stands where the 1x net "
                                              f"has {one.name} with params {list(own)}")
            topo.original[copy.name] = one.name
    fused = [layer for layer in topo.layers if topo.branch[layer.name] is None]
    if topo.pyramid:
        if len(fused) != 1 or fused[0].type != "Eltwise":
            names = ", ".join(layer.name for layer in fused) or "none"
            raise ConversionError(source, f"MSC graph must fuse its scales with one Eltwise layer, found {names}")
        topo.fusion = fused[0]
    elif fused:
        raise ConversionError(source, f"layer {fused[0].name} mixes blobs of several inputs in a single-scale graph")


def _output_layer(topo: Topology, source: Path | str | None) -> str:
    """The fusion (MSC), else the last writer of the one blob no model layer consumes."""
    if topo.fusion is not None:
        return topo.fusion.name
    consumed = {b for layer in topo.layers for b in layer.params.bottom}
    last_writer: dict[str, str] = {}  # in-place layers keep the blob's name: the last one wins
    for layer in topo.layers:
        for top in layer.params.top:
            last_writer[top] = layer.name
    outputs = sorted(writer for blob, writer in last_writer.items() if blob not in consumed)
    if len(outputs) != 1:
        raise ConversionError(source, f"expected one output blob, the graph ends in {', '.join(outputs) or 'nothing'}")
    return outputs[0]
