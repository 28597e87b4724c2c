"""A report against a baseline report of the same recipe: p50 latency judged on confidence intervals, size.

The p50 rule, with limit f = 1 + max_p50_growth_percent / 100, per stage and target timed in both:

- regression: the new p50's 95% interval lies wholly above f times the baseline's, i.e. new low > f * baseline
  high. Even at the ends of both intervals the model slowed by more than the allowed growth. Fails the gate.
- inconclusive: the new p50 exceeds f * baseline p50, but the intervals overlap (new low <= f * baseline high):
  noise on either run could explain the difference. Reported, does not fail the gate; more runs, or a
  quieter machine, narrow the intervals and decide.
- pass: the new p50 is within f * baseline p50.

A stage timed against the run's ONNX reference in both reports (latency_ratio, see recipe.onnx_reference_stage)
is judged by the same rule on its p50 ratio to the reference and that ratio's interval, not on its p50: the ratio
was timed interleaved in one runner, so it carries over between a busy CI machine and a quiet one, or two CI
machines of different speeds, where absolute p50s do not. The reference stage itself is judged on its p50.

A side without an interval (a report from before intervals were recorded) cannot show a regression: above the
limit it is inconclusive. Timings under emulation are never compared (skipped). Size is compared and reported
per stage, without a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepress.core.errors import UserError
from edgepress.gating.verdicts import Outcome
from edgepress.report.model import Report, TargetEntry

DEFAULT_MAX_P50_GROWTH_PERCENT = 10.0
P50Verdict = Literal["pass", "regression", "inconclusive"]


def judge(*, baseline_p50_ms: float, baseline_ci95_ms: tuple[float, float] | None, p50_ms: float,
          ci95_ms: tuple[float, float] | None, max_growth_percent: float) -> P50Verdict:
    factor = 1.0 + max_growth_percent / 100.0
    if p50_ms <= factor * baseline_p50_ms:
        return "pass"
    if baseline_ci95_ms is not None and ci95_ms is not None and ci95_ms[0] > factor * baseline_ci95_ms[1]:
        return "regression"
    return "inconclusive"


@dataclass(frozen=True)
class P50Change:
    stage: str
    target: str
    baseline_p50_ms: float
    p50_ms: float
    baseline_ci95_ms: tuple[float, float] | None
    ci95_ms: tuple[float, float] | None
    max_growth_percent: float
    verdict: P50Verdict
    against: str | None = None  # the reference stage when the numbers are p50 ratios to it, else None (p50 ms)

    @property
    def growth_percent(self) -> float:
        return 100.0 * (self.p50_ms / self.baseline_p50_ms - 1.0)

    def describe(self) -> str:
        def ci(interval: tuple[float, float] | None) -> str:
            return f"[{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "[no interval]"

        why = {"pass": "within the limit",
               "regression": "its interval lies wholly above the allowed growth of the baseline's: a regression",
               "inconclusive": "above the limit, but the intervals overlap: inconclusive (not failing)"}[self.verdict]
        what, unit = (f"p50 ratio to {self.against}", "") if self.against else ("p50", " ms")
        return (f"{what} {self.baseline_p50_ms:.4g} -> {self.p50_ms:.4g}{unit} ({self.growth_percent:+.1f}%, limit "
                f"+{self.max_growth_percent:g}%), 95% CI {ci(self.baseline_ci95_ms)} -> {ci(self.ci95_ms)}{unit}: {why}")


@dataclass(frozen=True)
class SizeChange:
    stage: str
    baseline_bytes: int
    size_bytes: int

    @property
    def growth_percent(self) -> float:
        return 100.0 * (self.size_bytes / self.baseline_bytes - 1.0) if self.baseline_bytes else 0.0


@dataclass(frozen=True)
class Comparison:
    p50: tuple[P50Change, ...]
    emulated: tuple[tuple[str, str], ...]  # (stage, target) timed in both, under emulation: not compared
    sizes: tuple[SizeChange, ...]


def _interval(entry: TargetEntry) -> tuple[float, float] | None:
    ci = entry.p50_ci95_ms
    return (float(ci[0]), float(ci[1])) if ci else None


def _judged_numbers(base: TargetEntry, entry: TargetEntry):
    """(reference stage or None, (baseline p50, interval), (p50, interval)): p50 ratios to the same ONNX reference
    where both entries have one, p50 ms otherwise."""
    old, new = base.latency_ratio, entry.latency_ratio
    if old is not None and new is not None and old.reference_stage == new.reference_stage:
        return (new.reference_stage, (float(old.p50), tuple(map(float, old.ci95))),
                (float(new.p50), tuple(map(float, new.ci95))))
    return (None, (float(base.latency_ms.p50), _interval(base)), (float(entry.latency_ms.p50), _interval(entry)))


def _setting(entry: TargetEntry, key: str) -> int | None:
    """threads or batch: on the entry since targets, inside a stage's headline latency_ms before."""
    value = getattr(entry, key)
    return value if value is not None else getattr(entry.latency_ms, key)


