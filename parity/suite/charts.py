"""Charts for people, drawn with matplotlib and returned as PNG bytes (the caller writes them).

- ``class_iou_png(report)``: per metric row of a run, its classes' IoU as horizontal bars with
  the class names, sorted best first and split over side-by-side panels of at most
  ``CLASSES_PER_PANEL`` (4 and 21 classes: one panel; COCO-Stuff's 182: four); the reproduced
  mIoU is a solid line, the reported mIoU a dashed line inside its shaded tolerance band, and
  each bar's value is printed in a column right of the axes, where no line crosses it.
- ``history_png([(label, report), ...])``: a series of runs (e.g. CI artifacts by commit):
  each metric row's reproduced mIoU (with its reported value dashed) and each forward row's
  final max relative error (log scale, with its tolerance dashed), one point per report; a
  failing point is ringed in red and the first failure of each row is labelled, so the first
  bad commit is visible.

Only ``matplotlib.figure.Figure`` with the Agg canvas is used (no pyplot, no global state).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

__all__ = ["CLASSES_PER_PANEL", "class_iou_png", "history_png"]

#: at most this many classes per panel; more are split over panels side by side
CLASSES_PER_PANEL = 46
BAR, REPRODUCED, REPORTED, FAILED = "#4c78a8", "#e45756", "#222222", "#d62728"
ROW_INCH, PANEL_INCH = 0.2, 4.4  # height of one class, width of one panel


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi, no timestamp in the file)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _metric(row: dict, name: str) -> dict | None:
    return next((m for m in row.get("metrics") or [] if m.get("metric") == name), None)


def _sorted_classes(row: dict) -> list[tuple[str, float | None]]:
    """(name, IoU in percent or None when absent from the data), best first, absent last."""
    ious = row["class_iou"]
    names = row.get("class_names") or [str(i) for i in range(len(ious))]
    pairs = [(str(name), None if iou is None else 100.0 * float(iou)) for name, iou in zip(names, ious)]
    return sorted(pairs, key=lambda p: (p[1] is None, -(p[1] or 0.0)))


def _panels(items: list, size: int) -> list[list]:
    """``items`` split into the fewest panels of at most ``size``, as even as possible."""
    n = max(1, math.ceil(len(items) / size))
    per = math.ceil(len(items) / n)
    return [items[i:i + per] for i in range(0, len(items), per)]


def _draw_classes(ax: Any, classes: list[tuple[str, float | None]], miou: dict | None, rows: int) -> None:
    """One panel: bars top to bottom, the mIoU lines, the values in a column at the right."""
    y = list(range(len(classes)))
    values = [0.0 if v is None else v for _, v in classes]
    ax.barh(y, values, color=BAR, height=0.7)
    ax.set_yticks(y, [name if v is not None else f"{name} (absent)" for name, v in classes], fontsize=8)
    ax.set_ylim(rows - 0.5, -0.5)  # the same scale in every panel of a row, best class on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    if miou is not None:  # equal values stay told apart: the reported line is dashed over the
        # reproduced one, and each has its own marker, reported above the axes, reproduced below
        edge = ax.get_xaxis_transform()
        if miou.get("reproduced") is not None:
            ax.axvline(miou["reproduced"], color=REPRODUCED, linewidth=1.6, zorder=3)
            ax.plot([miou["reproduced"]], [0], marker="^", color=REPRODUCED, markersize=8, transform=edge,
                    clip_on=False, zorder=4)
        if miou.get("reported") is not None:
            low, high = miou["reported"] - miou["tolerance"], miou["reported"] + miou["tolerance"]
            ax.axvspan(max(low, 0), min(high, 100), color=REPORTED, alpha=0.08, linewidth=0)
            ax.axvline(miou["reported"], color=REPORTED, linestyle=(0, (4, 3)), linewidth=1.2, zorder=3.5)
            ax.plot([miou["reported"]], [1], marker="v", color=REPORTED, markersize=8, transform=edge,
                    clip_on=False, zorder=4)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(y, ["absent" if v is None else f"{v:.1f}" for _, v in classes], fontsize=8)
    right.tick_params(axis="y", length=0)


def _legend(miou: dict | None) -> list:
    handles = [Patch(color=BAR, label="class IoU")]
    if miou is not None and miou.get("reproduced") is not None:
        handles.append(Line2D([], [], color=REPRODUCED, linewidth=1.6, marker="^", markersize=7,
                              label=f"reproduced mIoU {miou['reproduced']:.2f}"))
    if miou is not None and miou.get("reported") is not None:
        handles.append(Line2D([], [], color=REPORTED, linestyle=(0, (4, 3)), linewidth=1.2, marker="v", markersize=7,
                              label=f"reported mIoU {miou['reported']:.2f}"))
        handles.append(Patch(color=REPORTED, alpha=0.15, label=f"tolerance ±{miou['tolerance']:g}"))
    return handles


def class_iou_png(report: dict) -> bytes | None:
    """The per-class IoU chart of a run (a ``parity.json`` dict); None when no metric row
    measured per-class IoU."""
    rows = [r for r in report["rows"] if r["kind"] == "metric" and r.get("class_iou")]
    if not rows:
        return None
    layouts = [(row, _panels(_sorted_classes(row), CLASSES_PER_PANEL)) for row in rows]
    columns = max(len(panels) for _, panels in layouts)
    heights = [len(panels[0]) * ROW_INCH + 1.6 for _, panels in layouts]
    fig = Figure(figsize=(PANEL_INCH * columns + 1.0, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(layouts), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfig, (row, panels) in zip(subfigs, layouts):
        miou = _metric(row, "mIoU")
        axes = subfig.subplots(1, columns, squeeze=False)[0]
        for ax, classes in zip(axes, panels):
            _draw_classes(ax, classes, miou, len(panels[0]))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        subfig.suptitle(f"{row['name']} ({row.get('dataset')} {row.get('split')}): per-class IoU, "
                        f"{len(row['class_iou'])} classes, best first", fontsize=10)
        subfig.legend(handles=_legend(miou), loc="outside lower center", ncols=min(4, 2 * columns), fontsize=8,
                      frameon=False)
    return _png(fig)


# ----------------------------------------------------------------------------- history


def _series(reports: Sequence[tuple[str, dict]], kind: str) -> dict[str, list[dict | None]]:
    """Per row name of ``kind``, one entry per report (the row's dict, or None when absent)."""
    names: list[str] = []
    for _, report in reports:
        names += [r["name"] for r in report["rows"] if r["kind"] == kind and r["name"] not in names]
    by_name = [{r["name"]: r for r in report["rows"]} for _, report in reports]
    return {name: [rows.get(name) for rows in by_name] for name in names}


def _metric_value(row: dict | None, key: str) -> float:
    m = _metric(row, "mIoU") if row else None
    return float("nan") if m is None or m.get(key) is None else float(m[key])


def _forward_value(row: dict | None, key: str) -> float:
    value = ((row or {}).get("details") or {}).get(key)
    return float("nan") if value is None or (key == "max_rel" and value <= 0) else float(value)


def _plot_series(ax: Any, x: list[int], rows: list[dict | None], values: list[float], reference: list[float],
                 labels: Sequence[str], name: str, index: int) -> None:
    """One row's line (the ``index``-th of its panel), its reference dashed, failing points
    ringed, the first failure marked by a dotted line and labelled."""
    colour = f"C{index % 10}"
    ax.plot(x, values, marker="o", markersize=4, color=colour, label=name)
    if any(not math.isnan(v) for v in reference):
        ax.plot(x, reference, linestyle=(0, (4, 3)), linewidth=1, color=colour)
    failing = [i for i, row in enumerate(rows) if row is not None and row["status"] in ("fail", "error")]
    if failing:
        ax.plot([x[i] for i in failing], [values[i] for i in failing], linestyle="none", marker="o", markersize=11,
                markerfacecolor="none", markeredgecolor=FAILED, markeredgewidth=1.5)
        first = failing[0]  # a dotted line through the panel and a label at its top: clear of the points
        ax.axvline(x[first], color=FAILED, linestyle=":", linewidth=1.2)
        ax.text(x[first], 0.97 - 0.09 * index, f" {name}: first {rows[first]['status']} at {labels[first]} ",
                transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=8, color=FAILED,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})


