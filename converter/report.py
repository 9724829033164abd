"""The conversion report: every layer and blob, what it became, what was checked (JSON + Markdown)."""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from deeplab_caffe.converter.checks import KINDS
from deeplab_caffe.converter.conversion import CONVERTER_VERSION, Conversion
from deeplab_caffe.models.files import write_text_atomic
from deeplab_caffe.converter.foreign.rules import ImportResult
from deeplab_caffe.converter.topology import describe_post_layer, evaluation_protocol
from deeplab_caffe.converter.verify import ForwardReport

# What each kind of structural check compared (the report says it, not only how many).
CHECK_COMPARES = {
    "hyper-parameter": "each 1x layer's parameters in the graph vs the attribute of the module it maps to "
                       "(conv geometry, BN eps, Scale bias, pool1 kind/size/ceil rounding, Eltwise op, ReLU slope)",
    "interp": "each MSC pyramid Interp (shrink/zoom/pads) vs the model's MSC scales, and each score-map Interp's "
              "output size (Caffe's arithmetic at 321 and 513 px) vs the 1x score map size the model resizes to",
    "topology": "each 1x layer's input blobs vs the model's dataflow (stem, residual blocks and shortcuts, ASPP "
                "branches summed, MSC branches fused by MAX)",
    "msc-copy": "each MSC copy's parameters vs its 1x layer's (weights shared through param names or position)",
}


def parameter_count(conversion: Conversion) -> int:
    return int(sum(p.numel() for p in conversion.model.parameters()))


def _source(conversion: Conversion, note: str | None) -> dict:
    """The report's ``source``: the files' paths, or with ``note`` (they were temporary) their names and the note."""
    name = (lambda p: p.name) if note else str
    source = {
        "caffemodel": name(conversion.caffemodel),
        "caffemodel_sha256": conversion.caffemodel_sha256,
        "caffemodel_bytes": conversion.caffemodel.stat().st_size,
        "prototxt": name(conversion.prototxt) if conversion.prototxt else "(graph stored in the caffemodel)",
    }
    return source | ({"note": note} if note else {})


def conversion_report(conversion: Conversion, verification: ForwardReport | None = None, *,
                      source_note: str | None = None) -> dict:
    """A JSON-serialisable record of one conversion (and its forward check, when run). ``source_note``:
    the source files were temporary: the report names them without their (removed) folder and says so."""
    status = Counter(record.status for record in conversion.records)
    return {
        "converter_version": CONVERTER_VERSION,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "source": _source(conversion, source_note),
        "architecture": conversion.config["arch"],
        "n_classes": conversion.config["n_classes"],
        "config": conversion.config,
        "accounting": {
            "blobs": len(conversion.records),
            "mapped": status.get("mapped", 0),
            "shared_msc_copies": status.get("shared", 0),
            "unaccounted": 0,
            "pytorch_tensors": len(conversion.filled),
            "pytorch_parameters": parameter_count(conversion),
            "structural_checks": len(conversion.checks),
            "checks_by_kind": {kind: sum(c.kind == kind for c in conversion.checks) for kind in KINDS},
            "unique_layers": len(conversion.graph.unique_layers()),
            "msc_copies": len(conversion.graph.original),
            "outside_the_model": dict(Counter(layer.type for layer in conversion.ignored)),
        },
        "check_compares": CHECK_COMPARES,
        "layers": [
            {"layer": r.layer, "type": r.layer_type, "blob": r.index, "shape": list(r.shape), "dtype": r.dtype,
             "status": r.status, "target": r.target, **{k: round(v, 6) for k, v in r.stats.items()}}
            for r in conversion.records
        ],
        "tensors": conversion.filled,
        "checks": [{"kind": c.kind, "layer": c.layer, "what": c.what, "caffe": c.caffe, "model": c.model}
                   for c in conversion.checks],
        "outside_the_model": [{"layer": layer.name, "type": layer.type} for layer in conversion.ignored],
        "post_processing": {
            "protocol": evaluation_protocol(conversion.graph),
            "layers": [{"layer": layer.name, "type": layer.type, "does": describe_post_layer(layer)}
                       for layer in conversion.graph.post_processing],
        },
        "verification": verification.to_dict() if verification else None,
    }


