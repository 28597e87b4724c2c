"""report.json as frozen dataclasses: `Report.to_json_dict()` is what `edgepress run` writes, `read_report` reads
any report.json back into the same objects.

The schema is versioned: SCHEMA, written once here, names the shape `to_json_dict` writes, and is bumped whenever
that shape changes, with a reader kept for every older one. What each version holds:

- edgepress.report/2 (written now): /1 as it was written since several targets per recipe, with every key that
  /1 wrote only sometimes now always there: `targets` (the recipe's targets, primary first, each with its own
  budgets), `budgets`, `onnx_reference_stage` (null when none), `metric`, `metric_values`, `warnings`, and a
  per-target table (`metrics.targets`) on every timed stage whose entries each say `emulated`.
  Since ORT-format stages (2026-12-07) a stage may also hold `operator_count`, a stage's `format` may be `ort`,
  and a target entry `same_as_source`: optional keys that an earlier /2 reader keeps as open ones (a stage
  kind's own numbers, a runner's), so the shape stays /2.
- edgepress.report/1 has two shapes. Since several targets per recipe (2026-12-01) it is /2's shape with some of
  those keys missing. Before that, a report names one `target` and no `targets` or `budgets` (the budgets are
  only in the gate's checks), and a stage's latency is only its headline `latency_ms`, holding the runs, threads,
  batch and target it was timed with. `read_report` upgrades both to /2's objects: the one target becomes
  `targets`, the checks' limits become `budgets`, and a timed stage's headline timing becomes its primary
  target's entry.

The structure is typed; what is open-ended stays a mapping: a metric's values (`values`: the metric table's keys
and a user metric's own), a stage kind's own numbers (`StageMetrics.own`: quantization, parity, training, ...)
and what a target's runner adds beyond the timing the gate reads (`TargetEntry.more`: profile, device, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from edgepress.core.errors import UserError
from edgepress.measure.metrics import VALUES
from edgepress.targets import is_emulated

SCHEMA = "edgepress.report/2"
SCHEMA_PREFIX = SCHEMA.rpartition("/")[0] + "/"
SCHEMA_V1 = f"{SCHEMA_PREFIX}1"
READABLE = (SCHEMA, SCHEMA_V1)
# Quality numbers whatever the metric: every value of the metric table, and a target's answers against the host's.
BUILTIN_VALUES = frozenset(VALUES) | {"same_as_host", "same_as_source"}
# Not latency: a target whose timings are emulated. A report that does not list a target says so by its name.


class ReportShapeError(ValueError):
    """A report (or a part of one) not of its schema's shape: `where` is the field, as a path from the top."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where} {problem}" if where else problem)
        self.where = where
        self.problem = problem


def _spread(kind: str) -> Any:
    """A mapping field whose keys sit beside the typed fields in report.json: "values" takes the quality numbers,
    "more" everything else the schema leaves open."""
    return field(default_factory=dict, metadata={"spread": kind})


def _written_null(default: Any = None) -> Any:
    """An optional field that report.json holds as null rather than leaving out."""
    return field(default=default, metadata={"null": True})


def _unless_empty(factory: Any) -> Any:
    """A field report.json leaves out while it is empty."""
    return field(default_factory=factory, metadata={"omit_empty": True})


# ------------------------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class MetricValue:
    """What one value of the report's metric means (report.json's `metric_values`)."""

    key: str
    label: str
    higher_is_better: bool
    unit: str  # "share", "cosine", "score", "dB" or "target" (the targets' own unit), as metrics.Value has it


@dataclass(frozen=True)
class SessionSettings:
    denormals: str
    disabled_optimizers: tuple[str, ...]


@dataclass(frozen=True)
class TargetInfo:
    """A target of the recipe as the run used it (report.json's `targets`, the primary first)."""

    name: str
    threads: int
    emulated: bool
    evaluate: bool
    budgets: Mapping[str, float]  # the target's own budgets, on its numbers for the final stage
    session: SessionSettings | None = None  # ONNX Runtime session settings other than the defaults


