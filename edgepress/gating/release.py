"""A finished run's report held to a policy (the recipe's budgets, or a budgets file) and, optionally, to a
baseline report: the verdict `edgepress gate` prints and `edgepress.gating` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepress.core.errors import UserError
from edgepress.gating import policy as gate_policy
from edgepress.gating import regression, verdicts
from edgepress.report.model import Report, read_report


@dataclass(frozen=True)
class GateResult:
    report: Report
    policy: gate_policy.Policy
    outcomes: tuple[verdicts.Outcome, ...]  # one per budget and target, then one per p50 against the baseline
    comparison: regression.Comparison | None  # None without a baseline

    @property
    def passed(self) -> bool:
        return not verdicts.failed(list(self.outcomes))


def check_growth_option(max_p50_growth_percent: float | None, *, has_baseline: bool) -> None:
    if max_p50_growth_percent is not None:
        if not has_baseline:
            raise UserError("--max-p50-growth-percent needs --baseline", fix="pass --baseline OLD_REPORT.json, "
                            "or drop --max-p50-growth-percent")
        if max_p50_growth_percent < 0:
            raise UserError(f"--max-p50-growth-percent {max_p50_growth_percent:g} is negative",
                            fix="pass 0 or more, e.g. --max-p50-growth-percent 10")


def gate_release(report: Report | Path, *, budgets: Path | None = None, baseline: Report | Path | None = None,
                 max_p50_growth_percent: float | None = None) -> GateResult:
    """Everything is read and checked before a verdict: a bad file or option is a UserError, not a failed gate."""
    check_growth_option(max_p50_growth_percent, has_baseline=baseline is not None)
    report = report if isinstance(report, Report) else read_report(report)
    policy = gate_policy.load(budgets, report=report) if budgets else gate_policy.from_report(report)
    gate_policy.check_against(policy, report)
    outcomes = verdicts.budget_outcomes(report, policy)
    comparison = None
    if baseline is not None:
        baseline = baseline if isinstance(baseline, Report) else read_report(baseline, role="baseline")
        growth = next((value for value in (max_p50_growth_percent, policy.max_p50_growth_percent) if value is not None),
                      regression.DEFAULT_MAX_P50_GROWTH_PERCENT)
        comparison = regression.compare(report, baseline, max_growth_percent=growth)
        outcomes += regression.outcomes(comparison)
    return GateResult(report=report, policy=policy, outcomes=tuple(outcomes), comparison=comparison)
