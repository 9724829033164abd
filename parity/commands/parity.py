"""``deeplab-parity``: run the parity manifest, compare two runs, list rows, evaluate checkpoints.

A thin layer over ``parity.suite.manifest``, ``parity.suite.runner`` and ``parity.suite.reports``. Exit status of
``run`` and ``compare``: 0 all pass / no regression, 1 a regression (a failed or crashed row,
a metric that dropped), 2 usage or input error (including rows that could not run for missing
data, weights or reference, unless ``--allow-not-run``); blocked rows (never runnable here, the
manifest says why) never change it. ``list --format json`` prints every row with its source,
protocol and status; ``list --format markdown`` the reported-numbers page.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from deeplab_caffe.parity.commands.errors import EXIT_CHECK_FAILED, EXIT_OK, ContractGroup, fail, refuse_existing
from deeplab_caffe.parity.commands.eval import eval_command
from deeplab_caffe.parity.data.datasets import DATASETS
from deeplab_caffe.parity.suite.forward import BlobDumpError, check_blob_dump
from deeplab_caffe.parity.suite.manifest import load_manifest
from deeplab_caffe.parity.suite.reported_numbers import DOC_PATH, render_reported_numbers
from deeplab_caffe.parity.suite.charts import history_png
from deeplab_caffe.parity.suite.reports import (append_step_summary, compare_reports, load_report, render_comparison,
                                                row_summary, write_bytes_atomic, write_reports, write_text_atomic)
from deeplab_caffe.parity.suite.runner import check_given_weights, missing_inputs, run_suite

STYLE = {"pass": "green", "fail": "red", "error": "magenta", "not_run": "yellow", "blocked": "dim"}
LABEL = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "not_run": "NOT RUN", "blocked": "BLOCKED"}

out = Console()
err = Console(stderr=True)


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``("a=x", "b=y")`` -> ``{"a": "x", "b": "y"}``; a value without ``=`` is a usage error."""
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            fail(f"{option} expects NAME=PATH, got {value!r}")
        pairs[name.strip()] = path.strip()
    return pairs


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on stdout that fits where it lands: on a terminal, rich columns fitted to its
    width; anywhere else (a pipe, a file, a CI log) a Markdown table, one line per row, never
    wrapped. Cells may hold rich markup (``[red]FAIL[/]``); Markdown gets the plain text."""
    if out.is_terminal:
        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, no_wrap=i == 0, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    lines = [f"{_plain(title)}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_plain(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    sys.stdout.write("\n".join(lines) + "\n\n")


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain.replace("\n", " ")


def echo(markup: str) -> None:
    """A line on stdout: styled on a terminal, plain text (never wrapped) elsewhere."""
    if out.is_terminal:
        out.print(markup, highlight=False)
    else:
        sys.stdout.write(_plain(markup) + "\n")


@click.group(cls=ContractGroup)
def main() -> None:
    """Prove the Caffe -> PyTorch DeepLab port faithful: structural, forward and metric parity."""


@main.command("run")
@click.option("--suite", help="Suite, tag or row name from the manifest [default: smoke, the embedded default].")
@click.option("--rows", help="Comma-separated row names (overrides --suite).")
@click.option("--tag", "tags", multiple=True, help="Keep rows with this tag (repeatable; all must match).")
@click.option("--data-root", "data_roots", multiple=True, metavar="DATASET=PATH",
              help="Dataset folder (voc12, cocostuff10k, cocostuff164k, cityscapes); env DEEPLAB_DATA_<DATASET>.")
@click.option("--weights", "weights", multiple=True, metavar="ROW_OR_KEY=PATH",
              help="Weights for a row or weights key: .caffemodel(.h5) or .pth/.safetensors, evaluated instead of "
                   "training a row that always trains; coco_init=PATH is the training init (also over a row's "
                   "fixture). A weight no selected row would use, or one --retrain would train over, is refused. "
                   "Env DEEPLAB_WEIGHTS_<KEY>.")
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the unzipped Caffe release files [env DEEPLAB_WEIGHTS_DIR, default data/models/caffe].")
@click.option("--reference", "references", multiple=True, metavar="[ROW=]NPZ_OR_H5",
              help="Caffe blob dump (scripts/dump_caffe_blobs.py) for forward rows, instead of OpenCV.")
@click.option("--retrain", is_flag=True, help="Metric rows: train with deeplab-train's recipe first, then evaluate.")
@click.option("--resume", is_flag=True, help="With --retrain: continue an interrupted training in OUTDIR/train.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/parity"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--crf-processes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes for DenseCRF rows (0 = inline).")
@click.option("--allow-not-run", is_flag=True, help="Rows that could not run do not make the exit status 2.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Another manifest file [default: the packaged parity/suite/manifest.yaml].")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: bars on a terminal, a plain line every 30 s in a log.")
def run_command(suite, rows, tags, data_roots, weights, weights_dir, references, retrain, resume, outdir, seed,
                device, crf_processes, allow_not_run, manifest_path, progress) -> None:
    """Run a suite of manifest rows; write parity.json, parity.md, junit.xml, class_iou.png to OUTDIR."""

    manifest = load_manifest(manifest_path)  # a malformed manifest or selection: ManifestError, exit status 2
    selected = manifest.select(suite=suite, rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None,
                               tags=list(tags))
    if not selected:
        fail("the selection has no rows (deeplab-parity list shows rows and tags)")
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda requested but CUDA is not available")


    roots = parse_pairs(data_roots, "--data-root")
    for name, path in roots.items():
        if name not in DATASETS:
            fail(f"--data-root: unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        if not Path(path).is_dir():
            fail(f"--data-root {name}: folder not found: {path}")
    given = parse_pairs(weights, "--weights")
    known = {r.name for r in manifest.rows} | {r.weights.key for r in manifest.rows} | {"coco_init"}
    for name, path in given.items():
        if name not in known:
            fail(f"--weights: {name!r} is neither a row name nor a weights key (deeplab-parity list shows them)")
        if not Path(path).is_file():
            fail(f"--weights {name}: file not found: {path}")
    check_given_weights(selected, given, retrain=retrain)  # a weight no row would use: one line, exit 2
    refs: dict[str, str] = {}
    for value in references:
        name, sep, path = value.partition("=")
        if sep and name in {r.name for r in manifest.rows}:
            refs[name] = path
        else:
            refs["*"] = value

    for name, path in refs.items():
        try:
            check_blob_dump(path)
        except BlobDumpError as exc:
            fail(f"--reference: {exc}")
    if weights_dir is not None and not weights_dir.is_dir():
        fail(f"--weights-dir: folder not found: {weights_dir}")

    err.print(f"deeplab-parity: {len(selected)} rows ({', '.join(r.name for r in selected)}), reports in {outdir}",
              highlight=False)

    def log(message: str) -> None:
        err.print(message if message.startswith("  ") else f"[bold]▶ {message}[/]", highlight=False, soft_wrap=True)

    def on_row(result) -> None:
        err.print(f"  [{STYLE[result.status]}]{LABEL[result.status]}[/] {result.row.name} "
                  f"({result.duration_s:.1f} s){': ' + result.reason if result.reason else ''}", highlight=False,
                  soft_wrap=True)

    result = run_suite(selected, data_roots=roots, weights=given, outdir=outdir, seed=seed, device=device,
                       retrain=retrain, references=refs, weights_dir=weights_dir,
                       suite=suite or (f"rows {rows}" if rows else ("tags " + ",".join(tags) if tags else "smoke")),
                       progress=progress, resume=resume, crf_processes=crf_processes, log=log, on_row=on_row)
    data = result.to_dict(allow_not_run=allow_not_run)
    written = write_reports(data, outdir)
    summary_page = append_step_summary(data)  # GitHub Actions: the job's summary page
    print_summary(data)
    err.print("reports: " + ", ".join(str(p) for p in written.values())
              + (f"; appended to {summary_page} (GITHUB_STEP_SUMMARY)" if summary_page else ""), highlight=False)
    sys.exit(data["exit_status"])


def print_summary(data: dict) -> None:
    """The console summary of a run."""
    s = data["summary"]
    title = (f"deeplab-parity {data['suite']}: {s['pass']} pass, {s['fail']} fail, {s['error']} error, "
             f"{s['not_run']} not run, {s.get('blocked', 0)} blocked ({data['duration_s']:.0f} s)")
    print_table(title, ["row", "kind", "status", "result"],
                [[row["name"], row["kind"], f"[{STYLE[row['status']]}]{LABEL[row['status']]}[/]",
                  Text(row_summary(row)).markup] for row in data["rows"]])


def _points(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """``--max-drop``: a finite number of percentage points >= 0 (NaN would pass every drop)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"must be a finite number of percentage points >= 0, got {value:g}", ctx, param)
    return value


