"""One outcome per check `edgepress gate` makes, grouped by target: what JUnit, Markdown and the exit code read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgepress.gate import budgets as gate
from edgepress.report import view as report_view
from edgepress.gate.policy import Policy

# passed and failed as usual; inconclusive: a p50 above its limit whose intervals overlap the baseline's
# (reported, never failing); skipped: a check that does not apply (timings under emulation).
Status = Literal["passed", "failed", "inconclusive", "skipped"]


@dataclass(frozen=True)
class Outcome:
    target: str  # the JUnit testsuite
    stage: str
    check: str  # a budget's name, or "p50 growth"
    status: Status
    message: str
    limit: float | None = None
    value: float | None = None
    note: str | None = None  # a budget read from a noisy run says so (gate.noise_note)

    @property
    def name(self) -> str:
        return f"{self.check} [{self.stage}]"


def _reference(report: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The reference stage's headline metrics, as the run's gate used them."""
    stage = report_view.stage_named(report, report.get("reference_stage", "model"))
    return gate.reference_for(dict(stage["metrics"]) if stage else {}, entry)


def budget_outcomes(report: dict[str, Any], policy: Policy) -> list[Outcome]:
    """Each budget of the policy on its target's numbers for the final stage (gate_policy.check_against has
    made sure every one of them is measured)."""
    final = report_view.final_stage(report)
    measured = report_view.stage_targets(final, report=report)
    found = []
    for target, budgets, _ in policy.every(report_view.primary_target(report)):
        entry = measured.get(target, {})  # a target not measured on this stage may only hold empty budgets
        for check in gate.evaluate(budgets, final=entry, reference=_reference(report, entry),
                                   stage=f"{final['name']} on {target}", user=policy.user):
            found.append(Outcome(target=target, stage=final["name"], check=check.budget,
                                 status="passed" if check.passed else "failed", limit=check.limit, value=check.value,
                                 message=check.line(), note=check.note))
    return found


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == "failed"]
