"""report.html's plots, as inline SVG drawn by matplotlib: size per stage, latency distribution per stage and
target, quality against p50 latency per stage and target.

Timings under emulation are not latency: they never enter the latency plot, and an emulated target's quality
is drawn hollow at the p50 of a real target for the same stage, with the legend saying so. Each drawn stage
and target is an SVG group with id plot_id(kind, stage, target), so it can be found and styled; a size bar is
plot_id("size", stage), since a stage's file is the same on every target."""

from __future__ import annotations

import inspect
import io
import re
from typing import Any

import numpy as np

from edgepress.report.model import Report, TargetEntry
from edgepress.report.view import metric_of

NO_MATPLOTLIB = "<p>(matplotlib is not installed: no plots)</p>"
# A qualitative palette; the primary target takes the first colour in every plot.
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def pyplot():
    """matplotlib's pyplot on the file-only backend, or None without matplotlib (a device install)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def figure_svg(fig, plt) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def plot_id(kind: str, stage: str, target: str | None = None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{kind}-{stage}" + (f"-at-{target}" if target is not None else ""))


def quality_key(report: Report) -> tuple[str, str, float]:
    """(metrics key, axis label, scale) of the report's metric's first value: shares and cosines x 100."""
    value = metric_of(report).values[0]
    label = {"share": f"{value.label} (%)", "cosine": f"{value.label} x 100"}.get(value.unit, value.label)
    return value.key, label, 100.0 if value.unit in ("share", "cosine") else 1.0


def _color(report: Report, target: str) -> str:
    names = report.target_names()
    return COLORS[names.index(target) % len(COLORS)] if target in names else COLORS[-1]


def size_svg(report: Report) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    stages = report.stages
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(stages), 3.4))
    bars = ax.bar([s.name for s in stages], [s.metrics.size_bytes / 1024 for s in stages], color=COLORS[0])
    for bar, stage in zip(bars, stages):
        bar.set_gid(plot_id("size", stage.name))
    ax.set_title("size per stage (KiB)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return figure_svg(fig, plt)


PROFILE_OP_TYPES = 7  # op types drawn apart in the profile plot; the rest are "other"


def profile_svg(report: Report) -> str:
    """Each profiled ONNX stage's kernel time per run on the primary target, stacked by op type: where an INT8
    model spends what its FP32 reference did not (quantize/dequantize, reorders) shows beside the GEMMs."""
    primary = report.primary_target
    rows = [(stage.name, entry.profile) for stage in report.stages
            for target, entry in report.on_targets(stage).items()
            if target == primary and not entry.emulated and entry.profile is not None]
    if not rows:
        return ""
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    totals: dict[str, float] = {}
    for _, profile in rows:
        for row in profile["by_op_type"]:
            totals[row["op_type"]] = totals.get(row["op_type"], 0.0) + row["ms"]
    named = sorted(totals, key=lambda op: -totals[op])[:PROFILE_OP_TYPES]
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.5 * len(rows)))
    left = np.zeros(len(rows))
    for index, op in enumerate(named + ["other"]):
        widths = np.array([sum(r["ms"] for r in profile["by_op_type"]
                               if (r["op_type"] == op if op != "other" else r["op_type"] not in named))
                           for _, profile in rows])
        bars = ax.barh([name for name, _ in rows], widths, left=left, label=op, color=COLORS[index % len(COLORS)])
        for bar, (name, _) in zip(bars, rows):
            bar.set_gid(plot_id(f"profile-{op}", name, primary))
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel(f"kernel time per run on {primary} (ms, ONNX Runtime's profiler)")
    ax.set_title("where the time goes, by op type")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return figure_svg(fig, plt)


def _timed(report: Report) -> tuple[list[tuple[str, str, TargetEntry]], list[str]]:
    """(stage, target, entry) timed on a real device, and the targets whose timings were emulated."""
    rows, emulated = [], []
    for stage in report.stages:
        for target, entry in report.on_targets(stage).items():
            if entry.timed_latency is not None:
                rows.append((stage.name, target, entry))
            elif entry.latency_ms is not None and target not in emulated:
                emulated.append(target)
    return rows, emulated


def _horizontal(ax) -> dict[str, Any]:
    """matplotlib 3.10 renamed bxp's vert=False to orientation="horizontal" (and deprecated the old name)."""
    return ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.bxp).parameters
            else {"vert": False})


