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

from edgepress.core.errors import UserError
from edgepress.measure import metrics
from edgepress.recipe import Budgets, _no_paths, parse_budgets
from edgepress.report.model import Report
from edgepress.report.view import metric_of
from edgepress.core.schema import SchemaError, closest, parse, read_toml

LATENCY_BUDGETS = metrics.TIMED_BUDGETS  # read from a target's runner: never from an emulated one


def _needs(budget: str, user: metrics.Metric | None) -> str:
    """Which number of a target's entry a budget reads (the metric table says)."""
    found = metrics.budget_named(budget, user)
    return "latency_ms" if budget == "latency_p90_ms" else found.value if found else budget


@dataclass(frozen=True)
class BudgetsFile:
    """The budgets file's keys beside the recipe's budget keys: per-target tables and the growth limit."""

    targets: dict[str, Any] = field(default_factory=dict)
    max_p50_growth_percent: float | None = None

    def __post_init__(self) -> None:
        if self.max_p50_growth_percent is not None and self.max_p50_growth_percent < 0:
            raise ValueError(f"max_p50_growth_percent must be 0 or more, got {self.max_p50_growth_percent}")


@dataclass(frozen=True)
class Policy:
    budgets: Budgets  # the primary target's, as the recipe's [budgets]
    targets: dict[str, Budgets]  # each target's own
    max_p50_growth_percent: float | None = None
    source: str = "the recipe's budgets"
    user: metrics.Metric | None = None  # the report's user metric, whose budgets these may name

    def every(self, primary: str) -> list[tuple[str, Budgets, str]]:
        """(target, budgets, where they were set) to check: the primary's first, then each target's own."""
        return [(primary, self.budgets, "the top-level budgets")] + [
            (name, budgets, f'[targets."{name}"]') for name, budgets in self.targets.items()]


def _user(report: Report) -> metrics.Metric | None:
    metric = metric_of(report)
    return metric if ":" in metric.key else None


def _budgets_of(table: Any, user: metrics.Metric | None) -> Budgets:
    names = {f.name for f in dataclasses.fields(Budgets) if f.init}
    custom_names = {b.name for v in (user.values if user else ()) for b in v.budgets}
    values = {k: v for k, v in (table or {}).items() if k in names and v is not None}
    return Budgets(**values).with_custom({k: v for k, v in (table or {}).items() if k in custom_names})


def from_report(report: Report) -> Policy:
    """The recipe's budgets as the report recorded them: its `budgets` and `targets[].budgets` (a report from
    before those were written has them read from the limits of the run's own gate checks)."""
    user = _user(report)
    per_target = {t.name: _budgets_of(t.budgets, user) for t in report.targets if t.budgets}
    return Policy(budgets=_budgets_of(report.budgets, user), targets=per_target, user=user)


def load(path: Path, *, report: Report) -> Policy:
    """A budgets file, read for `report` (whose user metric's budgets it may name)."""
    table = read_toml(path, what="budgets file")
    user = _user(report)
    try:
        extra = {k: table[k] for k in ("targets", "max_p50_growth_percent") if k in table}
        top = parse(BudgetsFile, extra, where="", resolve_path=_no_paths)
        overall = parse_budgets({k: v for k, v in table.items() if k not in extra}, where="", user=user)
        targets = {name: parse_budgets(budgets, where=f'targets."{name}"', user=user)
                   for name, budgets in top.targets.items()}
    except SchemaError as exc:  # the top level's `where` is empty: say which file instead
        problem = exc.problem.replace("invalid '': ", "invalid value: ").replace("key '.", "key '")
        raise SchemaError(f"budgets file {path.name}: {problem}", fix=exc.fix) from None
    return Policy(budgets=overall, targets=targets, max_p50_growth_percent=top.max_p50_growth_percent,
                  source=f"budgets file {path.name}", user=user)


def check_against(policy: Policy, report: Report) -> None:
    """Every budget must be one the report can answer: its target measured, not latency under emulation,
    its metric measured on that target's final stage. Said before anything is judged or written."""
    names = report.target_names()
    final = report.final_stage
    measured = {name: entry.to_json_dict() for name, entry in report.on_targets(final).items()}
    for target, budgets, where in policy.every(report.primary_target):
        if target not in names:
            guess = closest(target, names)
            raise UserError(f"{policy.source}: {where}: the report measured nothing on {target!r}",
                            fix=f"did you mean {guess!r}?" if guess else f"the report's targets: {', '.join(names)}")
        entry = measured.get(target, {"emulated": False})
        for budget in budgets.limits():
            key = _needs(budget, policy.user)
            if budget in LATENCY_BUDGETS and entry["emulated"]:
                raise UserError(f"{policy.source}: {where} set {budget}, but {target} is emulated: its timings "
                                "are not latency nor its memory the device's",
                                fix=f"drop {budget} there; gate latency and memory on a real device")
            if key not in entry:
                how = ("set evaluate = true for that target in the recipe"
                       if key not in ("size_bytes", "size_ratio", "latency_ms", "latency_ratio", "peak_memory_bytes")
                       else "time the models there (latency = true) after the ONNX reference, or drop that budget")
                raise UserError(f"{policy.source}: {where} set {budget}, but stage {final.name!r} has no "
                                f"{key} on {target}", fix=how)
