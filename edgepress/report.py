"""report.json for machines; report.md and report.html (with plots) for people."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

from edgepress import atomic

# The quality columns of each data.metric: (header, metrics key, share shown as a percentage).
QUALITY = {
    "top1": (("accuracy", "accuracy", True), ("agreement", "agreement", True)),
    "cosine": (("cosine", "cosine", False), ("cosine min", "cosine_min", False),
               ("top-5 agreement", "top5_agreement", True)),
}
_TAIL = ("size", "params", "MACs", "p50 ms", "p90 ms", "p99 ms", "seconds")


def _metric(report: dict[str, Any]) -> str:
    return report.get("metric", "top1")  # reports written before text models have no "metric"


def columns(report: dict[str, Any]) -> tuple[str, ...]:
    return ("stage", "kind", "format") + tuple(header for header, _, _ in QUALITY[_metric(report)]) + _TAIL


def _quality(values: dict[str, Any], metric: str) -> list[str]:
    return [("–" if key not in values else f"{100 * values[key]:.2f}%" if share else f"{values[key]:.4f}")
            for _, key, share in QUALITY[metric]]


def _row(stage: dict[str, Any], metric: str) -> list[str]:
    m = stage["metrics"]
    lat = m.get("latency_ms")
    return [stage["name"], stage["kind"], stage["format"], *_quality(m, metric),
            f"{m['size_bytes'] / 1024:.1f} KiB", f"{m['params']:,}", f"{m['macs'] / 1e6:.2f} M",
            f"{lat['p50']:.3f}" if lat else "–", f"{lat['p90']:.3f}" if lat else "–",
            f"{lat['p99']:.3f}" if lat else "–", f"{stage['seconds']:.1f}"]


def _per_set_header(report: dict[str, Any]) -> list[str]:
    return ["stage", "set", "samples"] + [header for header, _, _ in QUALITY[_metric(report)]]


def _per_set_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[stage["name"], name, str(values["samples"]), *_quality(values, _metric(report))]
            for stage in report["stages"] for name, values in stage["metrics"].get("evaluation", {}).items()]


def _against(report: dict[str, Any]) -> str:
    compared = "Agreement is" if _metric(report) == "top1" else "Cosine similarity and top-5 agreement are"
    return f"{compared} against stage `{report['reference_stage']}`."


def _gate_lines(report: dict[str, Any]) -> list[str]:
    g = report["gate"]
    lines = [f"**Gate on stage `{g['stage']}`: {'PASSED' if g['passed'] else 'FAILED'}**", ""]
    if g["checks"]:
        lines += ["| budget | limit | value | result |", "|---|---|---|---|"]
        lines += [f"| {c['budget']} | {c['limit']:g} | {c['value']:.4g} | {'ok' if c['passed'] else 'VIOLATED'} |"
                  for c in g["checks"]]
    else:
        lines.append("No budgets were set.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    header, set_header = columns(report), _per_set_header(report)
    lines = [f"# edgepress report: {report['name']}", "",
             f"Target: {report['target']['name']}, {report['target']['threads']} thread(s). {_against(report)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_row(s, _metric(report))) + " |" for s in report["stages"]]
    lines += ["", "## Every evaluation set", "", "| " + " | ".join(set_header) + " |", "|" + "---|" * len(set_header)]
    lines += ["| " + " | ".join(r) + " |" for r in _per_set_rows(report)]
    for stage, sensitivity in _sensitivities(report):
        lines += ["", f"## Pruning sensitivity: stage `{stage}`", "",
                  f"Accuracy on the sensitivity subset with one layer pruned at a time "
                  f"(unpruned: {100 * sensitivity['baseline_accuracy']:.2f}%).", ""]
        header, rows = _sensitivity_rows(sensitivity)
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", f"![accuracy against prune ratio, per layer]({sensitivity_svg_name(stage)})"]
    for stage, search, header, rows in _precisions(report):
        lines += ["", f"## Node precision: stage `{stage}`", ""]
        if search:
            lines += [f"Chosen: {search['chosen']}, {search['p50_vs_fp32']:.2f}x FP32 p50 on {search['target_isa']}, "
                      f"agreement {100 * search['agreement']:.2f}% on {search['validation_samples']} validation images.", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Gate", ""] + _gate_lines(report)
    return "\n".join(lines) + "\n"


def _precisions(report: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, list[str], list[list[str]]]]:
    """(stage, its accuracy-aware search summary or None, header, rows) per quantizing stage: every
    compute node's precision, and why it is FP32."""
    found = []
    for stage in report["stages"]:
        q = stage["metrics"].get("quantization", {})
        if "node_precision" not in q:
            continue
        reasons = {f["node"]: f["reason"] for f in q.get("fp32_fallback", [])}
        rows = [[node, precision, reasons.get(node, "")] for node, precision in q["node_precision"].items()]
        found.append((stage["name"], q.get("search"), ["node", "precision", "why FP32"], rows))
    return found


