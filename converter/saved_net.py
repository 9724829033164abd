"""The graph Caffe saves: what ``Net::Init`` does to a NetParameter before ``Net::ToProto``.

A ``.caffemodel`` holds the net Caffe ran, not the prototxt it read: layers whose
``include``/``exclude`` rules do not match the phase are gone (``FilterNet``), a ``Split``
layer follows every blob that feeds several layers (``InsertSplits``), its consumers read the
split's tops, and every layer carries the net's ``phase``. Pure functions on NetParameter
messages of any schema (ours, the DeepLab fork's, BVLC's): only fields all of them share are
touched. Written from Caffe's own logic (``src/caffe/net.cpp``, ``util/insert_splits.cpp``,
``util/upgrade_proto.cpp``), read in BVLC/caffe @ 9b89154 and the DeepLab fork
(DrSleep/deeplab-public-ver2 @ a11f8a2).

Two savers differ:
- ``"fork"`` (DeepLab's Caffe, which saved the released models): net-level ``input`` blobs stay
  net inputs; a split of one is named after the pseudo-layer ``"input"``
  (``data_input_0_split``); ``ToProto`` writes ``name``, the ``input`` names and the layers.
- ``"bvlc"`` (BVLC-line Caffe since 2017, as the reference Caffe that makes the goldens,
  brocolli-caffe 9.0.2, does it; checked against its saved files): the reader first turns net
  inputs into one ``Input`` layer named ``"input"`` at the front (``UpgradeNetInput``; the
  shapes go to ``input_param`` only where the schema has it) and drops the ``param`` entries of
  a BatchNorm layer that has three (``UpgradeNetBatchNorm``, BVLC a8ec123; BVLC master since
  a19357a keeps them with ``lr_mult``/``decay_mult`` 0 instead). ``ToProto`` writes ``name``
  and the layers.
"""

from __future__ import annotations

from collections import Counter

from google.protobuf.message import Message

TRAIN, TEST = 0, 1  # caffe.Phase
_PHASES = {"TRAIN": TRAIN, "TEST": TEST, TRAIN: TRAIN, TEST: TEST}
INPUT_LAYER = "input"  # the name Caffe gives net inputs (InsertSplits' layer -1, UpgradeNetInput's layer)


def phase_value(phase: str | int) -> int:
    """``"TRAIN"``/``"TEST"`` (or 0/1) -> Caffe's Phase enum value."""
    if phase not in _PHASES:
        raise ValueError(f"phase must be TRAIN or TEST, got {phase!r}")
    return _PHASES[phase]