def render_markdown(report: dict) -> str:
    """A person's view of ``conversion_report``: summary, verification and the per-blob table."""
    acc = report["accounting"]
    src = report["source"]
    lines = [
        "# Conversion report",
        "",
        f"- caffemodel: `{src['caffemodel']}` ({src['caffemodel_bytes']:,} bytes, sha256 `{src['caffemodel_sha256']}`)",
        f"- graph: `{src['prototxt']}`",
        *([f"- note: {src['note']}"] if src.get("note") else []),
        f"- architecture: {report['architecture']}, {report['n_classes']} classes, "
        f"{acc['pytorch_parameters']:,} parameters, MSC: {'yes' if report['config'].get('msc') else 'no'}",
        f"- blobs: {acc['blobs']} ({acc['mapped']} mapped, {acc['shared_msc_copies']} shared MSC copies, "
        f"{acc['unaccounted']} unaccounted); PyTorch tensors filled: {acc['pytorch_tensors']}",
        f"- graph: {acc['unique_layers']} unique layers, {acc['msc_copies']} MSC copies; outside the model "
        f"(accounted for, no weights): {', '.join(f'{n} {t}' for t, n in acc['outside_the_model'].items()) or 'none'}",
        f"- after the model's output (the evaluation the graph implies, not in the model): "
        f"{report.get('post_processing', {}).get('protocol', 'none')}",
        f"- structural checks passed: {acc['structural_checks']}",
        f"- converter {report['converter_version']}, torch {report['environment']['torch']}",
        "",
        "## Structural checks",
        "",
        "| kind | passed | compared |",
        "| --- | --- | --- |",
        *[f"| {kind} | {acc['checks_by_kind'][kind]} | {report['check_compares'][kind]} |" for kind in KINDS],
        "",
        "## Forward verification",
        "",
    ]
    ver = report.get("verification")
    if ver is None:
        lines.append("Not run (pass `--verify`).")
    else:
        verdict = "PASS" if ver["passed"] else f"FAIL (first divergent layer: `{ver['first_divergent']}`)"
        lines += [
            f"- reference: {ver['reference']}; inputs: {', '.join(ver['inputs'])}",
            f"- {ver['layers_compared']} layer outputs compared, tolerance (max|d| / max|ref|) {ver['rtol']:g} on the "
            f"final output, {ver['layer_rtol']:g} on intermediate layers",
            f"- final output max relative error: {ver['max_rel']:.3g}",
            f"- verdict: **{verdict}**",
            "",
            "| worst layers | max rel. error |",
            "| --- | --- |",
            *[f"| `{w['layer']}` | {w['max_rel']:.3g} |" for w in ver["worst"]],
        ]
    lines += [
        "",
        "## Blobs",
        "",
        "| layer | type | blob | shape | status | PyTorch tensor | min | max | mean | std |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["layers"]:
        shape = "x".join(str(d) for d in row["shape"])
        lines.append(
            f"| `{row['layer']}` | {row['type'] or ''} | {row['blob']} | {shape} | {row['status']} | `{row['target']}` "
            f"| {row['min']:.4g} | {row['max']:.4g} | {row['mean']:.4g} | {row['std']:.4g} |"
        )
    return "\n".join(lines) + "\n"


def import_report(result: ImportResult) -> dict:
    """A JSON-serialisable record of one foreign-checkpoint import (``converter.foreign``): every
    key of the file with what it became (or why it is outside the model), and every tensor of
    ours with the key it came from."""
    status = Counter(record.status for record in result.records)
    return {
        "kind": "foreign-import",
        "converter_version": result.converter_version,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "source": {"file": str(result.source), "format": result.format, "sha256": result.source_sha256,
                   "bytes": result.source.stat().st_size},
        "architecture": result.config["arch"],
        "n_classes": result.config["n_classes"],
        "config": result.config,
        "notes": result.notes,
        "accounting": {
            "keys": len(result.records), "mapped": status.get("mapped", 0), "outside_the_model": status.get("outside", 0),
            "unaccounted": 0, "pytorch_tensors": len(result.filled),
            "absent_optional": sum(source.startswith("(absent") for source in result.filled.values()),
            "pytorch_parameters": int(sum(p.numel() for p in result.model.parameters())),
        },
        "keys": [{"key": r.key, "shape": list(r.shape), "dtype": r.dtype, "status": r.status, "target": r.target,
                  **{k: round(v, 6) for k, v in r.stats.items()}} for r in result.records],
        "tensors": result.filled,
    }


def render_import_markdown(report: dict) -> str:
    """A person's view of ``import_report``: summary, conventions, the per-key table."""
    acc, src = report["accounting"], report["source"]
    lines = [
        "# Import report",
        "",
        f"- file: `{src['file']}` ({src['format']} layout, {src['bytes']:,} bytes, sha256 `{src['sha256']}`)",
        f"- architecture: {report['architecture']}, {report['n_classes']} classes, {acc['pytorch_parameters']:,} "
        f"parameters, MSC: {'yes' if report['config'].get('msc') else 'no'}",
        f"- keys: {acc['keys']} ({acc['mapped']} mapped, {acc['outside_the_model']} outside the model, "
        f"{acc['unaccounted']} unaccounted); PyTorch tensors filled: {acc['pytorch_tensors']} "
        f"({acc['absent_optional']} optional, absent from the file)",
        f"- converter {report['converter_version']}, torch {report['environment']['torch']}",
        "",
        "## Conventions fixed by the import",
        "",
        *([f"- {note}" for note in report["notes"]] or ["- none"]),
        "",
        "## Keys",
        "",
        "| key | shape | dtype | status | PyTorch tensor / reason | min | max | mean | std |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["keys"]:
        shape = "x".join(str(d) for d in row["shape"]) or "scalar"
        numbers = " | ".join(f"{row[k]:.4g}" if k in row else "" for k in ("min", "max", "mean", "std"))
        lines.append(f"| `{row['key']}` | {shape} | {row['dtype']} | {row['status']} | `{row['target']}` | {numbers} |")
    return "\n".join(lines) + "\n"


def report_paths(output: str | Path) -> tuple[Path, Path]:
    """The JSON and Markdown reports of a conversion to ``output``: every part of its name kept, only
    the last suffix replaced (``model.v2.pth`` -> ``model.v2.report.json``, ``model.v2.report.md``)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json"), output.with_name(f"{output.stem}.report.md")


def write_report(report: dict, json_path: str | Path, markdown_path: str | Path) -> None:
    """Write the report (``conversion_report`` or ``import_report``) as JSON and Markdown, each atomically."""
    write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    render = render_import_markdown if report.get("kind") == "foreign-import" else render_markdown
    write_text_atomic(markdown_path, render(report))
