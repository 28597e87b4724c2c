"""Reading report.json back: load it strictly, and see each stage's numbers per target.

Since several targets per recipe, a stage's metrics hold `targets: {name: entry}` (timing, and quality
where measured there) beside the headline keys, which are the primary target's. Older reports have only
the headline keys: they are read as one entry for the primary target, so every consumer sees one shape.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from edgepress.core.errors import UserError
from edgepress.measure.metrics import VALUES

SCHEMA_PREFIX = "edgepress.report/"
SUPPORTED_SCHEMA = f"{SCHEMA_PREFIX}1"
# The artifact's own numbers: the same file ships to every target.
ARTIFACT_KEYS = ("size_bytes", "size_ratio", "size_gzip_bytes", "params", "macs")
# Every value of the metric table (edgepress/measure/metrics.py): a user metric's are read as any other number.
QUALITY_KEYS = tuple(VALUES) + ("same_as_host",)
TIMING_KEYS = ("latency_ms", "p50_ci95_ms", "samples_ms", "runs", "threads", "batch", "latency_ratio",
               "peak_memory_bytes")


def load_report(path: Path, *, role: str = "report") -> dict[str, Any]:
    """report.json as written by `edgepress run`; anything else is a one-line UserError naming `role`."""
    rerun = "pass the report.json that `edgepress run` wrote (runs/<recipe name>/report.json), or rerun it"
    if not path.is_file():
        raise UserError(f"{role} {path} does not exist", fix=rerun)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{role} {path} is not valid JSON ({exc})", fix=rerun) from None
    schema = report.get("schema") if isinstance(report, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise UserError(f"{role} {path} is not an edgepress report (no schema {SUPPORTED_SCHEMA!r})", fix=rerun)
    if schema != SUPPORTED_SCHEMA:
        raise UserError(f"{role} {path} has schema {schema!r}; this edgepress reads {SUPPORTED_SCHEMA!r}",
                        fix="gate it with the edgepress version that wrote it, or rerun the recipe")
    problem = _shape_problem(report)
    if problem:
        raise UserError(f"{role} {path} is damaged: {problem}", fix=rerun)
    return report


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _entry_problem(entry: Any, where: str) -> str | None:
    if not isinstance(entry, dict):
        return f"{where} is not an object"
    latency = entry.get("latency_ms")
    if latency is not None and not (isinstance(latency, dict) and all(_is_number(latency.get(k)) for k in ("p50", "p90"))):
        return f"{where}.latency_ms lacks numbers p50 and p90"
    ci = entry.get("p50_ci95_ms")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)) and ci[0] <= ci[1]):
        return f"{where}.p50_ci95_ms is not [low, high]"
    samples = entry.get("samples_ms")
    if samples is not None and not (isinstance(samples, list) and all(map(_is_number, samples))):
        return f"{where}.samples_ms is not a list of numbers"
    for key in QUALITY_KEYS + ARTIFACT_KEYS:
        if key in entry and not _is_number(entry[key]):
            return f"{where}.{key} is not a number"
    return None


def _shape_problem(report: dict[str, Any]) -> str | None:
    """What a consumer of the report would trip on, said before anything is computed or written."""
    if not isinstance(report.get("name"), str):
        return "'name' is missing"
    stages = report.get("stages")
    if not isinstance(stages, list) or not stages:
        return "'stages' is missing or empty"
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            return f"stages[{index}] has no name"
        where = f"stage {stage['name']!r} metrics"
        problem = _entry_problem(stage.get("metrics"), where)
        if problem:
            return problem
        targets = stage["metrics"].get("targets", {})
        if not isinstance(targets, dict):
            return f"{where}.targets is not an object"
        for name, entry in targets.items():
            problem = _entry_problem(entry, f"{where}.targets[{name!r}]")
            if problem:
                return problem
    gate = report.get("gate", {"checks": []})
    checks = gate.get("checks") if isinstance(gate, dict) else None
    if not isinstance(checks, list) or not all(isinstance(c, dict) and isinstance(c.get("budget"), str)
                                                and _is_number(c.get("limit")) for c in checks):
        return "'gate.checks' is not a list of budget checks"
    return None


def primary_target(report: dict[str, Any]) -> str:
    listed = report.get("targets")
    if isinstance(listed, list) and listed and isinstance(listed[0], dict) and "name" in listed[0]:
        return str(listed[0]["name"])
    target = report.get("target")
    return str(target.get("name", "local")) if isinstance(target, dict) else "local"


def target_names(report: dict[str, Any]) -> list[str]:
    """Every target the report measured anything on, the recipe's order first (the primary leads)."""
    names = [str(t["name"]) for t in report.get("targets", []) if isinstance(t, dict) and "name" in t]
    names = names or [primary_target(report)]
    for stage in report["stages"]:
        names += [name for name in stage["metrics"].get("targets", {}) if name not in names]
    return names


def _declared_emulated(report: dict[str, Any], name: str) -> bool:
    for target in report.get("targets", []):
        if isinstance(target, dict) and target.get("name") == name:
            return bool(target.get("emulated", False))
    return name.startswith("qemu-")  # what edgepress.targets calls emulated, for a target the report did not list


def stage_targets(stage: dict[str, Any], *, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{target name: that target's numbers for this stage, with the artifact's size and MACs}.

    Each entry has "emulated"; latency_ms, p50_ci95_ms and samples_ms only where timed there. A stage
    without a `targets` table (a torch stage, or a report from before targets) has one entry, the primary
    target's, built from the headline keys."""
    metrics = stage["metrics"]
    shared = {key: metrics[key] for key in ARTIFACT_KEYS if key in metrics}
    found: dict[str, dict[str, Any]] = {}
    primary = primary_target(report)
    if primary not in metrics.get("targets", {}):
        headline = {key: metrics[key] for key in QUALITY_KEYS + TIMING_KEYS if key in metrics}
        found[primary] = {**shared, **headline, "emulated": _declared_emulated(report, primary)}
    for name, entry in metrics.get("targets", {}).items():
        found[name] = {**shared, **entry, "emulated": bool(entry.get("emulated", _declared_emulated(report, name)))}
    order = target_names(report)
    return dict(sorted(found.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def latency_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """An entry's latency, or None where it was not timed or was timed under emulation (never latency)."""
    return None if entry.get("emulated") else entry.get("latency_ms")


def final_stage(report: dict[str, Any]) -> dict[str, Any]:
    """The stage the budgets gate: the one the run's gate names, else the last."""
    gated = report.get("gate", {}).get("stage") if isinstance(report.get("gate"), dict) else None
    for stage in report["stages"]:
        if stage["name"] == gated:
            return stage
    return report["stages"][-1]


def stage_named(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((stage for stage in report["stages"] if stage["name"] == name), None)
