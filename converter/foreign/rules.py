"""Importing another port's state_dict onto our models: key rules as pure data, strict accounting.

A ``KeyMapping`` is data, in the style of timm's checkpoint filters:

* ``rules``: ordered ``Rule(foreign, ours)`` pairs of key templates. A template is a key with
  named fields: ``{name}`` matches one dotted segment (``[^.]+``), ``{name:REGEX}`` matches
  ``REGEX``, and ``{name:ordinal0}`` / ``{name:ordinal1}`` (foreign side only) match a block
  number counted from 0 / 1. Our side uses the same field names; an ordinal field resolves to
  the name of the child at that position of the module our template names before it
  (``block1`` -> ``res3.a``, ``block2`` -> ``res3.b1``), so the rules need no table of block ids.
  The first rule whose foreign template matches a key wins. Templates invert: the same rules
  write our state_dict back in the foreign layout (``export_state_dict``).
* ``outside``: ``(regex, reason)``: foreign keys that are not part of the model (optimizer
  state, a training-only head), accounted for with the reason and not loaded.
* ``optional``: ``(regex, reason)``: our keys the foreign file may lack; they are filled with
  zeros (``num_batches_tracked``, bookkeeping only).

``map_state_dict`` applies a mapping: every foreign key is mapped or accounted for, every key of
our model is filled exactly once, each shape equals our built model's, and float values are
finite. Anything else raises ``ConversionError("<file>: <problem>")``, one line naming the key.
The ``ImportResult`` it returns is what ``converter.report.import_report`` renders.

``ForeignFormat`` bundles what one foreign checkpoint family needs (read the file, derive our
model config from its tensors, the mapping); ``import_checkpoint`` runs the whole import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeplab_caffe import models
from deeplab_caffe.converter.conversion import CONVERTER_VERSION, sha256_file
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.models.bounds import FileBoundError, check_tree_size

__all__ = ["Rule", "KeyMapping", "KeyRecord", "ImportResult", "ForeignFormat", "map_state_dict",
           "export_state_dict", "import_checkpoint", "load_torch_file"]

_FIELD = re.compile(r"\{(?P<name>[A-Za-z_]\w*)(?::(?P<spec>[^{}]+))?\}")
_ORDINALS = {"ordinal0": 0, "ordinal1": 1}


@dataclass(frozen=True)
class Rule:
    """One foreign key template and the template of our key it becomes (see the module doc)."""

    foreign: str
    ours: str


@dataclass(frozen=True)
class KeyMapping:
    """The rules of one foreign layout: ``rules`` (ordered), ``outside`` and ``optional``
    ``(regex, reason)`` pairs (see the module doc)."""

    name: str
    rules: tuple[Rule, ...]
    outside: tuple[tuple[str, str], ...] = ()
    optional: tuple[tuple[str, str], ...] = (
        (r".*\.num_batches_tracked", "BatchNorm bookkeeping, unused in eval: 0 when absent"),)


@dataclass
class KeyRecord:
    """What happened to one foreign key (one row of the import report)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    status: str  # "mapped" | "outside" (accounted for, not part of the model)
    target: str  # our state_dict key, or the reason it is outside the model
    stats: dict[str, float]


@dataclass
class ImportResult:
    """A foreign checkpoint imported onto our model (eval mode), with its accounting."""

    format: str
    source: Path
    source_sha256: str
    model: nn.Module
    config: dict
    state_dict: dict[str, torch.Tensor]
    records: list[KeyRecord]
    filled: dict[str, str]  # our key -> the foreign key it came from, or the optional rule's reason
    converter_version: str = CONVERTER_VERSION
    notes: list[str] = field(default_factory=list)  # conventions the format fixes (rates, MSC resize)


@dataclass(frozen=True)
class ForeignFormat:
    """One foreign checkpoint family: ``read(path)`` gives its flat ``{key: tensor or array}``,
    ``derive_config(state, path)`` our model config for it (raising ``ConversionError``),
    ``mapping`` the key rules; ``notes`` lists the conventions the import fixes; ``mean_bgr`` is
    the mean the caller subtracts from the BGR 0-255 input;
    ``write_layout(model, source)``, when given, writes our model back in this layout
    (``deeplab-export --layout NAME``), raising ``ConversionError`` when the layout cannot hold it;
    ``file_notes(state)``, when given, adds notes about this file (e.g. entries the format's own
    loader ignores, and how their values compare with what is used)."""

    name: str
    description: str
    read: Callable[[Path], dict[str, Any]]
    derive_config: Callable[[Mapping[str, Any], Path], dict]
    mapping: KeyMapping
    notes: tuple[str, ...] = ()
    mean_bgr: tuple[float, float, float] = models.VOC_MEAN_BGR
    write_layout: Callable[[nn.Module, Path], dict[str, torch.Tensor]] | None = None
    file_notes: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None