@dataclass(frozen=True, kw_only=True)
class Latency:
    """`latency_ms`: one run's time in ms over the timed runs. A stage's headline copy also says the runs,
    threads, batch and target it was timed with."""

    p50: float
    p90: float
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    cv: float | None = None
    runs: int | None = None
    threads: int | None = None
    batch: int | None = None
    target: str | None = None
    more: Mapping[str, Any] = _spread("more")


@dataclass(frozen=True, kw_only=True)
class LatencyRatio:
    """`latency_ratio`: the p50 over the ONNX reference's, both timed interleaved in one runner."""

    p50: float
    ci95: tuple[float, float]
    epochs: int | None = None
    reference_stage: str
    reference_p50_ms: float | None = None
    reference_p50_ci95_ms: tuple[float, float] | None = None
    more: Mapping[str, Any] = _spread("more")


@dataclass(frozen=True, kw_only=True)
class EvaluationSet:
    """One evaluation set's scores (a stage's or a target's `evaluation[set name]`)."""

    samples: int
    values: Mapping[str, float] = _spread("values")
    outputs: Mapping[str, Mapping[str, float]] = _unless_empty(dict)  # per output, for a model with several
    more: Mapping[str, Any] = _spread("more")


@dataclass(frozen=True, kw_only=True)
class TargetEntry:
    """What one target measured of one stage (`metrics.targets[target name]`).

    `Report.on_targets(stage)` gives these with the stage's artifact numbers filled in (the same file ships to
    every target), which report.json keeps on the stage alone."""

    emulated: bool  # timed under emulation: its timings are not latency
    latency_ms: Latency | None = None
    p50_ci95_ms: tuple[float, float] | None = None
    runs: int | None = None
    peak_memory_bytes: int | None = None
    profile: Mapping[str, Any] | None = None  # where the time goes, per op type and node (not under emulation)
    samples_ms: tuple[float, ...] | None = None
    threads: int | None = None
    batch: int | None = None
    latency_ratio: LatencyRatio | None = None
    values: Mapping[str, float] = _spread("values")  # quality measured there (the primary's: the host's)
    evaluation: Mapping[str, EvaluationSet] = _unless_empty(dict)
    reference_scores: Mapping[str, float] | None = None  # the reference stage's on the same (first) samples
    size_bytes: int | None = None
    size_gzip_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    size_ratio: float | None = None
    operator_count: int | None = None
    more: Mapping[str, Any] = _spread("more")  # the runner's own: warmup_runs, device, thread_settings, ...

    @property
    def timed_latency(self) -> Latency | None:
        """The latency, or None where it was not timed or was timed under emulation (never latency)."""
        return None if self.emulated else self.latency_ms

    def to_json_dict(self) -> dict[str, Any]:
        """The entry as report.json holds it: one flat object, what the gate's budgets read."""
        return _to_json(self)


