#!/usr/bin/env python3
"""Check folders made by ``scripts/make_caffe_goldens.py`` (committed goldens, or ``--graph``
runs on published prototxts): convert each from the graph Caffe saved, from ``net.prototxt``
and, where present, from ``graph.prototxt``, and compare with Caffe's dumped blobs.

    python scripts/check_caffe_graphs.py FOLDER [FOLDER ...] [--rtol 1e-5]

One line per folder and graph: PASS/FAIL (first divergent layer), the final output's and the
worst layer's max|d| / max|ref|, the post-processing the graph implies, and how far
``converter.verify.post_process`` is from Caffe's blobs of it (Interp outputs relative, ArgMax
exact or not). Exit status 1 when any comparison fails, 2 when a folder cannot be converted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from deeplab_caffe.converter.conversion import convert
from deeplab_caffe.converter.errors import ConversionError
from deeplab_caffe.converter.topology import evaluation_protocol
from deeplab_caffe.converter.verify import post_process, verify_with_reference

GRAPHS = (None, "net.prototxt", "graph.prototxt")


def post_errors(ours: dict[str, torch.Tensor], reference: dict[str, np.ndarray], output: str) -> dict[str, float]:
    """For each post-processing blob Caffe dumped too (same shape): max|d| / max|ref|."""
    errors = {}
    for name, tensor in ours.items():
        ref = reference.get(name)
        if name != output and ref is not None and tuple(tensor.shape) == ref.shape:
            errors[name] = float(np.abs(tensor.numpy() - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    return errors


def check_folder(folder: Path, rtol: float) -> tuple[bool, list[str]]:
    """Every graph of ``folder`` against every dump in it; (all passed, report lines)."""
    meta = json.loads((folder / "meta.json").read_text())
    lines, passed = [], True
    for graph in GRAPHS:
        if graph is not None and not (folder / graph).is_file():
            continue
        conversion = convert(folder / "net.caffemodel", folder / graph if graph else None)
        for dump in meta["dumps"]:
            with np.load(folder / dump["file"]) as npz:
                reference = {key: npz[key] for key in npz.files if not key.startswith("_")}
            report = verify_with_reference(conversion.model, conversion.graph, reference, rtol=rtol)
            with torch.no_grad():
                ours = post_process(conversion.graph, conversion.model(torch.from_numpy(reference["data"])))
            post = post_errors(ours, reference, conversion.graph.output)
            passed &= report.passed
            verdict = "PASS" if report.passed else f"FAIL at {report.first_divergent}"
            worst = max(row.max_rel for row in report.rows)
            lines.append(f"{folder.name} [{graph or 'stored graph'}, {dump['file']}]: {verdict}, final {report.max_rel:.2e}, "
                         f"worst layer {worst:.2e}; after the output: {evaluation_protocol(conversion.graph)}; "
                         f"post_process vs Caffe: {', '.join(f'{k} {v:.1e}' for k, v in post.items()) or 'nothing dumped'}")
    return passed, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding net.caffemodel, meta.json, blobs_*.npz")
    parser.add_argument("--rtol", type=float, default=1e-5, help="tolerance on every compared layer (max|d| / max|ref|)")
    args = parser.parse_args(argv)
    status = 0
    for folder in args.folders:
        try:
            passed, lines = check_folder(folder, args.rtol)
        except (ConversionError, OSError, KeyError, ValueError) as err:
            print(f"{folder.name}: error: {err}")
            status = 2
            continue
        print("\n".join(lines), flush=True)
        status = max(status, 0 if passed else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
