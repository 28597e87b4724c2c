"""The report's "ORT format (ONNX Runtime Mobile)" section: each .ort beside the ONNX model it was converted from.

Two tables per report, built from report.json alone (a stored report renders the same): the files (sizes, operator
counts, conversion settings, the operators config) and the answers and speed (the .ort against its source on every
evaluation set on the host and on each target that evaluated it, and both models' p50 against the ONNX reference
where timed). Only a run with an ort_format stage has the section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from edgepress.report.model import LatencyRatio, Report, Stage, TargetEntry

TITLE = "ORT format (ONNX Runtime Mobile)"
INTRO = ("Each .ort beside the ONNX model it was converted from. The .ort runs under the full onnxruntime build, "
         "here and on each target, not under a reduced build; the operators config is what a reduced build "
         "takes (`--include_ops_by_config`). 'same as source' compares the .ort's answers with its source's on the "
         "same machine: a classifier's share of samples with the same top-1 class, another model's worst output's "
         "mean cosine; the max error is measured on the host only.")
HOST = "host"  # the "where" of the stage's own check: this machine's ONNX Runtime, every sample

FILES_HEADER = ["stage", "from", ".onnx size", ".ort size", "operators .onnx", "operators .ort", "optimisation",
                "platform", "operators config", "converted by"]


@dataclass(frozen=True)
class OrtSection:
    files: list[list[str]]
    answers_header: list[str]
    answers: list[list[str]]


def ort_stages(report: Report) -> list[Stage]:
    return [stage for stage in report.stages if stage.format == "ort"]


def section(report: Report) -> OrtSection | None:
    """The section's tables, or None for a run without an ORT-format stage."""
    stages = ort_stages(report)
    if not stages:
        return None
    reference = report.onnx_reference_stage or "reference"
    header = ["stage", "where", "set", "samples", "same as source", "max error vs source",
              f".onnx p50 vs {reference}", f".ort p50 vs {reference}"]
    return OrtSection(files=[_files_row(report, stage) for stage in stages], answers_header=header,
                      answers=[row for stage in stages for row in _answer_rows(report, stage)])


def _own(stage: Stage) -> Mapping[str, Any]:
    own = stage.metrics.own.get("ort_format")
    return own if isinstance(own, Mapping) else {}


def _source(report: Report, stage: Stage) -> Stage | None:
    name = _own(stage).get("source_stage") or stage.metrics.own.get("converted_from")
    return report.stage_named(name) if isinstance(name, str) else None


def _kib(size_bytes: Any) -> str:
    return f"{size_bytes / 1024:.1f} KiB" if isinstance(size_bytes, (int, float)) else "–"


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) else "–"


def _files_row(report: Report, stage: Stage) -> list[str]:
    own, source = _own(stage), _source(report, stage)
    source_size = own.get("source_size_bytes", source.metrics.size_bytes if source else None)
    config = own.get("config")
    # The config sits beside the .ort in the stage's folder: named from the run folder, as the artifact is.
    config_path = str(PurePosixPath(stage.artifact).parent / config) if isinstance(config, str) else "–"
    return [stage.name, source.name if source else str(own.get("source_stage") or "–"), _kib(source_size),
            _kib(stage.metrics.size_bytes), _count(source.metrics.operator_count if source else None),
            _count(stage.metrics.operator_count), str(own.get("optimization_level", "–")),
            str(own.get("target_platform", "–")), config_path,
            # The ORT format is versioned with ONNX Runtime: the build on the device must read what this one wrote.
            f"onnxruntime {own['onnxruntime']}" if "onnxruntime" in own else "–"]


def _share(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def _error(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "–"


def _answer_rows(report: Report, stage: Stage) -> list[list[str]]:
    """The host's check first (every set, with the max error), then each target: one row per set it evaluated,
    or one row for a target that only timed it; the p50 ratios on each of that target's rows."""
    rows = [[stage.name, HOST, name, _count(found.get("samples")), _share(found.get("same_as_source")),
             _error(found.get("max_abs_error_vs_source")), "–", "–"]
            for name, found in _own(stage).get("evaluation", {}).items() if isinstance(found, Mapping)]
    source = _source(report, stage)
    source_entries = report.on_targets(source) if source is not None else {}
    for target, entry in report.on_targets(stage).items():
        speed = [_ratio(report, source, source_entries.get(target)), _ratio(report, stage, entry)]
        if entry.evaluation:
            rows += [[stage.name, target, name, str(scores.samples), _share(scores.values.get("same_as_source")),
                      "–", *speed] for name, scores in entry.evaluation.items()]
        elif entry.latency_ms is not None:
            rows.append([stage.name, target, "–", "–", "–", "–", *speed])
    return rows


def _ratio(report: Report, stage: Stage | None, entry: TargetEntry | None) -> str:
    if stage is None or entry is None or entry.latency_ms is None:
        return "–"
    if entry.emulated:
        return "emulated"  # timings under emulation are not latency: never shown as such
    if stage.name == report.onnx_reference_stage:
        return "1.00x (the reference)"
    ratio: LatencyRatio | None = entry.latency_ratio
    return f"{ratio.p50:.2f}x [{ratio.ci95[0]:.2f}–{ratio.ci95[1]:.2f}]" if ratio else "–"
