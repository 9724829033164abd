"""The reported-numbers page (``docs/reported-numbers.md``), generated from the parity manifest.

``render_reported_numbers(manifest)`` turns every metric row into Markdown: where its numbers
were published (link at the commit, table, row, the figures as quoted, since when), its status
(runnable, or blocked and why) and its evaluation protocol. ``deeplab-parity list --format
markdown --output docs/reported-numbers.md`` rewrites the page; a test fails when the committed
page differs from what the manifest generates.
"""

from __future__ import annotations

from typing import Any

from deeplab_caffe.parity.suite.manifest import METRICS, Manifest, Row

DOC_PATH = "docs/reported-numbers.md"
REGENERATE = f"deeplab-parity list --format markdown --output {DOC_PATH} --force"

_UPSAMPLING_TEXT = {
    "caffe_interp": "Caffe `Interp` zoom_factor 8 (corners aligned), then cropped to the image",
    "align_corners_false": "bilinear, `align_corners=False`, to the (padded) input size",
    "align_corners_true": "bilinear, `align_corners=True`, to the (padded) input size",
    "tf1_resize_bilinear": "TF 1 `resize_bilinear` (corners not aligned) to the input size",
    "scale_factor_crop": "bilinear, `align_corners=False`, `scale_factor` = output stride, then cropped to the image",
}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _figures(row: Row) -> str:
    return ", ".join(f"{metric} {row.reported[metric]:g}" for metric in METRICS if metric in row.reported)


def _source_lines(rows: list[Row]) -> list[str]:
    lines = ["| row | status | by | source | table, row | as quoted | reported (%) | since |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        pub = row.published
        assert pub is not None
        where = (f"[{pub.repository} `{pub.commit[:7]}` {pub.file}]({pub.url})" if pub.repository  # type: ignore[index]
                 else f"[arXiv {pub.arxiv}]({pub.url})")
        lines.append(f"| `{row.name}` | {row.status} | {pub.by} | {where} | {_cell(pub.table)}; {_cell(pub.row)} | "
                     f"`{_cell(pub.quote)}` ({', '.join(pub.columns)}) | {_figures(row)} | {pub.appeared or '-'} |")
    return lines


def _protocol_lines(rows: list[Row]) -> list[str]:
    lines = ["| row | data | scales | flip | CRF | MSC fusion | score-map upsampling | mean (BGR) | test crop / pad | warp |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        p = row.protocol() or {}
        msc = {True: f"yes, pyramid `{p['msc_resize']}`", False: "no (single-scale base)",
               None: "as the model is"}[p["msc"]]
        mean = f"{p['mean']} ({', '.join(str(v) for v in p['mean_bgr'])})"
        if p["mean_arithmetic"] != "float32":
            mean += f", subtracted in {p['mean_arithmetic']}"
        pad = f"pad to {p['pad_to']}" if p["pad_to"] else "none (full image)"
        warp = f"{p['warp_size']}x{p['warp_size']}" if p["warp_size"] else "-"
        lines.append(f"| `{row.name}` | {row.dataset} {row.split} | {', '.join(f'{s:g}' for s in p['scales'])} | "
                     f"{'yes' if p['flip'] else 'no'} | {'yes' if p['crf'] else 'no'} | {msc} | "
                     f"{_UPSAMPLING_TEXT[p['upsample']]} | {mean} | {pad} | {warp} |")
    return lines


def render_reported_numbers(manifest: Manifest) -> str:
    """The Markdown page of every published number in ``manifest`` (see the module docstring)."""
    rows = [row for row in manifest.rows if row.published is not None]
    runnable = [row for row in rows if not row.blocked]
    lines = [
        "# Reported numbers",
        "",
        f"Generated from `parity/suite/manifest.yaml` by `{REGENERATE}`; do not edit by hand (a test",
        "compares this page with the manifest). Each figure was read in the cited file at the cited",
        "commit, or in the cited paper; *since* is the date (and commit) it first stood in that file.",
        "The manifest's loader checks that the figures quoted in each row are the row's reported numbers.",
        "",
        "## Where each number was published",
        "",
        *_source_lines(rows),
        "",
        "## How each runnable row is evaluated",
        "",
        "The protocol the parity suite uses for the row (`parity.evaluation.evaluate.evaluate` with the",
        "row's options): the DeepLab authors' rows follow their Caffe test net, the ports' rows the",
        "port's own evaluation code. An MSC row names its pyramid resize (`models.MSC_RESIZES`), which",
        "the suite applies whatever the checkpoint says.",
        "",
        *_protocol_lines(runnable),
        "",
        "## Blocked rows",
        "",
        "Reported as `blocked` by `deeplab-parity run`: never an error, and they do not make the exit status 2.",
        "",
        "| row | why |",
        "| --- | --- |",
        *[f"| `{row.name}` | {_cell(row.blocked)} |" for row in rows if row.blocked],
    ]
    notes = [row for row in rows if row.published.cites or row.notes]  # type: ignore[union-attr]
    if notes:
        lines += ["", "## Notes", ""]
        for row in notes:
            text = "; ".join(t for t in (row.published.cites, row.notes) if t)  # type: ignore[union-attr]
            lines.append(f"- `{row.name}`: {text}")
    return "\n".join(lines) + "\n"
