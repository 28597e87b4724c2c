"""One outcome per check `edgepress gate` makes, grouped by target: what JUnit, Markdown and the exit code read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgepress.gating import budgets as gate
from edgepress.gating.policy import Policy
from edgepress.report.model import Report

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


def _reference(report: Report, entry: dict[str, Any]) -> dict[str, Any]:
    """The reference stage's headline metrics, as the run's gate used them."""
    stage = report.stage_named(report.reference_stage)
    return gate.reference_for(stage.metrics.to_json_dict() if stage else {}, entry)


def budget_outcomes(report: Report, policy: Policy) -> list[Outcome]:
    """Each budget of the policy on its target's numbers for the final stage (gate_policy.check_against has
    made sure every one of them is measured)."""
    final = report.final_stage
    measured = report.on_targets(final)
    found = []
    for target, budgets, _ in policy.every(report.primary_target):
        # A target not measured on this stage may only hold empty budgets.
        entry = measured[target].to_json_dict() if target in measured else {}
        for check in gate.evaluate(budgets, final=entry, reference=_reference(report, entry),
                                   stage=f"{final.name} on {target}", user=policy.user):
            found.append(Outcome(target=target, stage=final.name, check=check.budget,
                                 status="passed" if check.passed else "failed", limit=check.limit, value=check.value,
                                 message=check.line(), note=check.note))
    return found


def failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == "failed"]
