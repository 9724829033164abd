"""Parity reports: JSON (machines), Markdown + a per-class IoU chart (people), JUnit XML (CI).

Every writer works from the JSON-ready dict of a run (``SuiteResult.to_dict()``, schema
``deeplab-parity/1``), so reports can be regenerated from ``parity.json`` alone, and
``compare_reports`` diffs two such files. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from deeplab_caffe.models.files import write_bytes_atomic, write_text_atomic  # noqa: F401  (re-exported)
from deeplab_caffe.parity.suite.charts import class_iou_png

SCHEMA = "deeplab-parity/1"
STATUSES = ("pass", "fail", "error", "not_run", "blocked")
MARKS = {"pass": "✅ pass", "fail": "❌ FAIL", "error": "💥 ERROR", "not_run": "⏭️ not run", "blocked": "🚫 blocked"}
REPORT_FILES = {"json": "parity.json", "markdown": "parity.md", "junit": "junit.xml", "chart": "class_iou.png"}


class ReportError(ValueError):
    """A report file that cannot be read or is not a deeplab-parity report (one line)."""

    exit_status = 2  # bad input, in the exit-code contract (converter.errors)


# ----------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    """Versions and machine facts that a reproduced number depends on."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.version.cuda,
        "gpu": None,
    }
    env["opencv"] = cv2.__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def git_info(start: str | Path | None = None) -> dict[str, str | None]:
    """The commit of the checkout holding ``start`` (default: this package), read from ``.git``
    files without running git; ``GITHUB_SHA`` wins when set. ``{"commit": None}`` if unknown."""
    if os.environ.get("GITHUB_SHA"):
        return {"commit": os.environ["GITHUB_SHA"], "ref": os.environ.get("GITHUB_REF"), "source": "GITHUB_SHA"}
    here = Path(start or Path(__file__).resolve().parent).resolve()
    for folder in (here, *here.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                git = (folder / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text(encoding="utf-8").strip()
        except OSError:
            return {"commit": None, "ref": None, "source": str(git)}
        if not head.startswith("ref:"):
            return {"commit": head, "ref": None, "source": str(git)}
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return {"commit": (base / ref).read_text(encoding="utf-8").strip(), "ref": ref, "source": str(git)}
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text(encoding="utf-8").splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return {"commit": parts[0], "ref": ref, "source": str(git)}
        return {"commit": None, "ref": ref, "source": str(git)}
    return {"commit": None, "ref": None, "source": None}


# ----------------------------------------------------------------------------- atomic writes


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    """NaN/inf -> None recursively, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(data: dict) -> str:
    """Strict, indented JSON text of a run dict."""
    return json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{0.0 if round(value, digits) == 0 else value:+.{digits}f}"  # no "-0.00"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def row_summary(row: dict) -> str:
    """One line saying what a row found (or why it did not run)."""
    status, reason = row["status"], row.get("reason") or ""
    details = row.get("details") or {}
    if status in ("not_run", "error", "blocked"):
        return reason
    if row["kind"] == "structural":
        acc = details.get("accounting")
        if not acc:
            return reason
        text = (f"{acc['blobs']} blobs ({acc['mapped']} mapped, {acc.get('shared_msc_copies', 0)} shared MSC copies, "
                f"{acc['unaccounted']} unaccounted), {details.get('checks_passed')}/{details.get('checks')} "
                f"structural checks agree")
        return text if status == "pass" else f"{reason}; {text}"
    if row["kind"] == "forward":
        if "layers_compared" not in details:
            return reason
        text = (f"{details['layers_compared']} layer outputs vs {details.get('reference')}; final max rel. error "
                f"{_sci(details.get('max_rel'))} (rtol {details.get('rtol')})")
        first = details.get("first_divergent")
        return text + (f"; first divergent layer: {first}" if first else "")
    if status == "fail":
        return reason
    return ", ".join(f"{m['metric']} {_num(m['reproduced'])} ({_signed(m['delta'])})" for m in row.get("metrics", [])
                     if m.get("reported") is not None)


def render_markdown(data: dict, chart: str | None = None) -> str:
    """The person's report: summary, reported-vs-reproduced table, checks, environment, weights."""
    summary = data["summary"]
    env = data["environment"]
    commit = (data.get("git") or {}).get("commit")
    lines = [
        f"# Parity report: suite `{data['suite']}`",
        "",
        f"**{summary['pass']} passed, {summary['fail']} failed, {summary['error']} errors, "
        f"{summary['not_run']} not run, {summary.get('blocked', 0)} blocked** of {summary['total']} rows; "
        f"exit status {data.get('exit_status', '?')}.",
        "",
        f"- started {data['started']}, {data['duration_s']:.1f} s; seed {data['seed']}; device `{data['device']}`"
        f"{'; retrained (--retrain)' if data.get('retrain') else ''}",
        f"- commit `{commit or 'unknown'}`",
        f"- python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"opencv {env.get('opencv') or 'not installed'}"
        f"{', GPU ' + env['gpu'] if env.get('gpu') else ''}; {env['platform']}, {env['cpu_count']} CPUs",
        "",
        "## Rows",
        "",
        "| row | kind | status | result |",
        "| --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        lines.append(f"| `{row['name']}` | {row['kind']} | {MARKS[row['status']]} | {_md(row_summary(row))} |")
    metric_rows = [row for row in data["rows"] if row["kind"] == "metric"]
    if metric_rows:
        lines += ["", "## Reported vs reproduced (percent)", "",
                  "| row | metric | reported | reproduced | Δ | tolerance | | source |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
        for row in metric_rows:
            for m in row.get("metrics", []):
                mark = "–" if m["ok"] is None else ("✅" if m["ok"] else "❌")
                tolerance = "–" if m["reported"] is None else f"±{_num(m['tolerance'], 1)}"
                lines.append(f"| `{row['name']}` | {m['metric']} | {_num(m['reported'])} | {_num(m['reproduced'])} | "
                             f"{_signed(m['delta'])} | {tolerance} | {mark} | {_md(row.get('source') or '')} |")
    if chart:
        lines += ["", "## Per-class IoU", "", f"![per-class IoU]({chart})"]
    forward = [row for row in data["rows"] if row["kind"] == "forward" and row["status"] in ("pass", "fail")]
    for row in forward:
        details = row["details"]
        lines += ["", f"## Forward parity: `{row['name']}`", "",
                  f"Reference: {details.get('reference')}; inputs: {', '.join(details.get('inputs', []))}; "
                  f"{details.get('layers_compared')} layer outputs, tolerance {details.get('rtol')} relative "
                  f"(max |ours - ref| / max |ref|).", "",
                  f"First divergent layer: **{details.get('first_divergent') or 'none'}**.", "",
                  "| worst layers | max abs. error | max rel. error |", "| --- | ---: | ---: |"]
        for worst in details.get("worst", []):
            lines.append(f"| `{worst['layer']}` | {worst.get('max_abs', 0) or 0:.3g} | {worst['max_rel'] or 0:.3g} |")
    weights = data.get("weights") or []
    if weights:
        lines += ["", "## Weight files (sha256)", "", "| file | what | bytes | sha256 |", "| --- | --- | ---: | --- |"]
        for item in weights:
            lines.append(f"| `{item['path']}` | {item.get('what', '')} | {item.get('bytes', 0):,} | `{item['sha256']}` |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_junit(data: dict) -> str:
    """JUnit XML: one testcase per row; fail -> <failure>, error -> <error>, not run or blocked -> <skipped>."""
    summary = data["summary"]
    attrs = {"tests": str(summary["total"]), "failures": str(summary["fail"]), "errors": str(summary["error"]),
             "skipped": str(summary["not_run"] + summary.get("blocked", 0)), "time": f"{data['duration_s']:.3f}"}
    root = ET.Element("testsuites", {"name": "deeplab-parity", **attrs})
    suite = ET.SubElement(root, "testsuite", {"name": f"deeplab-parity.{data['suite']}", **attrs,
                                              "timestamp": data["started"], "hostname": socket.gethostname()})
    props = ET.SubElement(suite, "properties")
    flat = {f"env.{k}": v for k, v in data["environment"].items()}
    flat.update({"seed": data["seed"], "device": data["device"], "commit": (data.get("git") or {}).get("commit")})
    for item in data.get("weights") or []:
        flat[f"sha256.{Path(item['path']).name}"] = item["sha256"]
    for name, value in flat.items():
        ET.SubElement(props, "property", {"name": name, "value": "" if value is None else str(value)})
    for row in data["rows"]:
        case = ET.SubElement(suite, "testcase", {"classname": f"parity.{row['kind']}", "name": row["name"],
                                                 "time": f"{row.get('duration_s', 0.0):.3f}"})
        message = row.get("reason") or ""
        text = row_summary(row)
        if row["status"] == "fail":
            ET.SubElement(case, "failure", {"message": message, "type": f"{row['kind']}-parity"}).text = text
        elif row["status"] == "error":
            ET.SubElement(case, "error", {"message": message, "type": "error"}).text = row.get("traceback") or message
        elif row["status"] in ("not_run", "blocked"):
            ET.SubElement(case, "skipped", {"message": message})
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------- writing / reading


def write_reports(data: dict, outdir: str | Path) -> dict[str, Path]:
    """Write ``parity.json``, ``parity.md``, ``junit.xml`` and (when a metric row measured
    per-class IoU) ``class_iou.png`` into ``outdir``, each atomically. Returns {kind: path}."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    chart = class_iou_png(data)
    chart_name = None
    if chart is not None:
        written["chart"] = write_bytes_atomic(outdir / REPORT_FILES["chart"], chart)
        chart_name = REPORT_FILES["chart"]
    written["json"] = write_text_atomic(outdir / REPORT_FILES["json"], to_json(data))
    written["markdown"] = write_text_atomic(outdir / REPORT_FILES["markdown"], render_markdown(data, chart_name))
    written["junit"] = write_text_atomic(outdir / REPORT_FILES["junit"], render_junit(data))
    return written


def append_step_summary(data: dict) -> Path | None:
    """In GitHub Actions (``GITHUB_STEP_SUMMARY`` names a file), append the run's Markdown
    report to the job's summary page (the chart is a separate file there, so it is left out).
    Returns the file, or None outside Actions."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(render_markdown(data) + "\n")
    return Path(target)


def load_report(path: str | Path) -> dict:
    """Read a ``parity.json``; ReportError names the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ReportError(f"{path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a deeplab-parity report (schema {SCHEMA!r} expected)")
    if not isinstance(data.get("rows"), list):
        raise ReportError(f"{path}: has no 'rows' list")
    names: set[str] = set()
    for i, row in enumerate(data["rows"]):
        _check_row(path, i, row)
        if row["name"] in names:
            raise ReportError(f"{path}: rows[{i}]: row {row['name']!r} appears twice")
        names.add(row["name"])
    return data


#: Fields every row of a report needs for ``compare_reports`` (and their types).
ROW_FIELDS = {"name": str, "kind": str, "status": str}


def _number_or_none(value: Any) -> bool:
    """None or a finite number: NaN or inf would pass every comparison of a gate silently."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _check_row(path: Path, i: int, row: Any) -> None:
    """ReportError unless ``row`` has the fields ``compare_reports`` reads, with usable values."""
    if not isinstance(row, dict):
        raise ReportError(f"{path}: rows[{i}] is a {type(row).__name__}, not an object")
    for key, kind in ROW_FIELDS.items():
        if not isinstance(row.get(key), kind):
            raise ReportError(f"{path}: rows[{i}] ({row.get('name', 'unnamed')}) has no {key!r} {kind.__name__} field")
    where = f"{path}: rows[{i}] ({row['name']})"
    if row["status"] not in STATUSES:
        raise ReportError(f"{where}: status {row['status']!r} is not one of {', '.join(STATUSES)}")
    metrics, details = row.get("metrics", []), row.get("details") or {}
    if not isinstance(metrics, list) or not all(
            isinstance(m, dict) and isinstance(m.get("metric"), str) and _number_or_none(m.get("reproduced"))
            for m in metrics):
        raise ReportError(f"{where}: 'metrics' must be a list of {{'metric': name, 'reproduced': finite number "
                          f"or null}} objects")
    if not isinstance(details, dict) or not all(_number_or_none(details.get(k)) for k in ("max_rel", "rtol")):
        raise ReportError(f"{where}: 'details' must be an object whose max_rel and rtol are finite numbers")
    tolerance = row.get("tolerance")
    if not _number_or_none(tolerance) or (tolerance is not None and tolerance < 0):
        raise ReportError(f"{where}: 'tolerance' must be a finite number >= 0, got {tolerance!r}")


# ----------------------------------------------------------------------------- compare


def compare_reports(old: dict, new: dict, *, max_drop: float | None = None) -> dict[str, list[dict]]:
    """Differences between two runs, by row name.

    ``regressions``: a row that passed and now fails or errors, or a metric that dropped by more
    than ``max_drop`` percentage points (default: the row's tolerance; ``ValueError`` unless finite
    and >= 0), or no longer measured (null: NaN in the run), or a forward check whose final
    relative error grew past its tolerance. ``improvements``: metrics up by more than that.
    ``lost``: rows that passed and now did not run; ``missing``: rows of the old run absent from the
    new one (a failure, like a regression: a check that silently disappeared); ``added``: rows only
    in the new run; ``changed``: other status changes.
    """
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max_drop must be a finite number of percentage points >= 0, got {max_drop!r}")
    out: dict[str, list[dict]] = {k: [] for k in ("regressions", "improvements", "lost", "missing", "added", "changed")}
    old_rows = {r["name"]: r for r in old["rows"]}
    new_rows = {r["name"]: r for r in new["rows"]}
    for name in old_rows.keys() - new_rows.keys():
        out["missing"].append({"row": name, "what": f"in the old run ({old_rows[name]['status']}), missing from the new"})
    for name in new_rows.keys() - old_rows.keys():
        out["added"].append({"row": name, "what": f"only in the new run ({new_rows[name]['status']})"})
    for name, before in old_rows.items():
        after = new_rows.get(name)
        if after is None:
            continue
        s0, s1 = before["status"], after["status"]
        if s0 == "pass" and s1 in ("fail", "error"):
            out["regressions"].append({"row": name, "what": f"status pass -> {s1}: {after.get('reason') or ''}".strip()})
        elif s0 == "pass" and s1 == "not_run":
            out["lost"].append({"row": name, "what": f"passed before, not run now: {after.get('reason') or ''}"})
        elif s0 != s1:
            out["changed"].append({"row": name, "what": f"status {s0} -> {s1}"})
        limit = max_drop if max_drop is not None else (after.get("tolerance") or before.get("tolerance") or 0.0)
        if s1 in ("pass", "fail"):  # the row ran: its metrics are compared (other statuses are changes above)
            _metric_changes(name, before, after, limit, out)
        if after["kind"] == "forward" and before["kind"] == "forward":
            d0, d1 = before.get("details") or {}, after.get("details") or {}
            r0, r1, rtol = d0.get("max_rel"), d1.get("max_rel"), d1.get("rtol")
            if r0 is not None and r1 is not None and rtol is not None and r1 > rtol >= r0:
                what = (f"final max rel. error {r0:.2e} -> {r1:.2e} (rtol {rtol:g}); "
                        f"first divergent layer {d1.get('first_divergent')}")
                out["regressions"].append({"row": name, "what": what})
    for items in out.values():
        items.sort(key=lambda item: (item["row"], item.get("metric", "")))
    # a status regression already covers the same row's metric drop; keep both (they say different things)
    return out


def _metric_changes(name: str, before: dict, after: dict, limit: float, out: dict[str, list[dict]]) -> None:
    """Each metric the old row measured against the new row's: a drop beyond ``limit`` percentage
    points, or a metric the new row no longer measured (null or absent), is a regression."""
    new_metrics = {m["metric"]: m for m in after.get("metrics", [])}
    for prior in before.get("metrics", []):
        if prior.get("reproduced") is None:
            continue
        now = (new_metrics.get(prior["metric"]) or {}).get("reproduced")
        entry = {"row": name, "metric": prior["metric"], "old": prior["reproduced"], "new": now}
        if now is None:
            out["regressions"].append({**entry, "delta": None, "what": f"{prior['metric']} {prior['reproduced']:.2f} "
                                                                       f"-> not measured in the new run"})
            continue
        delta = now - prior["reproduced"]
        entry.update(delta=delta, what=f"{prior['metric']} {prior['reproduced']:.2f} -> {now:.2f} "
                                       f"({delta:+.2f}, limit {limit:g})")
        if delta < -limit:
            out["regressions"].append(entry)
        elif delta > limit:
            out["improvements"].append(entry)


def render_comparison(comparison: dict[str, list[dict]], old_name: str, new_name: str) -> str:
    """Markdown text of ``compare_reports``."""
    lines = [f"# deeplab-parity compare: `{old_name}` -> `{new_name}`", ""]
    titles = {"regressions": "Regressions", "improvements": "Improvements", "lost": "Passed before, not run now",
              "changed": "Other status changes", "missing": "Rows missing from the new run", "added": "Rows only in the new run"}
    for key, title in titles.items():
        items = comparison[key]
        if not items:
            continue
        lines += [f"## {title} ({len(items)})", ""]
        lines += [f"- `{item['row']}`: {item['what']}" for item in items]
        lines.append("")
    if not comparison["regressions"] and not comparison["missing"]:
        lines.append("No regressions.")
    return "\n".join(lines) + "\n"
