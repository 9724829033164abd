"""Training configs: YAML files that extend a base, plus ``KEY=VALUE`` command-line overrides.

A config file may name a base with ``_base_: base.yaml`` (a path relative to the file); the
base is loaded first (recursively) and the file's keys are deep-merged over it: dicts merge key
by key, anything else replaces. ``load_config("voc12")`` finds ``parity/train/configs/voc12.yaml``.

The merged config must only use keys that ``base.yaml`` defines (a misspelt key in a file or an
override is a ``ConfigError`` naming it); the free-form dicts ``dataset.kwargs`` and
``eval.kwargs`` (keyword arguments for ``parity.data.datasets.build_dataset``) accept any key.
Override values are parsed as YAML scalars (``solver.lr=0.001``, ``model.msc=false``,
``input.scale_range=[0.75,1.25]``); numbers in exponent form without a dot (``1e-3``) are
read as floats too (plain YAML would keep them as strings).

The sections (see ``configs/base.yaml`` for every key and its meaning): ``name``, ``seed``, ``dataset``,
``model``, ``input``, ``loss``, ``solver``, ``loader``, ``log``, ``eval``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from deeplab_caffe.models import MSC_RESIZES, default_config
from deeplab_caffe.parity.data.transforms import RESIZE_MODES

__all__ = [
    "ConfigError",
    "CONFIG_DIR",
    "FREE_FORM_KEYS",
    "available_configs",
    "deep_merge",
    "load_config",
    "apply_overrides",
    "parse_override",
    "validate_train_config",
    "SCHEMA",
    "model_config_from",
    "with_defaults",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_NAME = "base.yaml"
#: dotted keys whose dict value takes any keys (dataset keyword arguments)
FREE_FORM_KEYS = frozenset({"dataset.kwargs", "eval.kwargs"})


class ConfigError(ValueError):
    """A config file or override is missing, malformed or names an unknown key (one line)."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


def available_configs() -> list[str]:
    """Names of the configs shipped in ``parity/train/configs`` (``base`` excluded)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.name != BASE_NAME)


def _resolve(path_or_name: str | os.PathLike[str]) -> Path:
    text = str(path_or_name)
    if os.sep not in text and "/" not in text and not text.endswith((".yaml", ".yml")):
        path = CONFIG_DIR / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown config {text!r} (shipped: {', '.join(available_configs())}; "
                f"or give a path to a .yaml file)"
            )
        return path
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in: nested dicts merge key by key, other values replace.
    Neither input is modified."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    base_ref = data.pop("_base_", None)
    if base_ref is None:
        return data
    if not isinstance(base_ref, str):
        raise ConfigError(f"{path}: _base_ must be a file name, got {base_ref!r}")
    base_path = (path.parent / base_ref)
    if not base_path.is_file():
        raise ConfigError(f"{path}: _base_ file not found: {base_path}")
    return deep_merge(_load_file(base_path, seen + (path,)), data)


def _schema() -> dict[str, Any]:
    return _load_file(CONFIG_DIR / BASE_NAME)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every key ``base.yaml`` defines and it lacks taken from ``base.yaml``: a
    config saved before a key existed (a new key's default keeps the behaviour from before it)."""
    return deep_merge(_schema(), config)


