"""report.json for machines; report.md and report.html (with plots) for people.

Every function here takes a typed Report (edgepress.report.model); the public ones also take report.json's
object, which they read with read_report first."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgepress.core import atomic
from edgepress.measure import metrics
from edgepress.report import ort_section
from edgepress.report import plots as report_plots
from edgepress.report.model import Gate, Report, Stage, TargetEntry, read_report
from edgepress.report.view import metric_of

_TAIL = ("size", "params", "MACs", "p50 ms", "p90 ms", "p99 ms", "seconds")
ReportLike = Report | Mapping[str, Any]


def as_report(report: ReportLike) -> Report:
    return report if isinstance(report, Report) else read_report(report)


def quality_values(report: Report) -> tuple[metrics.Value, ...]:
    """The quality columns: the report's metric's headline values, and for a task metric other than
    classification or text, how close each stage stays to the reference (SNR)."""
    metric = metric_of(report)
    shown = metric.shown
    if metric.key not in ("top1", "cosine", "fidelity"):
        shown += (metrics.VALUES["snr_db"],)
    return shown


def columns(report: ReportLike) -> tuple[str, ...]:
    return ("stage", "kind", "format") + tuple(v.label for v in quality_values(as_report(report))) + _TAIL


def _quality(values: Mapping[str, float], shown: tuple[metrics.Value, ...]) -> list[str]:
    return ["–" if value.key not in values else value.show(values[value.key]) for value in shown]


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _row(stage: Stage, metric: tuple[metrics.Value, ...]) -> list[str]:
    m = stage.metrics
    lat = m.latency_ms
    return [stage.name, stage.kind, stage.format, *_quality(m.values, metric),
            f"{m.size_bytes / 1024:.1f} KiB", f"{m.params:,}", f"{m.macs / 1e6:.2f} M",
            _ms(lat.p50 if lat else None), _ms(lat.p90 if lat else None), _ms(lat.p99 if lat else None),
            f"{stage.seconds:.1f}"]


def target_header(report: ReportLike) -> list[str]:
    report = as_report(report)
    reference = report.onnx_reference_stage
    return (["stage", "target"] + [v.label for v in quality_values(report)]
            + ["size", "p50 ms [95% CI]", "p90 ms", f"p50 vs {reference or 'reference'} [95% CI]", "peak memory"])


def _latency_cells(entry: TargetEntry) -> list[str]:
    if entry.latency_ms is None:
        return ["–"] * 4
    if entry.emulated:
        return ["emulated"] * 4  # timings under emulation are not latency: never shown as such
    lat, ci = entry.latency_ms, entry.p50_ci95_ms
    ratio, memory = entry.latency_ratio, entry.peak_memory_bytes
    return [f"{lat.p50:.3f}" + (f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else ""), f"{lat.p90:.3f}",
            f"{ratio.p50:.2f}x [{ratio.ci95[0]:.2f}–{ratio.ci95[1]:.2f}]" if ratio else "–",
            f"{memory / 2**20:.1f} MiB" if memory else "–"]


def target_rows(report: ReportLike) -> list[list[str]]:
    """The compact table: one row per stage and target it was measured on."""
    report = as_report(report)
    rows = []
    for stage in report.stages:
        for target, entry in report.on_targets(stage).items():
            size = f"{entry.size_bytes / 1024:.1f} KiB" if entry.size_bytes is not None else "–"
            rows.append([stage.name, target, *_quality(entry.values, quality_values(report)), size,
                         *_latency_cells(entry)])
    return rows


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _per_set_header(report: Report) -> list[str]:
    return ["stage", "set", "samples"] + [v.label for v in quality_values(report)]


def _per_set_rows(report: Report) -> list[list[str]]:
    return [[stage.name, name, str(scores.samples), *_quality(scores.values, quality_values(report))]
            for stage in report.stages for name, scores in stage.metrics.evaluation.items()]


_OUTPUTS_HEADER = ["stage", "set", "output", "cosine", "SNR", "max error"]


def _per_output_rows(report: Report) -> list[list[str]]:
    """A model with several outputs: each output's fidelity to the reference, per stage and set."""
    return [[stage.name, name, output, f"{v['cosine']:.4f}", f"{v['snr_db']:.1f} dB", f"{v['max_abs_error']:.4g}"]
            for stage in report.stages for name, scores in stage.metrics.evaluation.items()
            for output, v in scores.outputs.items()]