@dataclass(frozen=True)
class _Template:
    """A compiled key template: its regex, its fields and their specs."""

    text: str
    regex: re.Pattern
    specs: dict[str, str | None]


def _compile(text: str) -> _Template:
    parts, specs, end = [], {}, 0
    for match in _FIELD.finditer(text):
        name, spec = match["name"], match["spec"]
        if name in specs:
            raise ValueError(f"key template {text!r} names the field {name!r} twice")
        specs[name] = spec
        pattern = r"\d+" if spec in _ORDINALS else (spec or r"[^.]+")
        parts += [re.escape(text[end:match.start()]), f"(?P<{name}>{pattern})"]
        end = match.end()
    parts.append(re.escape(text[end:]))
    return _Template(text, re.compile("".join(parts)), specs)


class _Compiled:
    """A KeyMapping's templates and regexes compiled once, checked for matching field names."""

    def __init__(self, mapping: KeyMapping) -> None:
        self.mapping = mapping
        self.rules = []
        for rule in mapping.rules:
            foreign, ours = _compile(rule.foreign), _compile(rule.ours)
            if foreign.specs.keys() != ours.specs.keys():
                raise ValueError(f"rule {rule.foreign!r} -> {rule.ours!r}: the two sides name different fields")
            if any(spec in _ORDINALS for spec in ours.specs.values()):
                raise ValueError(f"rule {rule.ours!r}: ordinals belong on the foreign side")
            self.rules.append((rule, foreign, ours))
        self.outside = [(re.compile(pattern), reason) for pattern, reason in mapping.outside]
        self.optional = [(re.compile(pattern), reason) for pattern, reason in mapping.optional]


def _children(model: nn.Module, path: str) -> list[str]:
    """Names of the child modules of ``model``'s module at ``path``, in order ([] if none is there)."""
    try:
        return [name for name, _ in model.get_submodule(path).named_children()]
    except AttributeError:
        return []


def _format_ours(template: _Template, values: dict[str, str], ordinals: dict[str, int], model: nn.Module) -> str | None:
    """Our key from the field values; an ordinal field becomes the name of the child at that
    position of the module named before it (None when the model has no such child)."""
    out, end = "", 0
    for match in _FIELD.finditer(template.text):
        out += template.text[end:match.start()]
        name = match["name"]
        if name in ordinals:
            children = _children(model, out.rstrip("."))
            if not 0 <= ordinals[name] < len(children):
                return None
            out += children[ordinals[name]]
        else:
            out += values[name]
        end = match.end()
    return out + template.text[end:]


def _ours_key(compiled: _Compiled, key: str, model: nn.Module) -> tuple[str | None, Rule | None]:
    """(our key, rule) for a foreign key: the first rule that matches, or (None, None)."""
    for rule, foreign, ours in compiled.rules:
        match = foreign.regex.fullmatch(key)
        if match is None:
            continue
        values = match.groupdict()
        ordinals = {n: int(values[n]) - _ORDINALS[s] for n, s in foreign.specs.items() if s in _ORDINALS}
        return _format_ours(ours, values, ordinals, model), rule
    return None, None


def _foreign_key(compiled: _Compiled, key: str, model: nn.Module) -> str | None:
    """The foreign key our ``key`` comes from: the first rule whose our-side template matches
    and whose foreign key maps back to ``key``."""
    for _rule, foreign, ours in compiled.rules:
        match = ours.regex.fullmatch(key)
        if match is None:
            continue
        values = match.groupdict()
        for name, spec in foreign.specs.items():
            if spec in _ORDINALS:
                parent = key[: match.start(name)].rstrip(".")
                children = _children(model, parent)
                if values[name] not in children:
                    break
                values[name] = str(children.index(values[name]) + _ORDINALS[spec])
        else:
            candidate = _FIELD.sub(lambda m: values[m["name"]], foreign.text)
            if _ours_key(compiled, candidate, model)[0] == key:
                return candidate
    return None


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))
    return None


def _stats(tensor: torch.Tensor) -> dict[str, float]:
    values = tensor.double()
    if values.numel() == 0:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "std": 0.0}
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std(unbiased=False))}


def _outside_reason(compiled: _Compiled, key: str) -> str | None:
    return next((reason for regex, reason in compiled.outside if regex.fullmatch(key)), None)