def _sensitivities(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, table) for each stage whose metrics hold a pruning sensitivity table."""
    return [(s["name"], s["metrics"]["sensitivity"]) for s in report["stages"] if "sensitivity" in s["metrics"]]


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


def _figure_svg(fig, plt) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def sensitivity_plot_svg(sensitivity: Any) -> str:
    """Accuracy (%) against the share of channels removed, one line per layer, each pruned alone.

    `sensitivity` is a SensitivityTable or its to_json() dict (as stored in report.json); each
    layer's line is an SVG group with id `sensitivity-<layer>`, so it can be found and styled."""
    table = sensitivity.to_json() if hasattr(sensitivity, "to_json") else sensitivity
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p>(matplotlib is not installed: no plots)</p>"
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
    return _figure_svg(fig, plt)


def _plots_svg(report: dict[str, Any]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "<p>(matplotlib is not installed: no plots)</p>"
    stages = report["stages"]
    names = [s["name"] for s in stages]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(names, [s["metrics"]["size_bytes"] / 1024 for s in stages], color="#4c72b0")
    axes[0].set_title("size (KiB)")
    timed = [s for s in stages if "latency_ms" in s["metrics"]]
    quality, quality_label = ("accuracy", "accuracy (%)") if _metric(report) == "top1" else ("cosine", "cosine x 100")
    if timed:
        labels = [s["name"] for s in timed]
        axes[1].bar(labels, [s["metrics"]["latency_ms"]["p50"] for s in timed], color="#55a868", label="p50")
        axes[1].scatter(labels, [s["metrics"]["latency_ms"]["p90"] for s in timed], color="k", marker="_", s=400,
                        label="p90", zorder=3)
        axes[1].legend()
        for s in (s for s in timed if quality in s["metrics"]):
            point = (s["metrics"]["latency_ms"]["p50"], 100 * s["metrics"][quality])
            axes[2].scatter(*point)
            axes[2].annotate(s["name"], point, textcoords="offset points", xytext=(4, 4))
    axes[1].set_title("latency (ms)")
    axes[2].set_title(f"{quality_label} vs p50 latency (ms)")
    axes[2].margins(0.25)
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return _figure_svg(fig, plt)


def _html_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(report: dict[str, Any]) -> str:
    g = report["gate"]
    verdict = "PASSED" if g["passed"] else "FAILED"
    gate_rows = [[c["budget"], f"{c['limit']:g}", f"{c['value']:.4g}", "ok" if c["passed"] else "VIOLATED"]
                 for c in g["checks"]]
    sensitivity_html = "".join(f"<h2>Pruning sensitivity: stage <code>{html.escape(stage)}</code></h2>"
                               f"{sensitivity_plot_svg(table)}{_html_table(*_sensitivity_rows(table))}"
                               for stage, table in _sensitivities(report))
    precision_html = "".join(f"<h2>Node precision: stage <code>{html.escape(stage)}</code></h2>{_html_table(header, rows)}"
                             for stage, _, header, rows in _precisions(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgepress: {html.escape(report['name'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
.PASSED{{color:#1a7f37}}.FAILED{{color:#cf222e}}</style></head><body>
<h1>edgepress report: {html.escape(report['name'])}</h1>
<p>Target {html.escape(report['target']['name'])}, {report['target']['threads']} thread(s).
{html.escape(_against(report).replace("`", ""))}</p>
<h2>Stages</h2>{_html_table(columns(report), [_row(s, _metric(report)) for s in report['stages']])}
<h2>Plots</h2>{_plots_svg(report)}
<h2>Every evaluation set</h2>{_html_table(_per_set_header(report), _per_set_rows(report))}
{sensitivity_html}
{precision_html}
<h2>Gate on stage <code>{html.escape(g['stage'])}</code>: <span class="{verdict}">{verdict}</span></h2>
{_html_table(["budget", "limit", "value", "result"], gate_rows) if gate_rows else "<p>No budgets were set.</p>"}
</body></html>
"""


def write_all(report: dict[str, Any], *, out_dir: Path) -> None:
    atomic.write_json(out_dir / "report.json", report)
    for stage, sensitivity in _sensitivities(report):
        atomic.write_text(out_dir / sensitivity_svg_name(stage), sensitivity_plot_svg(sensitivity))
    atomic.write_text(out_dir / "report.md", markdown(report))
    atomic.write_text(out_dir / "report.html", html_page(report))