def _against(report: Report) -> str:
    metric = metric_of(report)
    compared = [v.label for v in quality_values(report) if metric.needs == "reference" or v.key in
                ("agreement", "snr_db") or v.key not in {k.key for k in metric.values}]
    listed = ", ".join(compared) or "Fidelity"
    return f"{listed[0].upper() + listed[1:]} {'is' if len(compared) == 1 else 'are'} against stage `{report.reference_stage}`."


def _gate_rows(gate: Gate, *, primary: str) -> list[list[str]]:
    """The run's budget checks; a check without a target is on the primary target."""
    return [[c.target or primary, c.budget, f"{c.limit:g}", f"{c.value:.4g}",
             ("ok" if c.passed else "VIOLATED") + (f" ({c.note})" if c.note else "")]
            for c in gate.checks]


_GATE_HEADER = ["target", "budget", "limit", "value", "result"]


def _gate_lines(report: Report) -> list[str]:
    g = report.gate
    lines = [f"**Gate on stage `{g.stage}`: {'PASSED' if g.passed else 'FAILED'}**", ""]
    if report.warnings:
        lines += ["**Warnings:**", ""] + [f"- {line}" for line in report.warnings] + [""]
    rows = _gate_rows(g, primary=report.primary_target)
    return lines + (markdown_table(_GATE_HEADER, rows) if rows else ["No budgets were set."])


def _targets_line(report: Report) -> str:
    described = [f"{t.name} ({t.threads} thread(s){', emulated' if t.emulated else ''})" for t in report.targets]
    if len(described) == 1:
        return f"Target: {described[0]}."
    return f"Targets: {', '.join(described)}; the first is the primary."


