"""Budgets on the shipped model: exit 0 when all hold, 1 when any is violated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgepress.errors import UserError
from edgepress.recipe import Budgets


@dataclass(frozen=True)
class Check:
    budget: str
    limit: float
    value: float
    passed: bool


def evaluate(budgets: Budgets, *, final: dict[str, Any], reference: dict[str, Any], stage: str) -> list[Check]:
    checks: list[Check] = []

    def need(key: str, budget: str) -> Any:
        if key not in final:
            raise UserError(f"budget {budget} needs {key}, which stage {stage!r} does not measure",
                            fix="end the recipe with an ONNX stage (export or ptq), or drop that budget")
        return final[key]

    if budgets.size_bytes is not None:
        value = need("size_bytes", "size_bytes")
        checks.append(Check("size_bytes", budgets.size_bytes, value, value <= budgets.size_bytes))
    if budgets.latency_p90_ms is not None:
        value = need("latency_ms", "latency_p90_ms")["p90"]
        checks.append(Check("latency_p90_ms", budgets.latency_p90_ms, value, value <= budgets.latency_p90_ms))
    if budgets.accuracy_drop_points is not None:
        drop = 100.0 * (reference["accuracy"] - need("accuracy", "accuracy_drop_points"))
        checks.append(Check("accuracy_drop_points", budgets.accuracy_drop_points, drop, drop <= budgets.accuracy_drop_points))
    for budget, key in (("agreement_min", "agreement"), ("cosine_min", "cosine"),
                        ("top5_agreement_min", "top5_agreement")):
        limit = getattr(budgets, budget)
        if limit is not None:
            value = need(key, budget)
            checks.append(Check(budget, limit, value, value >= limit))
    return checks


def reference_for(reference: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The reference stage's metrics to judge `measured` by: a target that evaluated only the first N samples
    is compared with the reference's accuracy on those same samples."""
    if "reference_accuracy" not in measured:
        return reference
    return {**reference, "accuracy": measured["reference_accuracy"]}


def summary(checks: list[Check], *, stage: str) -> dict[str, Any]:
    return {
        "passed": all(c.passed for c in checks),
        "stage": stage,
        "violations": [{"budget": c.budget, "limit": c.limit, "value": c.value} for c in checks if not c.passed],
        "checks": [asdict(c) for c in checks],
    }