@main.command("compare")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-drop", type=float, default=None, callback=_points,
              help="Percentage points (finite, >= 0) a metric may drop before it is a regression "
                   "[default: the row's tolerance].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the comparison as Markdown.")
@click.option("--force", is_flag=True, help="Replace an existing --output file (refused without it).")
def compare_command(old: Path, new: Path, max_drop: float | None, output: Path | None, force: bool) -> None:
    """Report regressions between two runs (parity.json files).

    Exit status 1: a regression (a metric that dropped beyond the limit or is no longer measured),
    or a row of OLD missing from NEW; 2: a report that is not a deeplab-parity report, has a row
    without name, kind or status, or a NaN/inf number or negative tolerance; an existing --output
    without --force.
    """
    refuse_existing(output, force)
    before, after = load_report(old), load_report(new)  # a malformed report: ReportError, exit status 2
    comparison = compare_reports(before, after, max_drop=max_drop)
    labels = {"regressions": "[red]regression[/]", "improvements": "[green]improvement[/]", "lost": "[yellow]not run now[/]",
              "changed": "status", "missing": "[red]missing now[/]", "added": "only new"}
    print_table(f"{old} -> {new}", ["change", "row", "what"],
                [[label, Text(item["row"]).markup, Text(item["what"]).markup]
                 for key, label in labels.items() for item in comparison[key]])
    n, gone = len(comparison["regressions"]), len(comparison["missing"])
    echo(f"[red]{n} regression(s), {gone} row(s) missing from the new run[/]" if n or gone else "[green]no regressions[/]")
    if output is not None:
        write_text_atomic(output, render_comparison(comparison, str(old), str(new)))
    sys.exit(EXIT_CHECK_FAILED if n or gone else EXIT_OK)