def markdown(report: ReportLike) -> str:
    """The verdict and a compact table per stage and target first (what a pull-request comment needs),
    then the details."""
    report = as_report(report)
    lines = [f"# edgepress report: {report.name}", ""] + _gate_lines(report)
    lines += ["", "## On each target", "", f"{_targets_line(report)} {_against(report)} Timings under emulation "
              "are not latency and show as 'emulated'.", ""] + markdown_table(target_header(report), target_rows(report))
    lines += ["", "## Stages", "", "Headline metrics: the primary target's.", ""]
    lines += markdown_table(columns(report), [_row(s, quality_values(report)) for s in report.stages])
    lines += ["", "## Every evaluation set", ""] + markdown_table(_per_set_header(report), _per_set_rows(report))
    if _per_output_rows(report):
        lines += ["", "## Every output", "", f"Against stage `{report.reference_stage}`; the stage's figures are "
                  "the worst output's.", ""] + markdown_table(_OUTPUTS_HEADER, _per_output_rows(report))
    ort = ort_section.section(report)
    if ort is not None:
        lines += ["", f"## {ort_section.TITLE}", "", ort_section.INTRO, ""]
        lines += markdown_table(ort_section.FILES_HEADER, ort.files) + [""]
        lines += markdown_table(ort.answers_header, ort.answers)
    for stage, sensitivity in _sensitivities(report):
        lines += ["", f"## Pruning sensitivity: stage `{stage}`", "",
                  f"Accuracy on the sensitivity subset with one layer pruned at a time "
                  f"(unpruned: {100 * sensitivity['baseline_accuracy']:.2f}%).", ""]
        header, rows = _sensitivity_rows(sensitivity)
        lines += markdown_table(header, rows)
        lines += ["", f"![accuracy against prune ratio, per layer]({sensitivity_svg_name(stage)})"]
    for stage, search, header, rows in _precisions(report):
        lines += ["", f"## Node precision: stage `{stage}`", ""]
        if search:
            lines += [f"Chosen: {search['chosen']}, {search['p50_vs_fp32']:.2f}x FP32 p50 on {search['target_isa']}, "
                      + (f"agreement {100 * search['agreement']:.2f}%" if "agreement" in search else
                         ", ".join(f"{k} {search[k]:.4g}" for k in search.get("goal", {}) if k in search))
                      + f" on {search['validation_samples']} validation samples.", ""]
        lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def _precisions(report: Report) -> list[tuple[str, dict[str, Any] | None, list[str], list[list[str]]]]:
    """(stage, its accuracy-aware search summary or None, header, rows) per quantizing stage: every
    compute node's precision, and why it is FP32."""
    found = []
    for stage in report.stages:
        own = stage.metrics.own
        q = own.get("quantization", {})
        if "node_precision" not in q:
            continue
        reasons = {f["node"]: f["reason"] for f in q.get("fp32_fallback", [])}
        # Convs steered to another integer kernel (compress/quant/conv_kernels.py; qat records it with its export).
        kernels = q.get("conv_kernels") or own.get("qat", {}).get("conv_kernels") or {}
        forms = kernels.get("chosen", {}) if kernels.get("kept") else {}
        if forms:
            rows = [[node, precision, forms.get(node, ""), reasons.get(node, "")]
                    for node, precision in q["node_precision"].items()]
            header = ["node", "precision", "kernel form (measured faster)", "why FP32"]
        else:
            rows = [[node, precision, reasons.get(node, "")] for node, precision in q["node_precision"].items()]
            header = ["node", "precision", "why FP32"]
        found.append((stage.name, q.get("search"), header, rows))
    return found


def _sensitivities(report: Report) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, table) for each stage whose metrics hold a pruning sensitivity table."""
    return [(s.name, s.metrics.own["sensitivity"]) for s in report.stages if "sensitivity" in s.metrics.own]


def sensitivity_svg_name(stage: str) -> str:
    """The plot's file beside report.md (Markdown viewers show images from files, not inline SVG)."""
    return "sensitivity-" + re.sub(r"[^A-Za-z0-9_.-]", "_", stage) + ".svg"


