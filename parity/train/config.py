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
``model``, ``input``, ``solver``, ``loader``, ``log``, ``eval``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

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
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_NAME = "base.yaml"
#: dotted keys whose dict value takes any keys (dataset keyword arguments)
FREE_FORM_KEYS = frozenset({"dataset.kwargs", "eval.kwargs"})


class ConfigError(ValueError):
    """A config file or override is missing, malformed or names an unknown key (one line)."""


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


# ------------------------------------------------------------------------------------------
# Validation


def _get(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"config key {key!r} is missing")
        node = node[part]
    return node


def _bad(key: str, problem: str, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r} {problem}, got {value!r}")


def _require_int(config: Mapping[str, Any], key: str, minimum: int) -> None:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, f"must be an integer >= {minimum}", value)


def _require_number(config: Mapping[str, Any], key: str, minimum: float, strict: bool = False) -> None:
    value = _get(config, key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise _bad(key, f"must be a number {'>' if strict else '>='} {minimum}", value)


def _require_bool(config: Mapping[str, Any], key: str) -> None:
    value = _get(config, key)
    if not isinstance(value, bool):
        raise _bad(key, "must be true or false", value)


def _require_int_list(config: Mapping[str, Any], key: str, length: int | None, minimum: int,
                      allow_none: bool = False) -> None:
    value = _get(config, key)
    if value is None and allow_none:
        return
    ok = isinstance(value, list) and (length is None or len(value) == length) and len(value) > 0
    ok = ok and all(not isinstance(v, bool) and isinstance(v, int) and v >= minimum for v in value)
    if not ok:
        what = f"a list of {length} integers" if length else "a non-empty list of integers"
        raise _bad(key, f"must be {what} >= {minimum}" + (" or null" if allow_none else ""), value)


def validate_train_config(config: Mapping[str, Any]) -> None:
    """Check the values a training run relies on; raise ``ConfigError`` naming the first bad
    key (e.g. ``config key 'solver.iter_size' must be an integer >= 1, got 0``)."""
    if not isinstance(_get(config, "name"), str):
        raise _bad("name", "must be a string", _get(config, "name"))
    _require_int(config, "seed", 0)
    name = _get(config, "dataset.name")
    if not isinstance(name, str) or not name:
        raise _bad("dataset.name", "must be a dataset name", name)
    for key in ("dataset.split", "eval.split"):
        if not isinstance(_get(config, key), str):
            raise _bad(key, "must be a split name", _get(config, key))
    for key in ("dataset.kwargs", "eval.kwargs"):
        if not isinstance(_get(config, key), Mapping):
            raise _bad(key, "must be a mapping", _get(config, key))

    _require_int(config, "model.n_classes", 1)
    _require_int_list(config, "model.n_blocks", 4, 1)
    _require_int(config, "model.stem_channels", 1)
    _require_int_list(config, "model.aspp_rates", None, 1, allow_none=True)
    _require_bool(config, "model.msc")
    _require_bool(config, "model.freeze_bn")
    init = _get(config, "model.init_checkpoint")
    if init is not None and not isinstance(init, str):
        raise _bad("model.init_checkpoint", "must be a checkpoint path or null", init)

    crop = _get(config, "input.crop_size")
    if isinstance(crop, int) and not isinstance(crop, bool):
        _require_int(config, "input.crop_size", 1)
    else:
        _require_int_list(config, "input.crop_size", 2, 1)
    scale_range = _get(config, "input.scale_range")
    if (not isinstance(scale_range, list) or len(scale_range) != 2
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale_range)
            or not 0 < scale_range[0] <= scale_range[1]):
        raise _bad("input.scale_range", "must be [low, high] with 0 < low <= high", scale_range)
    choices = _get(config, "input.scale_choices")
    if choices is not None and (not isinstance(choices, list) or not choices or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in choices)):
        raise _bad("input.scale_choices", "must be a list of positive numbers or null", choices)
    _require_bool(config, "input.flip")
    mean = _get(config, "input.mean_bgr")
    if not isinstance(mean, list) or len(mean) != 3:
        raise _bad("input.mean_bgr", "must be a list of 3 numbers (B, G, R)", mean)
    _require_int(config, "input.ignore_label", 0)

    _require_int(config, "solver.batch_size", 1)
    _require_int(config, "solver.iter_size", 1)
    _require_int(config, "solver.max_iter", 1)
    _require_number(config, "solver.lr", 0.0, strict=True)
    _require_number(config, "solver.momentum", 0.0)
    _require_number(config, "solver.weight_decay", 0.0)
    _require_number(config, "solver.poly_power", 0.0)
    _require_number(config, "solver.lr_mult_classifier_weight", 0.0)
    _require_number(config, "solver.lr_mult_classifier_bias", 0.0)
    for key in ("solver.sync_bn", "solver.amp", "solver.channels_last"):
        _require_bool(config, key)

    _require_int(config, "loader.num_workers", 0)
    _require_int(config, "log.log_every", 1)
    _require_int(config, "log.image_every", 0)
    _require_int(config, "log.checkpoint_every", 0)
    _require_int(config, "log.keep_checkpoints", 0)
    _require_bool(config, "log.tensorboard")

    scales = _get(config, "eval.scales")
    if not isinstance(scales, list) or not scales or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales):
        raise _bad("eval.scales", "must be a list of positive numbers", scales)
    _require_bool(config, "eval.flip")
    pad_to = _get(config, "eval.pad_to")
    if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1):
        raise _bad("eval.pad_to", "must be a positive integer or null", pad_to)
