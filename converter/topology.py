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
  branches), and the model's output layer;
- what follows the output is post-processing, left outside the model: an Interp whose result
  no model layer reads (v1's ``fc8_interp``, v2's ``fc1_interp`` after ``fc_fusion``) and every
  layer outside the model that reads the output or what derives from it (ArgMax, DenseCRF,
  MatWrite, SegAccuracy, Softmax, ...). ``post_processing`` lists them in graph order and
  ``evaluation_protocol`` says what they do, in words.
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
# Weightless types outside the model that fit only after its output: they crop the score map
# (DeepLab v1's test nets crop the upsampled scores with the fork's Padding layer).
POST_ONLY_TYPES = {"Padding", "Crop"}
WEIGHT_TYPES = ("Convolution", "BatchNorm", "Scale")


@dataclass
class Topology:
    """A DeepLab graph's model layers and dataflow (see the module docstring).

    layers: model layers in graph order, Split layers removed, bottoms resolved (fresh params).
    input: the image blob. pyramid: the Interp layers resizing the input, graph order (MSC
    scale k+1 = pyramid[k]). branch: layer -> 0 (the 1x net), k (the k-th pyramid input) or
    None (fusion). original: MSC copy -> the 1x layer it repeats. score_interps: branch k ->
    the Interp resizing its score map to the 1x size. output: the layer producing the model's
    output. ignored: layers outside the model, by name. post_processing: the layers (outside
    the model) reading the output or what derives from it, graph order. input_size: the ``(H, W)`` the graph
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
    post_processing: list[CaffeLayer] = field(default_factory=list)

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
    if any(layer.params is None for layer in layers):
        raise ConversionError(source, "a layer graph is needed (HDF5 weights carry none): pass the prototxt")
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
    _drop_output_resizes(topo)
    _match_copies(topo, source)
    topo.output = _output_layer(topo, source)
    topo.post_processing = _post_processing(resolved, topo)
    post = {layer.name for layer in topo.post_processing}
    for layer in resolved:
        if layer.type in POST_ONLY_TYPES and layer.name not in post:
            raise ConversionError(source, f"layer {layer.name}: a {layer.type} layer fits only after the model's output")
        if layer.type not in MODEL_TYPES | IGNORED_TYPES | POST_ONLY_TYPES:
            raise ConversionError(source, f"layer {layer.name}: unknown layer type {layer.type!r}")
    return topo


def _drop_output_resizes(topo: Topology) -> None:
    """An Interp that resizes a blob no model layer reads (DeepLab v1's ``fc8_interp`` after
    ``fc8``, v2's ``fc1_interp`` after ``fc_fusion``: upsampling the final scores for ArgMax,
    MatWrite, SegAccuracy or a CRF) is post-processing: it leaves the model for ``ignored``.
    Repeated until none is left, so a chain of such resizes goes too; the input pyramid and the
    MSC score-map resizes stay (the convolutions and the fusion read them)."""
    while True:
        read = {bottom for layer in topo.layers for bottom in layer.params.bottom}
        dangling = [layer for layer in topo.layers if layer.type == "Interp" and layer not in topo.pyramid
                    and not read & set(layer.params.top)]
        if not dangling:
            return
        for layer in dangling:
            topo.layers.remove(layer)
            del topo.branch[layer.name]
            topo.ignored.append(layer.name)


def _post_processing(resolved: list[CaffeLayer], topo: Topology) -> list[CaffeLayer]:
    """The layers outside the model that read the model's output, or a blob derived from it,
    in graph order (the evaluation the graph runs on the scores)."""
    output = next(layer for layer in topo.layers if layer.name == topo.output)
    derived = set(output.params.top)
    post = []
    for layer in resolved:
        if layer.name in topo.branch or not derived & set(layer.params.bottom):
            continue
        post.append(layer)
        derived |= set(layer.params.top)
    return post


def _numbers(values) -> str:
    return "/".join(f"{float(v):g}" for v in values) or "default"


def describe_post_layer(layer: CaffeLayer) -> str:
    """One post-processing layer in words (what it computes, with its parameters as read; a
    layer whose parameters our schema does not hold, e.g. in an old V1 file, says so)."""
    p = layer.params
    unread = f"{layer.type} (its parameters are not read here)"
    if layer.type == "Interp":
        q = p.interp_param
        if q.height or q.width:
            size = f"to {q.height}x{q.width}"
        else:
            size = " ".join(f"{k} {v}" for k, v in (("shrink", q.shrink_factor), ("zoom", q.zoom_factor)) if v != 1) \
                or "to the same size"
        pads = f", pad {q.pad_beg}/{q.pad_end}" if q.pad_beg or q.pad_end else ""
        return f"Interp {size}{pads} (bilinear, aligned corners)"
    if layer.type == "ArgMax":
        q = p.argmax_param
        top_k = f", top {q.top_k}" if q.top_k != 1 else ""
        return f"ArgMax over axis {q.axis if q.HasField('axis') else 'flattened'}{top_k}" + \
            (" (with max value)" if q.out_max_val else "")
    if layer.type == "DenseCRF":
        if not p.HasField("dense_crf_param"):
            return unread
        q = p.dense_crf_param
        return (f"DenseCRF ({q.max_iter} iterations, positional w {_numbers(q.pos_w)} xy std {_numbers(q.pos_xy_std)}, "
                f"bilateral w {_numbers(q.bi_w)} xy std {_numbers(q.bi_xy_std)} rgb std {_numbers(q.bi_rgb_std)})")
    if layer.type == "SoftmaxWithLoss":
        if not p.HasField("loss_param"):  # v1 files keep it in the fork's softmaxloss_param
            return f"SoftmaxWithLoss against {p.bottom[-1]} (its parameters are not read here)"
        ignore = p.loss_param.ignore_label if p.loss_param.HasField("ignore_label") else "none"
        return f"SoftmaxWithLoss against {p.bottom[-1]} (ignore label {ignore})"
    if layer.type == "SegAccuracy":
        if not p.HasField("seg_accuracy_param"):
            return f"SegAccuracy against {p.bottom[-1]} (its parameters are not read here)"
        ignore = ", ".join(str(v) for v in p.seg_accuracy_param.ignore_label) or "none"
        return f"SegAccuracy against {p.bottom[-1]} (ignore label {ignore})"
    if layer.type == "MatWrite":
        prefix = p.mat_write_param.prefix
        return f"MatWrite of {p.bottom[0]}" + (f" to {prefix}" if p.HasField("mat_write_param") else
                                                 " (its parameters are not read here)")
    if layer.type in ("Softmax", "Silence"):
        return layer.type
    return unread


def evaluation_protocol(topo: Topology) -> str:
    """What the graph does after the model's output, in words: ``"fc1_interp: Interp zoom 8
    (bilinear, aligned corners), then fc1_interp_argmax: ArgMax over axis 1"``; ``"none"``
    when the graph ends at the model's output."""
    return ", then ".join(f"{layer.name}: {describe_post_layer(layer)}" for layer in topo.post_processing) or "none"


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
        if not fused or fused[0].type != "Eltwise":
            names = ", ".join(layer.name for layer in fused) or "none"
            raise ConversionError(source, f"MSC graph must fuse its scales with one Eltwise layer, found {names}")
        if len(fused) > 1:
            raise ConversionError(source, f"layer {fused[1].name} ({fused[1].type}) reads the scores fused by "
                                          f"{fused[0].name} but is not post-processing (an Interp whose result no model "
                                          "layer reads, ArgMax, DenseCRF, MatWrite, SegAccuracy, Softmax, Silence)")
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