def history_png(reports: Sequence[tuple[str, dict]]) -> bytes:
    """The trend chart of a series of runs, oldest first: ``[(label, parity.json dict), ...]``."""
    labels = [label for label, _ in reports]
    x = list(range(len(reports)))
    metric, forward = _series(reports, "metric"), _series(reports, "forward")
    panels = [p for p in (("metric", metric), ("forward", forward)) if p[1]]
    fig = Figure(figsize=(max(6.0, 0.6 * len(reports) + 3.5), 3.2 * max(1, len(panels)) + 0.8), layout="constrained")
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (kind, series) in zip(axes, panels):
        for i, (name, rows) in enumerate(series.items()):
            if kind == "metric":
                values = [_metric_value(r, "reproduced") for r in rows]
                reference = [_metric_value(r, "reported") for r in rows]
            else:
                values = [_forward_value(r, "max_rel") for r in rows]
                reference = [_forward_value(r, "rtol") for r in rows]
            _plot_series(ax, x, rows, values, reference, labels, name, i)
        if kind == "metric":
            ax.set_ylabel("mIoU (%)")
            ax.set_title("metric rows: reproduced mIoU (solid), reported (dashed)", fontsize=10)
        else:
            ax.set_yscale("log")
            ax.set_ylabel("final max rel. error")
            ax.set_title("forward rows: max |ours - ref| / max |ref| (solid), tolerance (dashed)", fontsize=10)
        ax.grid(color="#dddddd", linewidth=0.6)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[-1].set_xticks(x, labels, rotation=40, ha="right", fontsize=8)
    axes[-1].set_xlabel("report (oldest first)")
    fig.suptitle(f"deeplab-parity history: {len(reports)} reports; red rings: failing rows", fontsize=11)
    return _png(fig)
