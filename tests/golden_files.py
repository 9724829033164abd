"""Comparing golden files a generator script made again with the committed ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def assert_remade_like_committed(made: Path, committed: Path) -> None:
    """``made`` (a folder a golden generator just wrote) holds the files of ``committed``, equal bit
    for bit: ``.npz`` array by array, ``meta.json`` except its ``command`` (it names the folders)."""
    names = sorted(p.name for p in committed.iterdir())
    assert sorted(p.name for p in made.iterdir()) == names
    for name in names:
        ours, golden = made / name, committed / name
        if name == "meta.json":
            strip = lambda path: {k: v for k, v in json.loads(path.read_text()).items() if k != "command"}  # noqa: E731
            assert strip(ours) == strip(golden)
        elif name.endswith(".npz"):
            with np.load(ours) as a, np.load(golden) as b:
                assert {k: a[k].tobytes() for k in a.files} == {k: b[k].tobytes() for k in b.files}, name
        else:
            assert ours.read_bytes() == golden.read_bytes(), name
