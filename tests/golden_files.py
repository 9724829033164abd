"""Comparing golden files a generator script made again with the committed ones.

A golden regenerated on another CPU is not the same bit for bit: OpenBLAS picks its GEMM kernel
by CPU (and Caffe's convolutions, hence every blob after the first layer and the BatchNorm
statistics calibrated from them, go through it), and numpy's SIMD dispatch changes the last bits
of ``exp``, sums and the like. So a regenerated golden is compared thus:

- exactly: the file names, text files, the structure of a caffemodel (every field but the blobs'
  float ``data``), array keys, shapes and dtypes, integer arrays (labels, orders), JSON records
  (``meta.json``, a dump's ``_meta``) except ``MACHINE_KEYS``, and float arrays whose values are
  exact by construction (bound 0: an integer image minus the mean);
- float arrays and caffemodel blobs: within a bound on ``max|made - committed| / max|committed|``
  per array or blob, set by each test from the drift measured across CPU kernels (docs/ci.md,
  "Golden files on another CPU").

Bounds map ``fnmatch`` patterns of ``"<file>:<array>"`` (``"net.caffemodel:conv1[0]"`` names blob 0
of layer ``conv1``) to the largest relative difference allowed; the first pattern that matches
applies, 0 means equal, and a float array no pattern matches fails the comparison.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from deeplab_caffe.caffe_proto import caffe_pb2

#: JSON keys that record the machine and the run, not the golden: the command line (it names the
#: output folder), the caffemodel's sha256 (its float bytes drift by CPU), where the reference
#: pycaffe sits (under $HOME) and the sha256 of that build
MACHINE_KEYS = frozenset({"command", "caffemodel_sha256", "pycaffe", "pycaffe_sha256"})


def relative_difference(made: np.ndarray, committed: np.ndarray) -> float:
    """``max|made - committed| / max|committed|`` in float64 (the denominator 1 for an all-zero
    array); NaN when either side holds a NaN, so that no bound passes it."""
    a, b = np.asarray(made, dtype=np.float64), np.asarray(committed, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    scale = float(np.abs(b).max(initial=0.0))
    return float(np.abs(a - b).max(initial=0.0)) / (scale if scale > 0 else 1.0)


def _json_record(text: str) -> dict:
    return {k: v for k, v in json.loads(text).items() if k not in MACHINE_KEYS}


def npz_differences(made: Path, committed: Path) -> dict[str, float]:
    """The relative difference of every float array of two ``.npz`` files, keyed
    ``"<file name>:<key>"``; asserts what must be exact (keys, shapes, dtypes, non-float arrays,
    ``_meta`` but ``MACHINE_KEYS``)."""
    out = {}
    with np.load(made) as ours, np.load(committed) as golden:
        assert sorted(ours.files) == sorted(golden.files), f"{committed.name}: keys differ"
        for key in golden.files:
            a, b = ours[key], golden[key]
            where = f"{committed.name}:{key}"
            assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
            if key == "_meta":
                assert _json_record(str(a)) == _json_record(str(b)), f"{where} differs"
            elif np.issubdtype(b.dtype, np.floating):
                out[where] = relative_difference(a, b)
            else:
                assert np.array_equal(a, b), f"{where}: {b.dtype} values differ"
    return out


def _blob_lists(net: caffe_pb2.NetParameter) -> list[tuple[str, list]]:
    return [(layer.name, list(layer.blobs)) for layer in list(net.layer) + list(net.layers)]


def caffemodel_differences(made: Path, committed: Path) -> dict[str, float]:
    """The relative difference of every blob's ``data`` of two caffemodels, keyed
    ``"<file name>:<layer>[<index>]"``; asserts that everything else (graph, parameters, blob
    shapes, the fields our schema does not know) is the same."""
    ours, golden = (caffe_pb2.NetParameter.FromString(path.read_bytes()) for path in (made, committed))
    out = {}
    for (name, a_blobs), (golden_name, b_blobs) in zip(_blob_lists(ours), _blob_lists(golden), strict=True):
        assert (name, len(a_blobs)) == (golden_name, len(b_blobs)), f"{committed.name}: layer {golden_name} differs"
        for i, (a, b) in enumerate(zip(a_blobs, b_blobs)):
            assert len(a.data) == len(b.data), f"{committed.name}:{name}[{i}]: sizes differ"
            out[f"{committed.name}:{name}[{i}]"] = relative_difference(np.array(a.data, np.float32),
                                                                       np.array(b.data, np.float32))
    for net in (ours, golden):
        for _, blobs in _blob_lists(net):
            for blob in blobs:
                blob.ClearField("data")
    assert ours.SerializeToString(deterministic=True) == golden.SerializeToString(deterministic=True), \
        f"{committed.name}: the graph or the blob shapes differ"
    return out


def remade_differences(made: Path, committed: Path) -> dict[str, float]:
    """``made`` (a folder a golden generator just wrote) against ``committed``: asserts the exact
    parts (see the module docstring) and returns the relative difference of every float array
    and caffemodel blob, keyed ``"<file>:<array>"``."""
    names = sorted(p.name for p in committed.iterdir())
    assert sorted(p.name for p in made.iterdir()) == names, f"{committed}: other files"
    out: dict[str, float] = {}
    for name in names:
        ours, golden = made / name, committed / name
        if name.endswith(".json"):
            assert _json_record(ours.read_text()) == _json_record(golden.read_text()), f"{name} differs"
        elif name.endswith(".npz"):
            out |= npz_differences(ours, golden)
        elif name.endswith(".caffemodel"):
            out |= caffemodel_differences(ours, golden)
        else:
            assert ours.read_bytes() == golden.read_bytes(), f"{name} differs"
    return out


def bound_for(where: str, bounds: dict[str, float]) -> float | None:
    """The bound of the first pattern in ``bounds`` that matches ``where``, None when none does."""
    return next((bound for pattern, bound in bounds.items() if fnmatch(where, pattern)), None)


def assert_within(differences: dict[str, float], bounds: dict[str, float], what: str = "") -> None:
    """Every difference within its bound (0: equal); lists every one that is not, worst first."""
    failed = {}
    for where, difference in differences.items():
        bound = bound_for(where, bounds)
        if bound is None or not difference <= bound:  # NaN fails too
            failed[where] = (difference, bound)
    worst = sorted(failed.items(), key=lambda item: -np.nan_to_num(item[1][0], nan=np.inf))
    lines = [f"{where}: {d:.3g} > {'no bound' if b is None else f'{b:g}'}" for where, (d, b) in worst[:10]]
    assert not failed, f"{what} {len(failed)} arrays beyond their bound:\n" + "\n".join(lines)


def assert_remade_like_committed(made: Path, committed: Path, bounds: dict[str, float]) -> dict[str, float]:
    """``remade_differences`` within ``bounds``; returns the differences."""
    differences = remade_differences(made, committed)
    assert_within(differences, bounds, str(committed.name))
    return differences
