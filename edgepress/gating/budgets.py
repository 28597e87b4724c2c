"""Budgets on the shipped model: exit 0 when all hold, 1 when any is violated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgepress.measure import metrics
from edgepress.core.errors import UserError
from edgepress.recipe import Budgets


# An absolute latency budget read from a run this spread out is a verdict on the machine's neighbours as much as
# on the model: it still passes or fails, and says so (latency_ratio_max is what holds on such a machine).
NOISY_P90_OVER_P50 = 1.5


@dataclass(frozen=True)
class Check:
    budget: str
    limit: float
    value: float
    passed: bool
    note: str | None = None  # why the verdict may not be the model's (a noisy run), shown beside it

    def line(self) -> str:
        verdict = "ok" if self.passed else "violated"
        return f"{self.budget} = {self.value:.6g} (limit {self.limit:g}): {verdict}" + (
            f" ({self.note})" if self.note else "")


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
                            fix="end the recipe with an ONNX stage (export or ptq), timed on a target that is not "
                                "emulated, after its ONNX reference, or drop that budget"
                            if name in metrics.ARTIFACT_BUDGETS else
                            "use a budget of the values the stage measures, or drop that budget")
        base = _value(reference, budget.value)
        if budget.rule in ("drop", "rise") and base is None:
            raise UserError(f"budget {name} compares with the reference stage, which has no {budget.value}",
                            fix="set reference_stage to a stage that is evaluated, or use a budget that is absolute")
        measured = budget.measured(value, base)
        checks.append(Check(name, limit, measured, budget.passes(measured, limit),
                            note=noise_note(final) if budget.value == "latency_p90_ms" else None))
    return checks


def noise_note(numbers: dict[str, Any]) -> str | None:
    """A warning for an absolute latency figure from a run whose spread says the machine was busy."""
    latency = numbers.get("latency_ms")
    if not isinstance(latency, dict) or not latency.get("p50"):
        return None
    spread = latency["p90"] / latency["p50"]
    if spread <= NOISY_P90_OVER_P50:
        return None
    return (f"noisy run: p90 is {spread:.1f}x p50 (over {NOISY_P90_OVER_P50:g}x), so this verdict may be the "
            "machine's; latency_ratio_max, timed interleaved with the reference, holds on a busy machine")


def _value(numbers: dict[str, Any], key: str) -> float | None:
    if key == "latency_p90_ms":
        return numbers["latency_ms"]["p90"] if isinstance(numbers.get("latency_ms"), dict) else None
    if key == "latency_ratio":  # judged at the interval's upper end: passes only if the model surely is fast enough
        ratio = numbers.get("latency_ratio")
        return ratio["ci95"][1] if isinstance(ratio, dict) else None
    return numbers.get(key)


def reference_for(reference: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The reference stage's metrics to judge `measured` by: a target that evaluated only the first N samples
    is compared with the reference's accuracy on those same samples."""
    if "reference_scores" in measured:
        return {**reference, **measured["reference_scores"]}
    if "reference_accuracy" in measured:  # a report written before any-metric scoring
        return {**reference, "accuracy": measured["reference_accuracy"]}
    return reference