def _map_one(compiled: _Compiled, key: str, value: Any, model: nn.Module, expected: dict, source: Path,
             allow_nonfinite: bool) -> tuple[str | None, torch.Tensor | None, str | None]:
    """(our key, tensor, None) for a mapped key, (None, tensor, reason) for one outside the model."""
    tensor = _as_tensor(value)
    reason = _outside_reason(compiled, key)
    if reason is not None:
        return None, tensor, reason
    ours, rule = _ours_key(compiled, key, model)
    if rule is None:
        raise ConversionError(source, f"key {key}: no {compiled.mapping.name} rule maps it and none accounts for it")
    if ours is None:
        raise ConversionError(source, f"key {key}: its block number is beyond the model's blocks (rule {rule.foreign})")
    if ours not in expected:
        raise ConversionError(source, f"key {key} maps to {ours} (rule {rule.foreign} -> {rule.ours}), "
                                      "which the model does not have")
    if tensor is None:
        raise ConversionError(source, f"key {key} holds a {type(value).__name__}, not a tensor or numeric array")
    want = tuple(expected[ours].shape)
    if tuple(tensor.shape) != want:
        raise ConversionError(source, f"key {key}: shape {tuple(tensor.shape)} but the model's {ours} is {want}")
    if tensor.is_floating_point() and not allow_nonfinite and not bool(torch.isfinite(tensor).all()):
        raise ConversionError(source, f"key {key} {want} holds NaN or Inf values")
    return ours, tensor.to(expected[ours].dtype), None


def map_state_dict(
    foreign: Mapping[str, Any], mapping: KeyMapping, model: nn.Module, source: str | Path, *,
    allow_nonfinite: bool = False,
) -> tuple[dict[str, torch.Tensor], list[KeyRecord], dict[str, str]]:
    """Map a foreign ``{key: tensor or numpy array}`` onto ``model``'s state_dict by ``mapping``.

    Returns ``(state_dict, records, filled)``: our complete state_dict (values cast to our
    dtypes), one record per foreign key in file order, and for each of our keys where it came
    from. Raises ``ConversionError(source, ...)`` for a key no rule maps or accounts for, a key
    mapping to a tensor the model lacks or twice to the same one, a shape that differs from the
    model's, a non-numeric value, NaN/Inf (unless ``allow_nonfinite``), or a model key the file
    does not give (named by the foreign key the rules expect for it).
    """
    source = Path(source)
    compiled = _Compiled(mapping)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    filled: dict[str, str] = {}
    records: list[KeyRecord] = []
    for key, value in foreign.items():
        ours, tensor, reason = _map_one(compiled, str(key), value, model, expected, source, allow_nonfinite)
        if ours is not None and ours in filled:
            raise ConversionError(source, f"key {key} maps to {ours}, already filled from {filled[ours]}")
        shape = tuple(tensor.shape) if tensor is not None else ()
        dtype = str(tensor.dtype).removeprefix("torch.") if tensor is not None else type(value).__name__
        stats = _stats(tensor) if tensor is not None else {}
        records.append(KeyRecord(str(key), shape, dtype, "mapped" if ours else "outside", ours or reason, stats))
        if ours is not None:
            state[ours], filled[ours] = tensor, str(key)
    for ours, tensor in expected.items():
        if ours in filled:
            continue
        reason = next((r for regex, r in compiled.optional if regex.fullmatch(ours)), None)
        if reason is None:
            wanted = _foreign_key(compiled, ours, model)
            raise ConversionError(source, f"missing key {wanted or '(no rule gives one)'} for the model's {ours}")
        state[ours], filled[ours] = torch.zeros_like(tensor, device="cpu"), f"(absent: {reason})"
    return state, records, filled


def export_state_dict(state_dict: Mapping[str, torch.Tensor], mapping: KeyMapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` written in the foreign layout (the rules inverted), in our key order.

    Raises ``ValueError`` naming a key no rule writes back."""
    compiled = _Compiled(mapping)
    out = {}
    for key, tensor in state_dict.items():
        foreign = _foreign_key(compiled, key, model)
        if foreign is None:
            raise ValueError(f"{mapping.name}: no rule writes the model's {key} back")
        out[foreign] = tensor.detach().cpu().clone()
    return out


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is a one-line ConversionError,
    as is a payload that declares more than the file holds (``models.bounds.check_tree_size``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and torch errors alike
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConversionError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {first[:200]})") from err
    try:  # before anything reads a shape: a zero-stride tensor or shared lists declare far more than the file
        check_tree_size(path, "checkpoint", payload)
    except FileBoundError as err:
        raise ConversionError(path, err.problem) from None
    return payload


def import_checkpoint(path: str | Path, fmt: ForeignFormat, *, allow_nonfinite: bool = False) -> ImportResult:
    """Read a ``fmt`` checkpoint, derive our config, build the model and load every tensor into
    it strictly (``map_state_dict``). Returns the model in eval mode with the accounting."""
    path = Path(path)
    foreign = fmt.read(path)
    config = fmt.derive_config(foreign, path)
    model = models.build_model(config, init=False)
    state, records, filled = map_state_dict(foreign, fmt.mapping, model, path, allow_nonfinite=allow_nonfinite)
    model.load_state_dict(state, strict=True)
    model.eval()
    return ImportResult(format=fmt.name, source=path, source_sha256=sha256_file(path), model=model, config=config,
                        state_dict=state, records=records, filled=filled,
                        notes=[*fmt.notes, *(fmt.file_notes(foreign) if fmt.file_notes else ())])