@dataclass(frozen=True, kw_only=True)
class StageMetrics:
    """A stage's numbers: the headline (the primary target's), the artifact's, each evaluation set's, each
    target's, and the stage kind's own."""

    values: Mapping[str, float] = _spread("values")  # quality on the first evaluation set (the host's)
    size_bytes: int
    size_gzip_bytes: int | None = None
    params: int
    macs: int
    evaluation: Mapping[str, EvaluationSet] = field(default_factory=dict)
    # Distinct operators the graph uses (an .ort's: what a reduced build needs); None for a torch model.
    operator_count: int | None = None
    own: Mapping[str, Any] = _spread("more")  # the stage kind's: quantization, parity, train, sensitivity, ...
    size_ratio: float | None = None  # over the ONNX reference's size, for the stages after it
    targets: Mapping[str, TargetEntry] | None = None  # None for a stage no target timed (a torch stage)
    latency_ms: Latency | None = None  # the primary target's, unless it is emulated
    latency_ratio: LatencyRatio | None = None
    peak_memory_bytes: int | None = None
    warnings: tuple[str, ...] = _unless_empty(tuple)

    def to_json_dict(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    artifact: str  # relative to the run folder
    format: str  # "torch", "onnx" or "ort" (ONNX Runtime's own format)
    sha256: str
    seconds: float
    metrics: StageMetrics

    @classmethod
    def from_json_dict(cls, table: Mapping[str, Any], *, metric_values: Iterable[str]) -> Stage:
        """A stage record as the pipeline keeps it; `metric_values`: the keys of the run's metric's values.
        A record of another shape is a ReportShapeError naming the field."""
        return _parse(cls, copy.deepcopy(dict(table)), "", _Context.of(metric_values))

    def to_json_dict(self) -> dict[str, Any]:
        return _to_json(self)


@dataclass(frozen=True)
class GateCheck:
    budget: str
    limit: float
    value: float
    passed: bool
    note: str | None = _written_null()  # why the verdict may not be the model's (a noisy run)
    target: str | None = None  # a target's own budget; None: the top-level budgets, on the primary target


@dataclass(frozen=True)
class Gate:
    """The run's verdict on the budgets, on one stage (the last)."""

    stage: str
    checks: tuple[GateCheck, ...]
    _WRITTEN: ClassVar[tuple[str, ...]] = ("passed", "violations")  # in report.json, derived from the checks

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def violations(self) -> tuple[GateCheck, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def to_json_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "stage": self.stage,
                "violations": [{"budget": c.budget, "limit": c.limit, "value": c.value}
                               | ({"target": c.target} if c.target is not None else {}) for c in self.violations],
                "checks": [_to_json(check) for check in self.checks]}

    def _check_written(self, raw: Mapping[str, Any], where: str) -> None:
        if not isinstance(raw["passed"], bool):
            raise ReportShapeError(_join(where, "passed"), f"must be true or false, got {_show(raw['passed'])}")
        if raw["passed"] != self.passed:
            raise ReportShapeError(_join(where, "passed"), f"is {_show(raw['passed'])}, but the checks "
                                   f"{'all passed' if self.passed else 'have a violation'}")
        if not isinstance(raw["violations"], list):
            raise ReportShapeError(_join(where, "violations"), "must be a list")


@dataclass(frozen=True, kw_only=True)
class Report:
    """One run's report.json."""

    recipe: str  # the recipe file's path
    name: str  # the recipe's name
    reference_stage: str  # what quality is judged against
    # Every later ONNX stage is timed interleaved with it and sized against it; null when no ONNX stage follows.
    onnx_reference_stage: str | None = field(metadata={"null": True})
    metric: str  # the metric table's key, or a user metric's "module:function"
    metric_values: tuple[MetricValue, ...]
    metric_higher_is_better: bool | None = None  # a user metric's direction
    metric_output: str | None = None  # the output a single-output metric reads
    targets: tuple[TargetInfo, ...]  # the primary first
    budgets: Mapping[str, float]  # the recipe's top-level budgets: the primary target's, and the artifact's
    stages: tuple[Stage, ...]
    gate: Gate
    _WRITTEN: ClassVar[tuple[str, ...]] = ("target", "warnings")  # in report.json, derived from the above

    def __post_init__(self) -> None:
        if not self.stages:
            raise ReportShapeError("stages", "is empty")
        if not self.targets:
            raise ReportShapeError("targets", "is empty")

    # -------------------------------------------------------------------- what readers of a report look up

    @property
    def primary_target(self) -> str:
        return self.targets[0].name

    @property
    def warnings(self) -> tuple[str, ...]:
        """Each stage's warnings, naming the stage."""
        return tuple(f"stage {stage.name}: {line}" for stage in self.stages for line in stage.metrics.warnings)

    @property
    def final_stage(self) -> Stage:
        """The stage the budgets gate: the one the run's gate names, else the last."""
        return self.stage_named(self.gate.stage) or self.stages[-1]

    def stage_named(self, name: str) -> Stage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def target_names(self) -> list[str]:
        """Every target the report measured anything on, the recipe's order first (the primary leads)."""
        names = [target.name for target in self.targets]
        for stage in self.stages:
            names += [name for name in (stage.metrics.targets or {}) if name not in names]
        return names

    def emulated(self, target: str) -> bool:
        listed = next((t for t in self.targets if t.name == target), None)
        return listed.emulated if listed is not None else is_emulated(target)

    def on_targets(self, stage: Stage) -> dict[str, TargetEntry]:
        """{target name: that target's numbers for this stage, with the artifact's size, params and MACs}, in
        target_names' order. A stage no target timed (a torch stage) has one entry, the primary target's, made
        of its headline numbers."""
        metrics = stage.metrics
        shared = {key: getattr(metrics, key) for key in ARTIFACT_KEYS}
        found: dict[str, TargetEntry] = {}
        tables = metrics.targets or {}
        if self.primary_target not in tables:
            found[self.primary_target] = TargetEntry(
                emulated=self.emulated(self.primary_target), latency_ms=metrics.latency_ms,
                latency_ratio=metrics.latency_ratio, peak_memory_bytes=metrics.peak_memory_bytes,
                values=dict(metrics.values), **shared)
        for name, entry in tables.items():
            found[name] = dataclasses.replace(entry, **{k: v for k, v in shared.items() if getattr(entry, k) is None})
        order = self.target_names()
        return dict(sorted(found.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))

    # -------------------------------------------------------------------------------------------- JSON

    def to_json_dict(self) -> dict[str, Any]:
        """report.json's object, of schema SCHEMA."""
        fields = _to_json(self)
        head = {key: fields.pop(key) for key in ("recipe", "name", "reference_stage", "onnx_reference_stage",
                                                  "metric", "metric_values", "metric_higher_is_better",
                                                  "metric_output") if key in fields}
        primary = self.targets[0]
        return {"schema": SCHEMA, **head, "target": {"name": primary.name, "threads": primary.threads},
                "targets": fields["targets"], "budgets": fields["budgets"], "stages": fields["stages"],
                "warnings": list(self.warnings), "gate": self.gate.to_json_dict()}

    def _check_written(self, raw: Mapping[str, Any], where: str) -> None:
        target = raw["target"]
        if not isinstance(target, dict):
            raise ReportShapeError("target", f"must be an object, got {_show(target)}")
        if target.get("name") != self.primary_target:
            raise ReportShapeError("target.name", f"is {_show(target.get('name'))}, but the first of targets is "
                                   f"{self.primary_target!r}")
        if not (isinstance(raw["warnings"], list) and all(isinstance(line, str) for line in raw["warnings"])):
            raise ReportShapeError("warnings", "must be a list of strings")


ARTIFACT_KEYS = ("size_bytes", "size_gzip_bytes", "params", "macs", "operator_count", "size_ratio")  # the file's: the same everywhere


# ------------------------------------------------------------------------------------------------ reading


def is_report_json(table: Any) -> bool:
    """Whether a JSON value says it is an edgepress report (of any version, readable here or not)."""
    schema = table.get("schema") if isinstance(table, dict) else None
    return isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX)


