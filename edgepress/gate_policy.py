"""What `edgepress gate` holds a report to: budgets for the primary target and for each target, and the
p50 growth allowed against a baseline.

By default the policy is the recipe's, as the report recorded it, so `edgepress gate report.json` repeats
the run's own verdict. A budgets file replaces it as a whole (what the file says is what is gated):

    size_bytes = 2_000_000            # like the recipe's [budgets]: the primary target's, and the artifact's
    agreement_min = 0.98
    max_p50_growth_percent = 10       # with --baseline; the command line's flag wins

    [targets."qemu-aarch64:cortex-a53"]   # a target's own budgets, on that target's numbers
    agreement_min = 0.99
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepress import report_view
from edgepress.errors import UserError
from edgepress.recipe import Budgets
from edgepress.schema import SchemaError, closest, parse, read_toml

# Which number of a target's entry each budget reads.
NEEDS = {"size_bytes": "size_bytes", "latency_p90_ms": "latency_ms", "accuracy_drop_points": "accuracy",
         "agreement_min": "agreement", "cosine_min": "cosine", "top5_agreement_min": "top5_agreement"}
LATENCY_BUDGETS = ("latency_p90_ms",)


@dataclass(frozen=True)
class BudgetsFile(Budgets):
    """The budgets file's top level: the recipe's budget keys, plus per-target tables and the growth limit."""

    targets: dict[str, Any] = field(default_factory=dict)
    max_p50_growth_percent: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_p50_growth_percent is not None and self.max_p50_growth_percent < 0:
            raise ValueError(f"max_p50_growth_percent must be 0 or more, got {self.max_p50_growth_percent}")


@dataclass(frozen=True)
class Policy:
    budgets: Budgets  # the primary target's, as the recipe's [budgets]
    targets: dict[str, Budgets]  # each target's own
    max_p50_growth_percent: float | None = None
    source: str = "the recipe's budgets"

    def every(self, primary: str) -> list[tuple[str, Budgets, str]]:
        """(target, budgets, where they were set) to check: the primary's first, then each target's own."""
        return [(primary, self.budgets, "the top-level budgets")] + [
            (name, budgets, f'[targets."{name}"]') for name, budgets in self.targets.items()]


def _budgets_of(table: Any) -> Budgets:
    names = {f.name for f in dataclasses.fields(Budgets)}
    values = {k: v for k, v in (table or {}).items() if k in names and v is not None}
    return Budgets(**values)


def from_report(report: dict[str, Any]) -> Policy:
    """The recipe's budgets as the report recorded them: its `budgets` and `targets[].budgets`, or, in a
    report from before those were written, the limits of the run's own gate checks."""
    if isinstance(report.get("budgets"), dict):
        per_target = {t["name"]: _budgets_of(t.get("budgets")) for t in report.get("targets", [])
                      if isinstance(t, dict) and t.get("budgets")}
        return Policy(budgets=_budgets_of(report["budgets"]), targets=per_target)
    checks = report.get("gate", {}).get("checks", []) if isinstance(report.get("gate"), dict) else []
    overall = {c["budget"]: c["limit"] for c in checks if "target" not in c}
    per_target: dict[str, dict[str, Any]] = {}
    for check in (c for c in checks if "target" in c):
        per_target.setdefault(check["target"], {})[check["budget"]] = check["limit"]
    return Policy(budgets=_budgets_of(overall), targets={k: _budgets_of(v) for k, v in per_target.items()})


def load(path: Path) -> Policy:
    table = read_toml(path, what="budgets file")

    def no_paths(value: str) -> Path:
        raise AssertionError("budgets hold no paths")

    try:
        top = parse(BudgetsFile, table, where="", resolve_path=no_paths)
        targets = {name: parse(Budgets, budgets, where=f'targets."{name}"', resolve_path=no_paths)
                   for name, budgets in top.targets.items()}
    except SchemaError as exc:  # the top level's `where` is empty: say which file instead
        problem = exc.problem.replace("invalid '': ", "invalid value: ")
        raise SchemaError(f"budgets file {path.name}: {problem}", fix=exc.fix) from None
    overall = Budgets(**{f.name: getattr(top, f.name) for f in dataclasses.fields(Budgets)})
    return Policy(budgets=overall, targets=targets, max_p50_growth_percent=top.max_p50_growth_percent,
                  source=f"budgets file {path.name}")


def check_against(policy: Policy, report: dict[str, Any]) -> None:
    """Every budget must be one the report can answer: its target measured, not latency under emulation,
    its metric measured on that target's final stage. Said before anything is judged or written."""
    names = report_view.target_names(report)
    final = report_view.final_stage(report)
    measured = report_view.stage_targets(final, report=report)
    primary = report_view.primary_target(report)
    for target, budgets, where in policy.every(primary):
        if target not in names:
            guess = closest(target, names)
            raise UserError(f"{policy.source}: {where}: the report measured nothing on {target!r}",
                            fix=f"did you mean {guess!r}?" if guess else f"the report's targets: {', '.join(names)}")
        entry = measured.get(target, {"emulated": False})
        for budget, key in NEEDS.items():
            if getattr(budgets, budget) is None:
                continue
            if budget in LATENCY_BUDGETS and entry["emulated"]:
                raise UserError(f"{policy.source}: {where} set {budget}, but {target} is emulated: its timings "
                                "are not latency", fix=f"drop {budget} there; gate latency on a real device")
            if key not in entry:
                how = ("set evaluate = true for that target in the recipe" if key in report_view.QUALITY_KEYS
                       else "time the models there (latency = true), or drop that budget")
                raise UserError(f"{policy.source}: {where} set {budget}, but stage {final['name']!r} has no "
                                f"{key} on {target}", fix=how)