def latency_svg(report: Report) -> str:
    """One row per stage and target: the timings' box (quartiles, whiskers at the 1st and 99th percentile)
    where the report kept every timing, and in every row the p50 with its 95% interval and the p90."""
    rows, emulated = _timed(report)
    note = (f"<p>Timings under emulation ({', '.join(emulated)}) are not latency: left out.</p>" if emulated else "")
    if not rows:
        return "<p>No stage was timed on a real device.</p>" + note
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(9, 1.3 + 0.42 * len(rows)))
    labels = []
    for index, (stage, target, entry) in enumerate(rows):
        y = len(rows) - 1 - index  # the first stage on top
        labels.append((y, f"{stage} @ {target}"))
        color = _color(report, target)
        lat = entry.latency_ms
        samples = entry.samples_ms
        if samples:
            p1, q1, med, q3, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [1, 25, 50, 75, 99])
            drawn = ax.bxp([{"med": med, "q1": q1, "q3": q3, "whislo": p1, "whishi": p99, "fliers": []}],
                           positions=[y], widths=0.55, showfliers=False, patch_artist=True, **_horizontal(ax),
                           boxprops={"facecolor": color, "alpha": 0.35, "edgecolor": color},
                           medianprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color})
            drawn["boxes"][0].set_gid(plot_id("latency-box", stage, target))
        ci = entry.p50_ci95_ms or (lat.p50, lat.p50)
        below, above = max(lat.p50 - ci[0], 0.0), max(ci[1] - lat.p50, 0.0)  # a bootstrap CI may miss p50
        marker, _, _ = ax.errorbar([lat.p50], [y], xerr=[[below], [above]], fmt="o", color=color, capsize=4,
                                   markersize=4, zorder=3)
        marker.set_gid(plot_id("latency", stage, target))
        ax.plot([lat.p90], [y], marker="x", markersize=7, color="k", zorder=3)
    ax.set_yticks([y for y, _ in labels], [label for _, label in labels])
    ax.set_xlabel("ms per run (dot: p50 with its 95% interval; x: p90; box: quartiles, whiskers p1-p99)")
    ax.set_title("latency per stage and target")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_svg(fig, plt) + note


def quality_svg(report: Report) -> str:
    """Quality against p50 for every stage and target; an emulated target's points are hollow, at the p50
    of the stage's first real target (their own timings are not latency)."""
    key, label, scale = quality_key(report)
    points = []  # (stage, target, p50, quality, hollow, x taken from, samples when a subset)
    for stage in report.stages:
        entries = report.on_targets(stage)
        real = next(((t, e) for t, e in entries.items() if e.timed_latency is not None), None)
        for target, entry in entries.items():
            if key not in entry.values:
                continue
            # A target that evaluated only the first N samples scores a different subset: the legend says so.
            first = next(iter(entry.evaluation.values()), None)
            subset = first.samples if first is not None else None
            if entry.timed_latency is not None:
                points.append((stage.name, target, entry.latency_ms.p50, entry.values[key], False, target, subset))
            elif entry.emulated and real is not None:
                points.append((stage.name, target, real[1].latency_ms.p50, entry.values[key], True, real[0], subset))
    if not points:
        return f"<p>No stage has both {key} and a latency: no quality plot.</p>"
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labelled = set()
    for stage, target, p50, quality, hollow, source, subset in points:
        color = _color(report, target)
        legend = f"{target} (emulated: at {source}'s p50)" if hollow else target
        if subset is not None:
            legend += f", first {subset:,} samples"
        (line,) = ax.plot([p50], [scale * quality], marker="o", markersize=7, linestyle="none", color=color,
                          markerfacecolor="none" if hollow else color, label=None if legend in labelled else legend)
        labelled.add(legend)
        line.set_gid(plot_id("quality", stage, target))
        ax.annotate(stage, (p50, scale * quality), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} against p50 latency, per stage and target")
    ax.margins(0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_svg(fig, plt)