def _check_known_keys(config: Mapping[str, Any], schema: Mapping[str, Any], where: str,
                      prefix: str = "") -> None:
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(str(k) for k in schema))
            raise ConfigError(f"{where}: unknown config key {dotted!r} (known here: {known})")
        if dotted in FREE_FORM_KEYS:
            continue
        if isinstance(value, Mapping) and isinstance(schema[key], Mapping):
            _check_known_keys(value, schema[key], where, dotted + ".")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def parse_override(item: str) -> tuple[str, Any]:
    """``"solver.lr=0.001"`` -> ``("solver.lr", 0.001)``: the value parsed as a YAML scalar
    (``1e-3`` -> ``0.001``; ``null``, ``true``, ``[1, 2]`` as YAML reads them)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE (e.g. solver.lr=0.001)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        number = _number(value)
        if number is not None and math.isfinite(number):
            value = number
    return key, value


def _type_ok(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float))
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    if isinstance(old, Mapping):
        return isinstance(new, Mapping)
    return isinstance(new, type(old))


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return ``config`` with each ``KEY=VALUE`` applied (dotted keys). A key must exist in the
    config (except inside ``dataset.kwargs`` / ``eval.kwargs``) and the value must have a
    compatible type (a number for a number, true/false for a bool, a list for a list; ``null``
    is always accepted), else ``ConfigError`` naming the key."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: depth + 1])
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: unknown config key {prefix!r}")
            if node[part] is None and prefix in FREE_FORM_KEYS:
                node[part] = {}
            node = node[part]
        parent = ".".join(parts[:-1])
        last = parts[-1]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {parent!r} is not a section")
        if last not in node:
            if parent in FREE_FORM_KEYS:
                node[last] = value
                continue
            raise ConfigError(f"override {item!r}: unknown config key {key!r}")
        if not _type_ok(node[last], value):
            raise ConfigError(
                f"override {item!r}: {key} expects a {type(node[last]).__name__}, got {value!r}"
            )
        if isinstance(node[last], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[last] = value
    return out


def load_config(
    path_or_name: str | os.PathLike[str], overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Load a training config by shipped name (``"voc12"``) or path, resolve ``_base_``,
    apply ``KEY=VALUE`` overrides and validate. Returns a plain dict; raises ``ConfigError``."""
    path = _resolve(path_or_name)
    config = _load_file(path)
    _check_known_keys(config, _schema(), str(path))
    config = apply_overrides(config, overrides)
    _check_known_keys(config, _schema(), "overrides")
    validate_train_config(config)
    return config


