"""The gate's Markdown summary, sized for a pull-request comment: verdict, what failed, the checks, the
comparison with the baseline, and the per-target table folded away."""

from __future__ import annotations

from edgepress.gating.regression import Comparison
from edgepress.gating.verdicts import Outcome
from edgepress.report import writer as report
from edgepress.report.model import Report

RESULT = {"passed": "ok", "failed": "FAILED", "inconclusive": "inconclusive", "skipped": "skipped"}


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.6g}"


def _check_rows(outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        limit = f"+{o.limit:g}%" if o.check == "p50 growth" and o.limit is not None else _number(o.limit)
        value = f"{o.value:+.1f}%" if o.check == "p50 growth" and o.value is not None else _number(o.value)
        rows.append([o.target, o.check, o.stage, limit, value, RESULT[o.status]])
    return rows


def _ci(interval: tuple[float, float] | None) -> str:
    return f" [{interval[0]:.3f}–{interval[1]:.3f}]" if interval else ""


def _timing(change, value: float) -> str:
    return f"{value:.3f}x {change.against}" if change.against else f"{value:.3f} ms"


def _comparison_lines(comparison: Comparison, *, baseline_label: str) -> list[str]:
    lines = ["", f"### Against the baseline ({baseline_label})", ""]
    if comparison.p50:
        limit = comparison.p50[0].max_growth_percent
        lines += [f"p50 may grow by {limit:g}% at most; a regression is declared only when the new p50's 95% "
                  f"interval lies wholly above {1 + limit / 100:g} x the baseline's (overlapping intervals: "
                  "inconclusive). A stage timed against the ONNX reference in both runs is judged on its p50 ratio "
                  "to it (x), which carries over between machines; the others on p50 ms.", ""]
        rows = [[c.stage, c.target, f"{_timing(c, c.baseline_p50_ms)}{_ci(c.baseline_ci95_ms)}",
                 f"{_timing(c, c.p50_ms)}{_ci(c.ci95_ms)}", f"{c.growth_percent:+.1f}%", c.verdict]
                for c in comparison.p50]
        lines += report.markdown_table(["stage", "target", "baseline p50 [95% CI]", "p50 [95% CI]", "change",
                                        "verdict"], rows)
    if comparison.emulated:
        lines += ["", "Not compared (timed under emulation, not latency): "
                  + ", ".join(f"{stage} on {target}" for stage, target in comparison.emulated) + "."]
    if comparison.sizes:
        rows = [[s.stage, f"{s.baseline_bytes:,}", f"{s.size_bytes:,}", f"{s.growth_percent:+.1f}%"]
                for s in comparison.sizes]
        lines += ["", "Size (bytes):", ""] + report.markdown_table(["stage", "baseline", "now", "change"], rows)
    return lines


def markdown(run: Report, outcomes: list[Outcome], *, policy_source: str,
             comparison: Comparison | None, baseline_label: str | None) -> str:
    failures = [o for o in outcomes if o.status == "failed"]
    unsure = [o for o in outcomes if o.status == "inconclusive"]
    verdict = "FAILED" if failures else "PASSED"
    stage = run.final_stage.name
    lines = [f"## edgepress gate: {run.name}: {verdict}", "",
             f"Budgets ({policy_source}) on stage `{stage}`"
             + (f"; p50 and size against the baseline {baseline_label}." if comparison else "; no baseline.")]
    for title, listed in (("Failed", failures), ("Inconclusive (not failing)", unsure)):
        if listed:
            lines += ["", f"**{title}:**", ""] + [f"- `{o.target}` {o.name}: {o.message}" for o in listed]
    lines += [""]
    lines += (report.markdown_table(["target", "check", "stage", "limit", "value", "result"], _check_rows(outcomes))
              if outcomes else ["No budgets were set and no baseline was given: nothing was checked."])
    if comparison is not None:
        lines += _comparison_lines(comparison, baseline_label=baseline_label or "baseline")
    lines += ["", "<details><summary>Every stage on each target</summary>", ""]
    lines += report.markdown_table(report.target_header(run), report.target_rows(run))
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