_RERUN = "pass the report.json that `edgepress run` wrote (runs/<recipe name>/report.json), or rerun it"


def read_report(source: Path | str | Mapping[str, Any], *, role: str = "report") -> Report:
    """A report.json (a path, or its parsed JSON), of any schema in READABLE, as a Report; a report of /1 is
    upgraded to /2's objects. Anything else is a one-line UserError naming `role` and the file, with the fix."""
    if isinstance(source, Mapping):
        label, table = role, copy.deepcopy(dict(source))  # the Report shares nothing with the caller's dict
    else:
        path = Path(source)
        label = f"{role} {path}"
        if not path.is_file():
            raise UserError(f"{label} does not exist", fix=_RERUN)
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{label} is not valid JSON ({exc})", fix=_RERUN) from None
        except RecursionError:
            raise UserError(f"{label} is not valid JSON (nested too deeply)", fix=_RERUN) from None
    if not is_report_json(table):
        raise UserError(f"{label} is not an edgepress report (no schema {SCHEMA!r})", fix=_RERUN)
    schema = table["schema"]
    if schema not in READABLE:
        raise UserError(f"{label} has schema {schema!r}; this edgepress reads {' and '.join(map(repr, READABLE))}",
                        fix="gate it with the edgepress version that wrote it, or rerun the recipe with this one")
    try:
        table = _upgrade_v1(dict(table)) if schema == SCHEMA_V1 else dict(table)
        table.pop("schema")
        return _parse(Report, table, "", _Context.of(_metric_keys(table)))
    except ReportShapeError as exc:
        raise UserError(f"{label} is damaged: {exc}", fix=_RERUN) from None


