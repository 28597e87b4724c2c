"""How a recipe's models are judged: its metric (resolved from "auto" by the data and the model's outputs),
the output a single-output metric reads, a user metric's function. Decided once, before any stage runs, and
refused there in one line when the metric does not fit the outputs or the data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgepress.measure import metrics
from edgepress.core.errors import UserError
from edgepress.measure.metrics import Metric, OutputInfo, Outputs

__all__ = ["Task", "resolve", "metric_of_report"]


@dataclass(frozen=True)
class Task:
    metric: Metric
    output: str | None = None  # the output a single-output metric reads; None: the only one

    @property
    def values(self) -> tuple[metrics.Value, ...]:
        """Every value a stage's metrics may hold: the metric's own, then fidelity's."""
        own = {v.key for v in self.metric.values}
        return self.metric.values + tuple(v for v in metrics.FIDELITY.values if v.key not in own)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(v.key for v in self.values)

    def score(self, dataset: Any, outputs: Outputs, reference: Outputs | None) -> dict[str, Any]:
        """One set's scores: against its targets, and against the reference stage's outputs once it has run."""
        scores: dict[str, Any] = {"samples": int(len(next(iter(outputs.values()))))}
        targets = dataset.targets
        if self.metric.score is not None and targets is not None:
            scores.update(self.metric.score(outputs, targets, self.output))
        if reference is not None:
            reference = aligned(outputs, reference)
            per_output = metrics.per_output_fidelity(outputs, reference)
            scores.update(metrics.fidelity.worst_fidelity(per_output))
            if len(per_output) > 1:
                scores["outputs"] = per_output
            if self.metric.compare is not None:
                scores.update(self.metric.compare(outputs, reference, self.output))
        return scores

    def same_answers(self, outputs: Outputs, host: Outputs) -> float:
        """How far one model's answers on a target match its answers on the host: equal top-1 classes for a
        classifier, else the worst output's mean cosine."""
        host = aligned(outputs, host)
        if self.metric.key == "top1":
            return metrics.classification.agreement(metrics.chosen_output(outputs, self.output),
                                                    metrics.chosen_output(host, self.output))["agreement"]
        found = metrics.per_output_fidelity(outputs, host)
        if not found:  # integer outputs only: the share of samples whose outputs are all equal
            return float(np.mean([np.all(outputs[k] == host[k], axis=tuple(range(1, outputs[k].ndim)))
                                  for k in outputs]))
        return min(v["cosine"] for v in found.values())


def aligned(outputs: Outputs, reference: Outputs) -> Outputs:
    """The reference's outputs under `outputs`' names: by name where they match, else in order (a text encoder's
    torch stage and its ONNX export may name their one output differently)."""
    if set(outputs) <= set(reference) or len(outputs) != len(reference):
        return reference
    return dict(zip(outputs, reference.values()))


def resolve(recipe: Any, outputs: list[OutputInfo], targets: dict[str, np.ndarray] | None) -> Task:
    """The recipe's task for a model with these outputs on data with these targets (the first evaluation set's)."""
    spec = recipe.data
    if spec.output is not None and spec.output not in [o.name for o in outputs]:
        raise UserError(f"data.output {spec.output!r} names no output of the model (it has "
                        f"{', '.join(o.name for o in outputs)})", fix="set data.output to one of those")
    if spec.metric == "auto":
        fitting = metrics.fitting_metrics(outputs, targets, spec.output)
        metric = metrics.METRICS["top1" if "top1" in fitting else "fidelity"]
    elif ":" in spec.metric:
        metric = _user_metric(spec)
    elif spec.metric == "detection" and spec.decode is not None:
        metric = metrics.detection_metric(_decoder(spec.decode))
    else:
        metric = metrics.METRICS[spec.metric]
    problem = metric.fits(outputs, targets, spec.output)
    if problem is None and metric.needs != "reference" and not targets:
        problem = f"{metric.key} needs the set's {metric.needs}, and the evaluation data has none"
    if problem is not None:
        fitting = metrics.fitting_metrics(outputs, targets, spec.output)
        raise UserError(f"data.metric = {metric.key!r} does not fit this model: {problem}",
                        fix=f"use metric = {' or '.join(map(repr, fitting))}" if fitting else
                        "give data whose targets the metric reads, or choose another metric")
    return Task(metric=metric, output=spec.output)


def _decoder(entry: str) -> Callable[[Outputs], list[dict[str, np.ndarray]]]:
    from edgepress.models.zoo import import_entry

    function = import_entry(entry, role="decode")

    def decode(outputs: Outputs) -> list[dict[str, np.ndarray]]:
        try:
            found = list(function(outputs))
        except Exception as exc:  # the user's decoding failing: their bug, in one line
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"decode {entry!r} failed: {type(exc).__name__}: {reason}",
                            fix="make it take the model's outputs (a dict of N-first arrays) and return per-image "
                                "{'boxes': K x 4, 'scores': K, 'labels': K}") from None
        count = len(next(iter(outputs.values())))
        if len(found) != count or not all(isinstance(d, dict) and {"boxes", "scores", "labels"} <= set(d) for d in found):
            raise UserError(f"decode {entry!r} returned {len(found)} items for {count} samples, not one "
                            "{'boxes', 'scores', 'labels'} dict per sample", fix="return one dict per sample")
        return found

    return decode


def _user_metric(spec: Any) -> Metric:
    from edgepress.models.zoo import import_entry

    function: Callable[..., Any] = import_entry(spec.metric, role="metric")

    def checked(outputs: Outputs, targets: dict[str, np.ndarray]) -> float:
        try:
            value = float(function(outputs, targets))
        except Exception as exc:  # the user's metric failing: their bug, in one line
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"metric {spec.metric!r} failed: {type(exc).__name__}: {reason}",
                            fix="make it take (outputs: dict of arrays, targets: dict of arrays) and return a "
                                "number") from None
        if not np.isfinite(value):
            raise UserError(f"metric {spec.metric!r} returned {value}", fix="make it return a finite number")
        return value

    return metrics.user_metric(spec.metric, checked, higher_is_better=bool(spec.higher_is_better))


def metric_of_report(report: dict[str, Any]) -> Metric:
    """The metric a report was judged by: a built-in key, or a user metric as the report describes it."""
    key = report.get("metric", "top1")  # reports written before text models have no "metric"
    if key in metrics.METRICS:
        return metrics.METRICS[key]
    if isinstance(key, str) and ":" in key:
        return metrics.user_metric(key, None, higher_is_better=bool(report.get("metric_higher_is_better", True)))
    return metrics.FIDELITY
