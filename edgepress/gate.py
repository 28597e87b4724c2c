"""Budgets on the shipped model: exit 0 when all hold, 1 when any is violated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgepress import metrics
from edgepress.errors import UserError
from edgepress.recipe import Budgets


@dataclass(frozen=True)
class Check:
    budget: str
    limit: float
    value: float
    passed: bool


def evaluate(budgets: Budgets, *, final: dict[str, Any], reference: dict[str, Any], stage: str,
             user: metrics.Metric | None = None) -> list[Check]:
    """Every budget set in `budgets`, held to `final`'s numbers (and the reference stage's, for a drop or rise)."""
    checks: list[Check] = []
    for name, limit in budgets.limits().items():
        budget = metrics.budget_named(name, user)
        if budget is None:
            raise UserError(f"budget {name} belongs to no metric this edgepress knows",
                            fix="check the budget's name against the recipe's data.metric")
        value = _value(final, budget.value)
        if value is None:
            raise UserError(f"budget {name} needs {budget.value}, which stage {stage!r} does not measure",
                            fix="end the recipe with an ONNX stage (export or ptq), or drop that budget"
                            if budget.value in ("size_bytes", "latency_p90_ms") else
                            "use a budget of the values the stage measures, or drop that budget")
        base = _value(reference, budget.value)
        if budget.rule in ("drop", "rise") and base is None:
            raise UserError(f"budget {name} compares with the reference stage, which has no {budget.value}",
                            fix="set reference_stage to a stage that is evaluated, or use a budget that is absolute")
        measured = budget.measured(value, base)
        checks.append(Check(name, limit, measured, budget.passes(measured, limit)))
    return checks


def _value(numbers: dict[str, Any], key: str) -> float | None:
    if key == "latency_p90_ms":
        return numbers["latency_ms"]["p90"] if isinstance(numbers.get("latency_ms"), dict) else None
    return numbers.get(key)


def reference_for(reference: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The reference stage's metrics to judge `measured` by: a target that evaluated only the first N samples
    is compared with the reference's accuracy on those same samples."""
    if "reference_scores" in measured:
        return {**reference, **measured["reference_scores"]}
    if "reference_accuracy" in measured:  # a report written before any-metric scoring
        return {**reference, "accuracy": measured["reference_accuracy"]}
    return reference


def summary(checks: list[Check], *, stage: str) -> dict[str, Any]:
    return {
        "passed": all(c.passed for c in checks),
        "stage": stage,
        "violations": [{"budget": c.budget, "limit": c.limit, "value": c.value} for c in checks if not c.passed],
        "checks": [asdict(c) for c in checks],
    }