@dataclass(frozen=True)
class _Context:
    """What parsing a stage needs from its report: which keys beside the typed ones are quality numbers."""

    user: frozenset[str]  # the report's own metric values beyond the metric table's (a user metric's)

    @staticmethod
    def of(metric_values: Iterable[str]) -> _Context:
        return _Context(user=frozenset(metric_values) - BUILTIN_VALUES)


def _metric_keys(table: Mapping[str, Any]) -> list[str]:
    values = table.get("metric_values")
    if not isinstance(values, list):
        return []
    return [v["key"] for v in values if isinstance(v, dict) and isinstance(v.get("key"), str)]


def _upgrade_v1(table: dict[str, Any]) -> dict[str, Any]:
    """A /1 report's object in /2's shape, filling what /1 left out from what it holds; what is malformed is
    left for the parser to name."""
    from edgepress.measure.task import Task, metric_of_report

    table.setdefault("metric", "top1")  # reports written before text models judged classifiers alone
    if "metric_values" not in table and isinstance(table["metric"], str):
        values = Task(metric=metric_of_report(table)).values
        table["metric_values"] = [{"key": v.key, "label": v.label, "higher_is_better": v.higher_is_better,
                                   "unit": v.unit} for v in values]
    table.setdefault("onnx_reference_stage", None)
    gate = table.get("gate")
    checks = gate.get("checks") if isinstance(gate, dict) else None
    checks = [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []
    if "budgets" not in table:  # the limits of the run's own checks were its budgets
        table["budgets"] = {c["budget"]: c["limit"] for c in checks if "target" not in c and "budget" in c}
    target = table.get("target")
    if "targets" not in table and isinstance(target, dict) and isinstance(target.get("name"), str):
        name = target["name"]
        table["targets"] = [{"name": name, "threads": target.get("threads", 1),
                             "emulated": is_emulated(name), "evaluate": False,
                             "budgets": {c["budget"]: c["limit"] for c in checks if c.get("target") == name}}]
    listed = table.get("targets")
    listed = {t["name"]: t for t in listed if isinstance(t, dict) and "name" in t} if isinstance(listed, list) else {}
    primary = target["name"] if isinstance(target, dict) and "name" in target else next(iter(listed), None)

    def emulated(name: str) -> bool:
        return bool(listed[name].get("emulated", False)) if name in listed else is_emulated(name)

    stages = table.get("stages")
    for stage in stages if isinstance(stages, list) else []:
        metrics = stage.get("metrics") if isinstance(stage, dict) else None
        if not isinstance(metrics, dict):
            continue
        stage["metrics"] = metrics = dict(metrics)
        tables = metrics.get("targets")
        if isinstance(tables, dict):
            metrics["targets"] = {name: ({"emulated": emulated(name), **entry}
                                         if isinstance(entry, dict) and "emulated" not in entry else entry)
                                  for name, entry in tables.items()}
        elif "targets" not in metrics and isinstance(metrics.get("latency_ms"), dict) and primary is not None:
            metrics["targets"] = {primary: _headline_entry(metrics, emulated=emulated(primary))}
    table.setdefault("warnings", [line for stage in (stages if isinstance(stages, list) else [])
                                  if isinstance(stage, dict) and isinstance(stage.get("metrics"), dict)
                                  for line in (stage["metrics"].get("warnings") or [])])
    return table


def _headline_entry(metrics: dict[str, Any], *, emulated: bool) -> dict[str, Any]:
    """A report from before targets timed a stage on its one target only, and kept that timing as the stage's
    headline: the target's entry, as a /2 report holds it. The headline keeps its latency (as /2 has it too)."""
    latency = dict(metrics["latency_ms"])
    entry: dict[str, Any] = {"emulated": emulated}
    entry["latency_ms"] = {k: v for k, v in latency.items() if k not in ("runs", "threads", "batch", "target")}
    for key in ("p50_ci95_ms", "samples_ms", "runs", "threads", "batch"):  # entry-level in /2
        if key in metrics:
            entry[key] = metrics.pop(key)
        elif key in latency:
            entry[key] = latency[key]
    for key in ("latency_ratio", "peak_memory_bytes"):
        if key in metrics:
            entry[key] = metrics[key]
    entry.update({k: v for k, v in metrics.items() if k in BUILTIN_VALUES and _is_number(v)})
    return entry


# ------------------------------------------------------------------------------------------------ the parser


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _parse(cls: type, table: Any, where: str, ctx: _Context) -> Any:
    """Dataclass `cls` from a JSON object: its typed fields by name, spread fields from the keys left over."""
    if not isinstance(table, dict):
        raise ReportShapeError(where, f"must be an object, got {_show(table)}")
    hints = _hints(cls)
    rest = dict(table)
    raw = {}
    for key in getattr(cls, "_WRITTEN", ()):
        if key not in rest:
            raise ReportShapeError(_join(where, key), "is missing")
        raw[key] = rest.pop(key)
    values: dict[str, Any] = {}
    spread: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if "spread" in f.metadata:
            spread[f.metadata["spread"]] = f.name
            continue
        place = _join(where, f.name)
        if f.name in rest:
            values[f.name] = _convert(hints[f.name], rest.pop(f.name), place, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ReportShapeError(place, "is missing")
    if "values" in spread:
        found = {}
        for key, value in list(rest.items()):
            if key in BUILTIN_VALUES:
                if not _is_number(value):
                    raise ReportShapeError(_join(where, key), f"must be a number, got {_show(value)}")
                found[key] = rest.pop(key)
            elif key in ctx.user and _is_number(value):  # a user metric's value; its name may be anything
                found[key] = rest.pop(key)
        values[spread["values"]] = found
    if "more" in spread:
        values[spread["more"]] = rest
    elif rest:
        raise ReportShapeError(_join(where, next(iter(rest))), f"is unknown (no key of {SCHEMA})")
    try:
        made = cls(**values)
    except ReportShapeError as exc:
        raise ReportShapeError(_join(where, exc.where), exc.problem) from None
    if raw:
        made._check_written(raw, where)
    return made


def _convert(tp: Any, value: Any, where: str, ctx: _Context) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):  # only X | None here
        if value is None:
            return None
        (option,) = [a for a in args if a is not type(None)]
        return _convert(option, value, where, ctx)
    if origin is tuple:
        if len(args) == 2 and args[1] is not Ellipsis:  # an interval
            if not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))
                    and value[0] <= value[1]):
                raise ReportShapeError(where, f"is not [low, high], got {_show(value)}")
            return (value[0], value[1])
        if not isinstance(value, list):
            raise ReportShapeError(where, f"must be a list, got {_show(value)}")
        return tuple(_convert(args[0], item, f"{where}[{index}]", ctx) for index, item in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise ReportShapeError(where, f"must be an object, got {_show(value)}")
        return {key: _convert(args[1], item, f"{where}[{key!r}]", ctx) for key, item in value.items()}
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, where, ctx)
    if tp is bool:
        if not isinstance(value, bool):
            raise ReportShapeError(where, f"must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportShapeError(where, f"must be an integer, got {_show(value)}")
        return value
    if tp is float:
        if not _is_number(value):
            raise ReportShapeError(where, f"must be a number, got {_show(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ReportShapeError(where, f"must be a string, got {_show(value)}")
        return value
    raise TypeError(f"report schema type {tp!r} at {where} is not supported")


# ------------------------------------------------------------------------------------------------ writing


def _to_json(value: Any) -> Any:
    """A typed part as report.json holds it: fields in declaration order, a spread field's keys in its place,
    an unset optional field left out (unless it is written as null), copies of everything open-ended."""
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if "spread" in f.metadata:
                out.update(_to_json(item))
            elif (item is None and not f.metadata.get("null")) or (f.metadata.get("omit_empty") and not item):
                continue
            else:
                out[f.name] = _to_json(item)
        return out
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    return value