@main.command("history")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("parity_history.png"),
              show_default=True, help="The PNG to write (atomically).")
@click.option("--force", is_flag=True, help="Replace an existing --output.")
def history_command(reports: tuple[Path, ...], output: Path, force: bool) -> None:
    """Trend chart of a series of runs (parity.json files, oldest first, e.g. CI artifacts by
    commit): each metric row's mIoU and each forward row's error per report, failing points
    ringed and each row's first failure marked, so a regression's first commit shows.

    Exit status 2: a file that is not a deeplab-parity report, or --output exists without --force."""
    refuse_existing(output, force)
    loaded = [(path, load_report(path)) for path in reports]  # a malformed report: ReportError, exit 2
    series = [(report_label(path, report), report) for path, report in loaded]
    write_bytes_atomic(output, history_png(series))  # an OSError (disk full, permission) exits 3
    echo(Text(f"{output}: {len(series)} reports, {series[0][0]} .. {series[-1][0]}").markup)


def report_label(path: Path, report: dict) -> str:
    """A report's name on the history chart: its commit (7 digits), else its folder and file name."""
    commit = (report.get("git") or {}).get("commit")
    return str(commit)[:7] if commit else f"{path.parent.name}/{path.name}"


@main.command("list")
@click.option("--suite", help="Only this suite / tag.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True,
              help="json: every row with its source, protocol and status; markdown: the reported-numbers page.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Write json/markdown to this file (atomically) instead of stdout, e.g. {DOC_PATH}.")
@click.option("--force", is_flag=True, help="Replace an existing --output file (refused without it).")
def list_command(suite: str | None, manifest_path: Path | None, fmt: str, output: Path | None, force: bool) -> None:
    """Rows of the manifest with their reported numbers, sources, protocol, status and cost estimates."""
    manifest = load_manifest(manifest_path)  # a malformed manifest or suite: ManifestError, exit status 2
    rows = manifest.suite_rows(suite) if suite else manifest.rows
    if fmt == "table":
        if output is not None:
            fail("--output needs --format json or markdown")
        print_list(manifest, rows)
        echo(Text("suites: " + "; ".join(f"{s.name} ({s.description})" for s in manifest.suites.values())).markup)
        echo(Text("tags: " + ", ".join(manifest.tags())).markup)
        return
    refuse_existing(output, force)
    if fmt == "json":
        text = json.dumps({"manifest": str(manifest.path),
                           "rows": [{**row.to_dict(), "missing": missing_inputs(row)} for row in rows],
                           "suites": {name: s.description for name, s in manifest.suites.items()},
                           "tags": manifest.tags()}, indent=2) + "\n"
    else:
        if suite:
            fail("--format markdown renders the whole manifest; leave out --suite")
        text = render_reported_numbers(manifest)
    if output is None:
        sys.stdout.write(text)
        return
    write_text_atomic(output, text)  # an OSError (disk full, permission) exits 3 by the contract


def list_status(row) -> str:
    """``blocked``, ``ready``, or what is missing here (``no data``, ``no weights``, ``no data, weights``)."""
    if row.blocked:
        return "[dim]blocked[/]"
    missing = missing_inputs(row)
    return f"[yellow]no {', '.join(missing)}[/]" if missing else "[green]ready[/]"


def print_list(manifest, rows) -> None:
    """The table of ``deeplab-parity list``."""
    table = []
    for row in rows:
        reported = ", ".join(f"{k} {v:g}" for k, v in row.reported.items())
        reported += f" ±{row.tolerance:g}" if row.tolerance else ""
        data = f"{row.dataset} {row.split}" if row.dataset else "-"
        cost = f"{row.cost_gpu_hours.get('eval', 0):g} / {row.cost_gpu_hours.get('train', 0):g}"
        table.append([row.name, row.kind, ",".join(row.tags), data, reported or "-", list_status(row),
                      row.weights.key, cost])
    print_table(f"{manifest.path} ({len(rows)} rows; status: ready, blocked, or the data / weights missing here)",
                ["row", "kind", "tags", "data", "reported (%)", "status", "weights key", "GPU h est. (eval/train)"],
                table)


main.add_command(eval_command, "eval")  # ``deeplab-parity eval``: parity.commands.eval

if __name__ == "__main__":
    main()