def _sensitivity_rows(sensitivity: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    ratios = sorted({p["ratio"] for points in sensitivity["layers"].values() for p in points})
    rows = []
    for name, points in sensitivity["layers"].items():
        by_ratio = {p["ratio"]: p["accuracy"] for p in points}
        rows.append([name] + [f"{100 * by_ratio[r]:.2f}%" if r in by_ratio else "–" for r in ratios])
    return ["layer"] + [f"ratio {r:g}" for r in ratios], rows


def sensitivity_plot_svg(sensitivity: Any) -> str:
    """Accuracy (%) against the share of channels removed, one line per layer, each pruned alone.

    `sensitivity` is a SensitivityTable or its to_json() dict (as stored in report.json); each
    layer's line is an SVG group with id `sensitivity-<layer>`, so it can be found and styled."""
    table = sensitivity.to_json() if hasattr(sensitivity, "to_json") else sensitivity
    plt = report_plots.pyplot()
    if plt is None:
        return report_plots.NO_MATPLOTLIB
    layers = table["layers"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = plt.get_cmap("viridis")  # up to 0.85 only: its end is a pale yellow, unreadable on white
    for index, (name, points) in enumerate(layers.items()):
        points = sorted(points, key=lambda p: p["ratio"])
        # Ratio 0 is the unpruned model, so every line starts from the same point.
        (line,) = ax.plot([0.0] + [p["ratio"] for p in points],
                          [100 * table["baseline_accuracy"]] + [100 * p["accuracy"] for p in points],
                          marker="o", markersize=3, label=name, color=colors(0.85 * index / max(len(layers) - 1, 1)))
        line.set_gid(f"sensitivity-{name}")
    ax.set_xlabel("share of the layer's channels removed")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("pruning sensitivity: accuracy with one layer pruned at a time")
    ax.grid(alpha=0.3)
    # Outside the axes: deep models have dozens of layers, and the legend must not hide lines.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(layers) // 20, frameon=False)
    fig.tight_layout()
    return report_plots.figure_svg(fig, plt)


def _html_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline_code(text: str) -> str:
    """Markdown's `code` spans as <code>, the rest escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{part}</code>" if index % 2 else part for index, part in enumerate(parts))


def _warnings_html(report: Report) -> str:
    listed = report.warnings
    return ("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in listed) + "</ul>"
            if listed else "")


def html_page(report: ReportLike) -> str:
    report = as_report(report)
    g = report.gate
    verdict = "PASSED" if g.passed else "FAILED"
    gate_rows = _gate_rows(g, primary=report.primary_target)
    sensitivity_html = "".join(f"<h2>Pruning sensitivity: stage <code>{html.escape(stage)}</code></h2>"
                               f"{sensitivity_plot_svg(table)}{_html_table(*_sensitivity_rows(table))}"
                               for stage, table in _sensitivities(report))
    ort = ort_section.section(report)
    ort_html = ("" if ort is None else
                f"<h2>{html.escape(ort_section.TITLE)}</h2><p>{_inline_code(ort_section.INTRO)}</p>"
                f"{_html_table(ort_section.FILES_HEADER, ort.files)}{_html_table(ort.answers_header, ort.answers)}")
    precision_html = "".join(f"<h2>Node precision: stage <code>{html.escape(stage)}</code></h2>{_html_table(header, rows)}"
                             for stage, _, header, rows in _precisions(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgepress: {html.escape(report.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
.PASSED{{color:#1a7f37}}.FAILED{{color:#cf222e}}.plots{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}}</style></head><body>
<h1>edgepress report: {html.escape(report.name)}</h1>
<h2>Gate on stage <code>{html.escape(g.stage)}</code>: <span class="{verdict}">{verdict}</span></h2>
{_html_table(_GATE_HEADER, gate_rows) if gate_rows else "<p>No budgets were set.</p>"}
{_warnings_html(report)}
<p>{html.escape(_targets_line(report))} {html.escape(_against(report).replace("`", ""))}</p>
<h2>On each target</h2>{_html_table(target_header(report), target_rows(report))}
<h2>Plots</h2>
<div class="plots">{report_plots.size_svg(report)}{report_plots.quality_svg(report)}</div>
{report_plots.latency_svg(report)}
{report_plots.profile_svg(report)}
<h2>Stages</h2><p>Headline metrics: the primary target's.</p>
{_html_table(columns(report), [_row(s, quality_values(report)) for s in report.stages])}
<h2>Every evaluation set</h2>{_html_table(_per_set_header(report), _per_set_rows(report))}
{"<h2>Every output</h2>" + _html_table(_OUTPUTS_HEADER, _per_output_rows(report)) if _per_output_rows(report) else ""}
{ort_html}
{sensitivity_html}
{precision_html}
</body></html>
"""


FIXED_FILES = ("report.json", "report.md", "report.html")


def file_names(report: ReportLike) -> list[str]:
    """What write_all writes into the run folder."""
    return list(FIXED_FILES) + [sensitivity_svg_name(s) for s, _ in _sensitivities(as_report(report))]


def write_all(report: ReportLike, *, out_dir: Path) -> None:
    report = as_report(report)
    atomic.write_json(out_dir / "report.json", report.to_json_dict())
    for stage, sensitivity in _sensitivities(report):
        atomic.write_text(out_dir / sensitivity_svg_name(stage), sensitivity_plot_svg(sensitivity))
    atomic.write_text(out_dir / "report.md", markdown(report))
    atomic.write_text(out_dir / "report.html", html_page(report))