def _check_same_recipe(report: Report, baseline: Report) -> None:
    fix = "pass the report.json of an earlier run of the same recipe as --baseline"
    if baseline.name != report.name:
        raise UserError(f"the baseline is a report of recipe {baseline.name!r}, not {report.name!r}", fix=fix)
    if baseline.metric != report.metric:
        raise UserError(f"the baseline measures {baseline.metric!r}, the report {report.metric!r}", fix=fix)


def compare(report: Report, baseline: Report, *, max_growth_percent: float) -> Comparison:
    _check_same_recipe(report, baseline)
    changes, emulated, sizes = [], [], []
    for stage in report.stages:
        old = baseline.stage_named(stage.name)
        if old is None:
            continue
        sizes.append(SizeChange(stage=stage.name, baseline_bytes=int(old.metrics.size_bytes),
                                size_bytes=int(stage.metrics.size_bytes)))
        before = baseline.on_targets(old)
        for target, entry in report.on_targets(stage).items():
            base = before.get(target)
            if base is None or entry.latency_ms is None or base.latency_ms is None:
                continue
            if entry.emulated or base.emulated:
                emulated.append((stage.name, target))
                continue
            for key in ("threads", "batch"):
                if _setting(base, key) is not None and _setting(entry, key) is not None \
                        and _setting(base, key) != _setting(entry, key):
                    raise UserError(f"stage {stage.name!r} on {target} was timed with {key} = "
                                    f"{_setting(entry, key)}, its baseline with {_setting(base, key)}: their p50s "
                                    "do not compare", fix=f"rerun the baseline with the same {key}")
            against, (baseline_p50, baseline_ci), (p50, ci) = _judged_numbers(base, entry)
            verdict = judge(baseline_p50_ms=baseline_p50, baseline_ci95_ms=baseline_ci, p50_ms=p50, ci95_ms=ci,
                            max_growth_percent=max_growth_percent)
            changes.append(P50Change(stage=stage.name, target=target, baseline_p50_ms=baseline_p50, p50_ms=p50,
                                     baseline_ci95_ms=baseline_ci, ci95_ms=ci, max_growth_percent=max_growth_percent,
                                     verdict=verdict, against=against))
    if not changes and not emulated:
        raise UserError("the baseline has no stage timed on a target that the report also timed",
                        fix="pass a baseline report of the same recipe whose ONNX stages were timed")
    return Comparison(p50=tuple(changes), emulated=tuple(emulated), sizes=tuple(sizes))


def outcomes(comparison: Comparison) -> list[Outcome]:
    status = {"pass": "passed", "regression": "failed", "inconclusive": "inconclusive"}
    found = [Outcome(target=c.target, stage=c.stage, check="p50 growth", status=status[c.verdict],
                     message=c.describe(), limit=c.max_growth_percent, value=c.growth_percent)
             for c in comparison.p50]
    found += [Outcome(target=target, stage=stage, check="p50 growth", status="skipped",
                      message="emulated timings are not latency: never compared") for stage, target in comparison.emulated]
    return found