def _state_meets_rule(state: Message, rule: Message) -> bool:
    """Caffe's ``Net::StateMeetsRule``: phase, level range, all ``stage`` and no ``not_stage``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def filter_net(net: Message, phase: str | int | None = None) -> Message:
    """Caffe's ``Net::FilterNet``: the layers whose rules match the net state.

    ``phase`` overrides ``net.state.phase`` (as ``Net(file, phase)`` does); level and stages come
    from ``net.state``. A layer without rules is kept; with ``include`` rules it is kept if one
    matches; with ``exclude`` rules it is dropped if one matches. Both kinds at once is an error.
    """
    state = type(net.state)()
    state.CopyFrom(net.state)
    if phase is not None:
        state.phase = phase_value(phase)
    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if len(layer.include) and len(layer.exclude):
            raise ValueError(f"layer {layer.name!r}: specify either include rules or exclude rules, not both")
        if layer.include:
            keep = any(_state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(_state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            out.layer.append(layer)
    return out


def split_layer_name(producer: str, blob: str, top_index: int) -> str:
    """``<blob>_<producer layer>_<top index>_split`` (Caffe's ``SplitLayerName``)."""
    return f"{blob}_{producer}_{top_index}_split"


def split_blob_name(producer: str, blob: str, top_index: int, split_index: int) -> str:
    """``<blob>_<producer layer>_<top index>_split_<j>`` (Caffe's ``SplitBlobName``)."""
    return f"{split_layer_name(producer, blob, top_index)}_{split_index}"


def _count_uses(net: Message) -> tuple[dict, Counter, dict]:
    """Per bottom ``(layer, j)`` its source top ``(layer, k)`` (-1 = net input), uses per source
    top (a top with a non-zero ``loss_weight`` counts as one more use), loss weights per top."""
    last_top: dict[str, tuple[int, int]] = {name: (-1, k) for k, name in enumerate(net.input)}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    uses: Counter = Counter()
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise ValueError(f"unknown bottom blob {blob!r} (layer {layer.name!r}, bottom index {j})")
            source[i, j] = last_top[blob]
            uses[last_top[blob]] += 1
        for k, blob in enumerate(layer.top):
            last_top[blob] = (i, k)  # an in-place chain: the last producer owns the name
        for k in range(min(len(layer.loss_weight), len(layer.top))):
            loss_weight[i, k] = layer.loss_weight[k]
            uses[i, k] += bool(layer.loss_weight[k])
    return source, uses, loss_weight


def _split_layer(like: Message, producer: str, blob: str, top_index: int, count: int, loss_weight: float) -> Message:
    """Caffe's ``ConfigureSplitLayer`` (a LayerParameter of ``like``'s schema): one bottom,
    ``count`` tops; a loss weight moves to top 0 (the others get 0)."""
    layer = type(like)()
    layer.bottom.append(blob)
    layer.name = split_layer_name(producer, blob, top_index)
    layer.type = "Split"
    for k in range(count):
        layer.top.append(split_blob_name(producer, blob, top_index, k))
        if loss_weight:
            layer.loss_weight.append(loss_weight if k == 0 else 0.0)
    return layer


def insert_splits(net: Message) -> Message:
    """Caffe's ``InsertSplits``: a ``Split`` layer after every top (or net input) used by more than
    one bottom, consumers' bottoms renamed to its tops in layer order.

    The split follows its producer; for an in-place chain (``conv1`` -> ``bn_conv1`` ->
    ``scale_conv1`` -> ``conv1_relu``) the producer is the last layer that wrote the name. A net
    input's producer is named ``"input"``. Raises ValueError on a bottom nobody produced.
    """
    source, uses, loss_weight = _count_uses(net)
    producers = {-1: INPUT_LAYER} | {i: layer.name for i, layer in enumerate(net.layer)}
    taken: Counter = Counter()  # split tops handed out per source top
    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    like = type(net)().layer.add()  # an empty LayerParameter of this schema
    out.layer.extend(_split_layer(like, INPUT_LAYER, blob, k, uses[-1, k], 0.0)
                     for k, blob in enumerate(net.input) if uses[-1, k] > 1)
    for i, layer in enumerate(net.layer):
        copy = type(like)()
        copy.CopyFrom(layer)
        for j, blob in enumerate(layer.bottom):
            top = source[i, j]
            if uses[top] > 1:
                copy.bottom[j] = split_blob_name(producers[top[0]], blob, top[1], taken[top])
                taken[top] += 1
        splits = []
        for k, blob in enumerate(layer.top):
            if uses[i, k] > 1:
                weight = loss_weight.get((i, k), 0.0)
                splits.append(_split_layer(like, layer.name, blob, k, uses[i, k], weight))
                if weight:  # the split carries the loss now; its top 0 stands for the loss use
                    copy.ClearField("loss_weight")
                    taken[i, k] += 1
        out.layer.append(copy)
        out.layer.extend(splits)
    return out


def upgrade_net_input(net: Message) -> Message:
    """BVLC's ``UpgradeNetInput``: net inputs with shapes become one ``Input`` layer named
    ``"input"`` at the front (shapes in ``input_param`` where the schema has it); the net-level
    ``input``/``input_shape``/``input_dim`` fields are cleared either way."""
    out = type(net)()
    out.CopyFrom(net)
    for name in ("input", "input_shape", "input_dim"):
        out.ClearField(name)
    if not (len(net.input_shape) or len(net.input_dim)):
        return out
    del out.layer[:]
    layer = out.layer.add(name=INPUT_LAYER, type="Input", top=list(net.input))
    if "input_param" in layer.DESCRIPTOR.fields_by_name:
        for k in range(len(net.input)):
            dims = net.input_shape[k].dim if len(net.input_shape) else net.input_dim[4 * k: 4 * k + 4]
            layer.input_param.shape.add().dim.extend(dims)
    out.layer.extend(net.layer)
    return out


def _upgrade_batch_norm(net: Message) -> None:
    """``UpgradeNetBatchNorm`` as the reference Caffe has it, in place: a BatchNorm layer with
    three ``param`` entries loses them (its statistics are not solver parameters)."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")


def saved_net(net: Message, phase: str | int = "TRAIN", *, caffe: str = "fork") -> Message:
    """What ``Net::ToProto`` writes for ``net`` run in ``phase``, without blobs (see the module doc).

    Filtered, split, every layer with ``phase`` set (Caffe sets it on layers that lack one);
    ``name`` always present (Caffe sets it, even when empty). ``caffe`` is ``"fork"`` or ``"bvlc"``.
    """
    if caffe not in ("fork", "bvlc"):
        raise ValueError(f"caffe must be 'fork' or 'bvlc', got {caffe!r}")
    value = phase_value(phase)
    if caffe == "bvlc":
        net = upgrade_net_input(net)
        _upgrade_batch_norm(net)
    ran = insert_splits(filter_net(net, value))
    out = type(net)()
    out.name = ran.name
    out.input.extend(ran.input)
    for layer in ran.layer:
        copy = out.layer.add()
        copy.CopyFrom(layer)
        copy.ClearField("blobs")
        if not copy.HasField("phase"):
            copy.phase = value
    return out