def model_config_from(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``models`` config (see docs/architecture.md) a training config's ``model`` section
    describes: ``models.default_config(...)`` of its keys, plus ``freeze_bn`` and the MSC
    pyramid's ``msc_resize`` (``models.MSC_RESIZES``). The one place
    where the recipe becomes the model config that ``models.build_model`` reads and every
    checkpoint stores."""
    m = config["model"]
    rates = m["aspp_rates"]
    model_config = default_config(
        int(m["n_classes"]), n_blocks=tuple(m["n_blocks"]),
        aspp_rates=None if rates is None else tuple(rates), msc=bool(m["msc"]),
        stem_channels=int(m["stem_channels"]),
    )
    model_config["freeze_bn"] = bool(m["freeze_bn"])
    if model_config["msc"] is not None and m.get("msc_resize", "caffe") != "caffe":
        model_config["msc"]["resize"] = m["msc_resize"]  # the seed port's pyramid (its *_port recipes)
    return model_config


# ------------------------------------------------------------------------------------------
# Validation


def _get(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"config key {key!r} is missing")
        node = node[part]
    return node


def _is_int(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_number(value: Any) -> bool:
    return _is_real(value) and math.isfinite(value)


def _is_int_list(value: Any, length: int | None, minimum: int) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length) and len(value) > 0
            and all(_is_int(v, minimum) for v in value))


#: A check: (test of the value, what the value must be, or a function of the value saying it).
#: The types of the tree in one table; the defaults are ``configs/base.yaml``, which also fixes
#: which keys exist.
Check = tuple[Callable[[Any], bool], "str | Callable[[Any], str]"]


def _integer(minimum: int) -> Check:
    return (lambda v: _is_int(v, minimum)), f"must be an integer >= {minimum}"


def _at_least(minimum: float, strict: bool = False) -> Check:
    test = (lambda v: _is_number(v) and (v > minimum if strict else v >= minimum))
    return test, f"must be a number {'>' if strict else '>='} {minimum}"


def _int_list(length: int | None, minimum: int, allow_none: bool = False) -> Check:
    what = f"a list of {length} integers" if length else "a non-empty list of integers"
    return ((lambda v: (v is None and allow_none) or _is_int_list(v, length, minimum)),
            f"must be {what} >= {minimum}" + (" or null" if allow_none else ""))


def _positive_numbers(allow_none: bool) -> Check:
    return ((lambda v: (v is None and allow_none) or (isinstance(v, list) and bool(v) and all(
        _is_real(s) and s > 0 for s in v))),
            "must be a list of positive numbers" + (" or null" if allow_none else ""))


_BOOL: Check = ((lambda v: isinstance(v, bool)), "must be true or false")
_SPLIT: Check = ((lambda v: isinstance(v, str)), "must be a split name")
_MAPPING: Check = ((lambda v: isinstance(v, Mapping)), "must be a mapping")

#: dotted key -> check, in the order they are checked (the first bad key is reported)
SCHEMA: dict[str, Check] = {
    "name": ((lambda v: isinstance(v, str)), "must be a string"),
    "seed": _integer(0),
    "dataset.name": ((lambda v: isinstance(v, str) and bool(v)), "must be a dataset name"),
    "dataset.split": _SPLIT,
    "eval.split": _SPLIT,
    "dataset.kwargs": _MAPPING,
    "eval.kwargs": _MAPPING,
    "model.n_classes": _integer(1),
    "model.n_blocks": _int_list(4, 1),
    "model.stem_channels": _integer(1),
    "model.aspp_rates": _int_list(None, 1, allow_none=True),
    "model.msc": _BOOL,
    "model.msc_resize": ((lambda v: v in MSC_RESIZES), f"must be one of {', '.join(MSC_RESIZES)}"),
    "model.freeze_bn": _BOOL,
    "model.init_checkpoint": ((lambda v: v is None or isinstance(v, str)), "must be a checkpoint path or null"),
    "model.init_synthetic_seed": ((lambda v: v is None or _is_int(v, 0)), "must be an integer >= 0 or null"),
    "input.crop_size": ((lambda v: _is_int(v, 1) or _is_int_list(v, 2, 1)),
                        lambda v: _integer(1)[1] if _is_real(v) and isinstance(v, int) else _int_list(2, 1)[1]),
    "input.scale_range": ((lambda v: isinstance(v, list) and len(v) == 2 and all(
        _is_real(s) for s in v) and 0 < v[0] <= v[1]), "must be [low, high] with 0 < low <= high"),
    "input.scale_choices": _positive_numbers(allow_none=True),
    "input.flip": _BOOL,
    "input.resize": ((lambda v: v in RESIZE_MODES), f"must be one of {', '.join(RESIZE_MODES)}"),
    "input.mean_bgr": ((lambda v: isinstance(v, list) and len(v) == 3), "must be a list of 3 numbers (B, G, R)"),
    "input.ignore_label": _integer(0),
    "loss.label_resize": ((lambda v: v in ("caffe_interp", "nearest")), "must be caffe_interp or nearest"),
    "solver.update": ((lambda v: v in ("caffe", "pytorch")), "must be caffe or pytorch"),
    "solver.batch_size": _integer(1),
    "solver.iter_size": _integer(1),
    "solver.max_iter": _integer(1),
    "solver.lr": _at_least(0.0, strict=True),
    "solver.momentum": _at_least(0.0),
    "solver.weight_decay": _at_least(0.0),
    "solver.poly_power": _at_least(0.0),
    "solver.lr_step": _integer(1),
    "solver.lr_mult_classifier_weight": _at_least(0.0),
    "solver.lr_mult_classifier_bias": _at_least(0.0),
    "solver.sync_bn": _BOOL,
    "solver.amp": _BOOL,
    "solver.channels_last": _BOOL,
    "loader.num_workers": _integer(0),
    "log.log_every": _integer(1),
    "log.image_every": _integer(0),
    "log.checkpoint_every": _integer(0),
    "log.keep_checkpoints": _integer(0),
    "log.tensorboard": _BOOL,
    "eval.scales": _positive_numbers(allow_none=False),
    "eval.flip": _BOOL,
    "eval.pad_to": ((lambda v: v is None or _is_int(v, 1)), "must be a positive integer or null"),
}


def validate_train_config(config: Mapping[str, Any]) -> None:
    """Check every key of ``SCHEMA``; raise ``ConfigError`` naming the first bad key (e.g.
    ``config key 'solver.iter_size' must be an integer >= 1, got 0``)."""
    for key, (test, what) in SCHEMA.items():
        value = _get(config, key)
        if not test(value):
            raise ConfigError(f"config key {key!r} {what if isinstance(what, str) else what(value)}, "
                              f"got {value!r}")
    _check_caffe_crop(config)


def _check_caffe_crop(config: Mapping[str, Any]) -> None:
    """The official loss (``loss.label_resize: caffe_interp``) needs crops whose labels Caffe's
    ``Interp`` samples exactly and whose MSC score maps agree in size: ``8k + 1`` pixels, ``32k + 1``
    with MSC (the official 321 = 10 * 32 + 1)."""
    if config["loss"]["label_resize"] != "caffe_interp":
        return
    crop = config["input"]["crop_size"]
    step = 32 if config["model"]["msc"] else 8
    for side in ([crop, crop] if isinstance(crop, int) else crop):
        if (side - 1) % step:
            raise ConfigError(f"config key 'input.crop_size' must be {step}k + 1 pixels with loss.label_resize "
                              f"caffe_interp{' and MSC' if step == 32 else ''} (e.g. 321), got {crop!r}")
