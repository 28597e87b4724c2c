"""`edgepress metrics [--json]`: the metric table, each metric with what it needs, its values and their budgets."""

from __future__ import annotations

import argparse
import json

from edgepress.measure import metrics

HELP = "list the metrics a recipe's data.metric can name, with their values and the budgets each offers"

_RULES = {"min": "at least", "max": "at most", "drop": "fall against the reference at most",
          "rise": "rise against the reference at most"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def table() -> list[dict]:
    """Every metric (fidelity's values come with each), then the artifact's own budgets."""
    rows = []
    for metric in metrics.METRICS.values():
        rows.append({"metric": metric.key, "summary": metric.summary, "needs": metric.needs,
                     "values": [{"key": v.key, "label": v.label, "higher_is_better": v.higher_is_better,
                                 "unit": v.unit, "budgets": [{"name": b.name, "rule": b.rule, "range": str(b.bounds)}
                                                             for b in v.budgets]} for v in metric.values]})
    rows.append({"metric": "(every recipe)", "summary": "the artifact's size and the primary target's latency",
                 "needs": "the ONNX artifact", "values": [
                     {"key": b.value, "label": b.value, "higher_is_better": False, "unit": "bytes" if "size" in b.name
                      else "ms", "budgets": [{"name": b.name, "rule": b.rule, "range": str(b.bounds)}]}
                     for b in metrics.SIZE_AND_LATENCY]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| metric | needs | value | better | budgets |", "|---|---|---|---|---|"]
    for row in rows:
        for index, value in enumerate(row["values"]):
            budgets = ", ".join(f"`{b['name']}` ({_RULES[b['rule']]}, {b['range']})" for b in value["budgets"]) or "–"
            lines.append(f"| {row['metric'] if index == 0 else ''} | {row['needs'] if index == 0 else ''} | "
                         f"`{value['key']}` ({value['unit']}) | {'higher' if value['higher_is_better'] else 'lower'} "
                         f"| {budgets} |")
    lines.append("")
    lines.append("Every metric also reports fidelity to the reference stage (`cosine`, `snr_db`, `max_abs_error`, the "
                 "worst output's), so its budgets apply to any recipe. A user metric `package.module:function` "
                 "offers `<name>_min` and `<name>_drop_max` (or `<name>_max` and `<name>_rise_max` when lower is "
                 "better).")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = table()
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0
