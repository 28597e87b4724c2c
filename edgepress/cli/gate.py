"""`edgepress gate REPORT.json`: a finished run's report held to budgets and, optionally, to a baseline
report; JUnit XML and a Markdown summary for CI. Exit 0 pass, 1 a budget violated or a p50 regression,
2 bad input (nothing is written then)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgepress.core import atomic
from edgepress.gating import summary as gate_summary
from edgepress.gating import junit
from edgepress.gating import regression
from edgepress.gating import verdicts
from edgepress.gating.release import check_growth_option, gate_release
from edgepress.core.errors import UserError
from edgepress.running.folder import check_output_file

HELP = "gate a run's report.json on budgets and against a baseline report; JUnit XML and Markdown for CI"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="report.json of the run to gate")
    parser.add_argument("--budgets", type=Path, help="a TOML budgets file (top level and [targets.\"NAME\"] tables) "
                                                     "instead of the recipe's budgets recorded in the report")
    parser.add_argument("--baseline", type=Path, help="report.json of an earlier run of the same recipe")
    parser.add_argument("--max-p50-growth-percent", type=float, metavar="N",
                        help="p50 growth allowed against --baseline, judged on 95%% intervals (default: the budgets "
                             f"file's max_p50_growth_percent, else {regression.DEFAULT_MAX_P50_GROWTH_PERCENT:g})")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML here (one testsuite per target)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write a Markdown summary here (for a PR comment)")


def _check_outputs(args: argparse.Namespace) -> None:
    outputs = [p for p in (args.junit, args.markdown) if p is not None]
    for flag, path in (("--junit", args.junit), ("--markdown", args.markdown)):
        if path is not None:
            check_output_file(path, flag=flag, inputs=(args.report, args.baseline, args.budgets))
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise UserError("--junit and --markdown name the same file", fix="give each its own path")


def run(args: argparse.Namespace) -> int:
    # Everything that can fail on bad input is read and checked before anything is written.
    check_growth_option(args.max_p50_growth_percent, has_baseline=args.baseline is not None)
    _check_outputs(args)
    result = gate_release(args.report, budgets=args.budgets, baseline=args.baseline,
                          max_p50_growth_percent=args.max_p50_growth_percent)
    report, outcomes, policy, comparison = result.report, list(result.outcomes), result.policy, result.comparison

    if args.junit is not None:
        junit.write(args.junit, outcomes, recipe=report.name, targets=report.target_names())
    if args.markdown is not None:
        atomic.write_text(args.markdown, gate_summary.markdown(
            report, outcomes, policy_source=policy.source, comparison=comparison,
            baseline_label=str(args.baseline) if args.baseline else None))

    for o in outcomes:
        if o.status == "failed" and o.check == "p50 growth":
            print(f"edgepress: p50 regression: stage {o.stage} on {o.target}: {o.message}", file=sys.stderr)
        elif o.status == "failed":
            print(f"edgepress: budget violated: {o.check} = {o.value:.4g} (limit {o.limit:g}) on {o.target}"
                  + (f" ({o.note})" if o.note else ""), file=sys.stderr)
        elif o.note:
            print(f"edgepress: budget held: {o.check} on {o.target} ({o.note})", file=sys.stderr)
        elif o.status == "inconclusive":
            print(f"edgepress: p50 inconclusive (not failing): stage {o.stage} on {o.target}: {o.message}",
                  file=sys.stderr)
    failed = verdicts.failed(outcomes)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("failed", "inconclusive", "skipped")}
    written = [f"{label} {path}" for label, path in (("junit", args.junit), ("markdown", args.markdown)) if path]
    print(f"gate {'FAILED' if failed else 'passed'} on stage {report.final_stage.name}: "
          f"{len(outcomes)} checks, {counts['failed']} failed, {counts['inconclusive']} inconclusive, "
          f"{counts['skipped']} skipped" + (f"; wrote {', '.join(written)}" if written else ""))
    return 1 if failed else 0
