"""Sizes read from a file, checked against what the file holds before anything is allocated.

A small file can declare a huge thing: a tensor whose zero strides repeat one stored value over
millions of classes, a pickle whose lists share one list a thousand times over (a few bytes each,
a tree of billions of items once walked), a dataset or a layer width far beyond the file's bytes.
Every reader calls these checks on what it read, before it builds a model, converts or prints:

- ``check_tree_size``: a tree of dicts, lists, tuples and strings read from a pickle holds at most
  as many items and characters as the file has bytes (each costs at least one byte in a pickle;
  only shared references let a tree outgrow its file), and each tensor in it passes
  ``check_tensor_storage``: it needs at most the bytes of the storage under it (zero or
  overlapping strides declare more elements than the file stores);
- ``check_declared_bytes``: a size a header declares is within what the file holds.

Each raises ``FileBoundError`` (bad input, exit status 2) naming the file, the key and the sizes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FileBoundError", "check_tensor_storage", "check_tree_size", "check_declared_bytes", "human_bytes"]


class FileBoundError(ValueError):
    """A file declares more than it holds; ``str(err)`` is ``"<file>: <problem>"``."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def human_bytes(n: float) -> str:
    """``n`` bytes as ``"149.0 GiB"`` / ``"2.4 MB"``-style text (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_declared_bytes(path: str | Path, what: str, declared: int, holds: int | None = None) -> None:
    """Raise unless ``declared`` bytes (a size the file's header states for ``what``) fit in
    ``holds`` bytes (default: the file's size)."""
    holds = os.path.getsize(path) if holds is None else holds
    if declared > holds:
        raise FileBoundError(path, f"{what} declares {human_bytes(declared)} but the file holds "
                             f"{human_bytes(holds)}")


def check_tensor_storage(path: str | Path, key: str, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` fits in its storage: ``numel * element_size`` bytes at most the
    storage's bytes past the tensor's offset (zero or overlapping strides declare more)."""
    if tensor.is_meta:
        return
    size = tensor.element_size()
    need = tensor.numel() * size
    have = tensor.untyped_storage().nbytes() - tensor.storage_offset() * size
    if need > have:
        raise FileBoundError(path, f"tensor {key} declares shape {tuple(tensor.shape)} ({human_bytes(need)}) "
                             f"over {human_bytes(max(have, 0))} of stored data (strides {tuple(tensor.stride())})")


def check_tree_size(path: str | Path, what: str, value: Any, limit: int | None = None) -> None:
    """Raise when walking ``value`` (dicts, lists, tuples, sets, strings, bytes; a tensor or an
    array counts one item) meets more than ``limit`` items and characters (default: the file's
    size), or a tensor larger than its storage (``check_tensor_storage``, named by its key path).
    The walk stops as soon as the limit is passed, so a tree of shared lists costs no more."""
    budget = os.path.getsize(path) if limit is None else limit
    left = budget
    # (item, where): ``where`` is (parent's where, key), joined into a key path only for a message
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        item, where = stack.pop()
        left -= 1
        if isinstance(item, (str, bytes, bytearray)):
            left -= len(item)
        elif isinstance(item, torch.Tensor):
            check_tensor_storage(path, _key_path(what, where), item)
        elif isinstance(item, Mapping):
            stack.extend((k, where) for k in item.keys())
            stack.extend((v, (where, k)) for k, v in item.items())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, (where, i)) for i, v in enumerate(item))
        if left < 0:
            raise FileBoundError(path, f"{what} expands to more than the file's {budget} bytes "
                                 f"(shared or nested references)")


def _key_path(what: str, where: Any) -> str:
    """``state_dict['conv.weight']``-style text for a (parent, key) chain."""
    keys = []
    while where is not None:
        where, key = where
        keys.append(f"[{key!r}]")
    return what + "".join(reversed(keys))
