"""The one table of quality metrics and their budgets.

A recipe's `data.metric` names one METRICS entry (or a user's `package.module:function`). Each entry says what
it needs (the set's labels or targets, or only the reference stage's outputs), which outputs it fits, the values
it puts in a stage's metrics (direction, unit, how they are shown) and the budgets each value offers. Recipe
validation, evaluation, the gate, budgets files, report.json, report.md/html and the progress line all read
this table: a new metric is one entry here plus its function in edgepress/scores/.

Every metric also gets FIDELITY: each float output against the reference's (cosine, SNR, max error), the worst
output's figures as the stage's, so `snr_db_min` gates any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from edgepress.core.schema import Bounds
from edgepress.measure.scores import classification, fidelity, regression, segmentation, text

__all__ = ["Budget", "Value", "Metric", "OutputInfo", "METRICS", "FIDELITY", "SIZE_AND_LATENCY", "ARTIFACT_BUDGETS",
           "TIMED_BUDGETS", "RELATIVE_BUDGETS", "BUILTIN_BUDGETS",
           "budget_named", "value_named", "user_metric", "fitting_metrics", "chosen_output", "detection_metric",
           "per_output_fidelity", "pick_output"]

Rule = Literal["min", "max", "drop", "rise"]
Outputs = dict[str, np.ndarray]  # output name -> N x ...
Targets = dict[str, np.ndarray]  # target name -> N x ... ("labels", "targets", "masks", "boxes", ...)


@dataclass(frozen=True)
class Budget:
    """A [budgets] key: the value it reads and how. "drop"/"rise" compare with the reference stage's value (how
    much worse the shipped model may be), times `scale` (100: points of a share)."""

    name: str
    value: str
    rule: Rule
    bounds: Bounds
    scale: float = 1.0

    def measured(self, value: float, reference: float | None) -> float:
        """The number held to the limit: the value itself, or how much worse than the reference it is."""
        if self.rule in ("min", "max"):
            return value
        if reference is None:
            raise ValueError(f"{self.name} compares with the reference stage, which has no {self.value}")
        return self.scale * (reference - value) if self.rule == "drop" else self.scale * (value - reference)

    def passes(self, measured: float, limit: float) -> bool:
        return measured >= limit if self.rule == "min" else measured <= limit


def _budgets(value: str, *rules: tuple[Rule, Bounds], points: bool = False) -> tuple[Budget, ...]:
    """The budgets of a value by the usual names: <value>_min, _max, and _drop_points (a share's drop in points)
    or _drop_max / _rise_max (in the value's own unit)."""
    names = {"min": f"{value}_min", "max": f"{value}_max",
             "drop": f"{value}_drop_points" if points else f"{value}_drop_max", "rise": f"{value}_rise_max"}
    return tuple(Budget(names[rule], value, rule, bounds, scale=100.0 if points and rule == "drop" else 1.0)
                 for rule, bounds in rules)


SHARE = Bounds(0.0, 1.0)
POINTS = Bounds(0.0, 100.0)
POSITIVE = Bounds(0.0, 1e15)
ANY_REAL = Bounds(-1e15, 1e15)


@dataclass(frozen=True)
class Value:
    """A number a metric puts in a stage's metrics (and each target's, and each evaluation set's)."""

    key: str
    label: str
    higher_is_better: bool
    unit: Literal["share", "cosine", "score", "dB", "target"]  # "target": the targets' own unit (a regressor's MAE)
    budgets: tuple[Budget, ...] = ()

    def show(self, number: float) -> str:
        if self.unit == "share":
            return f"{100 * number:.2f}%"
        if self.unit == "dB":
            return f"{number:.1f} dB"
        return f"{number:.4f}" if self.unit in ("cosine", "score") else f"{number:.4g}"


@dataclass(frozen=True)
class OutputInfo:
    """One model output as check sees it on one sample: its name, shape (batch axis 1) and whether it is float."""

    name: str
    shape: tuple[int, ...]
    floating: bool


@dataclass(frozen=True)
class Metric:
    """A task metric. `score(outputs, targets)` judges against the set's targets; `compare(outputs, reference)`
    against the reference stage's outputs on the same samples. `fits` says why the metric cannot judge these
    outputs and targets (None when it can); `output` is the model output it reads (None: all of them)."""

    key: str
    summary: str
    needs: Literal["labels", "targets", "reference"]
    values: tuple[Value, ...]
    fits: Callable[[list[OutputInfo], Targets | None, str | None], str | None]
    score: Callable[[Outputs, Targets, str | None], dict[str, float]] | None = None
    compare: Callable[[Outputs, Outputs, str | None], dict[str, float]] | None = None
    headline: tuple[str, ...] = ()  # the values shown in tables and the progress line (default: all)

    @property
    def shown(self) -> tuple[Value, ...]:
        return tuple(v for v in self.values if not self.headline or v.key in self.headline)


FIDELITY_VALUES = (
    Value("cosine", "cosine", True, "cosine", _budgets("cosine", ("min", Bounds(-1.0, 1.0)))),
    Value("snr_db", "SNR", True, "dB", _budgets("snr_db", ("min", Bounds(-1000.0, 1000.0)))),
    Value("max_abs_error", "max error", False, "target", _budgets("max_abs_error", ("max", POSITIVE))),
)


def pick_output(outputs: list[OutputInfo] | Outputs, chosen: str | None) -> str:
    """The output a single-output metric reads: the recipe's `data.output`, else the model's only output."""
    names = [o.name for o in outputs] if isinstance(outputs, list) else list(outputs)
    if chosen is not None:
        return chosen
    if len(names) == 1:
        return names[0]
    raise ValueError(f"the model has {len(names)} outputs ({', '.join(names)}); set data.output to the one to score")


def _one(outputs: list[OutputInfo], chosen: str | None) -> OutputInfo | str:
    try:
        name = pick_output(outputs, chosen)
    except ValueError as exc:
        return str(exc)
    found = [o for o in outputs if o.name == name]
    return found[0] if found else f"the model has no output {name!r} (it has {', '.join(o.name for o in outputs)})"


def _fits_classes(outputs, targets, chosen) -> str | None:
    out = _one(outputs, chosen)
    if isinstance(out, str):
        return out
    if len(out.shape) != 2 or out.shape[1] < 2 or not out.floating:
        return (f"top1 reads class scores N x K (K >= 2), and output {out.name!r} is "
                f"{'float' if out.floating else 'integer'} of shape {list(out.shape)}")
    if targets is not None and not _integer_labels(targets, ndim=1):
        return "top1 needs integer class labels, one per sample (an array 'labels' of shape N)"
    return None


def _integer_labels(targets: Targets, *, ndim: int) -> bool:
    labels = targets.get("labels")
    return labels is not None and labels.ndim == ndim and np.issubdtype(labels.dtype, np.integer)


def _fits_float(outputs, targets, chosen) -> str | None:
    if not any(o.floating for o in outputs):
        return "its outputs are all integers, and cosine/SNR compare float values"
    return None


def _fits_regression(outputs, targets, chosen) -> str | None:
    out = _one(outputs, chosen)
    if isinstance(out, str):
        return out
    if not out.floating:
        return f"regression compares float predictions, and output {out.name!r} is an integer"
    if targets is not None and "targets" not in targets:
        return f"regression needs float targets (an array 'targets'), and the data has {', '.join(targets) or 'none'}"
    truth = (targets or {}).get("targets")
    if truth is not None and int(np.prod(truth.shape[1:])) != int(np.prod(out.shape[1:])):
        return (f"regression needs one target per predicted value: output {out.name!r} has "
                f"{list(out.shape[1:])} per sample, the targets {list(truth.shape[1:])}")
    return None


def _fits_segmentation(outputs, targets, chosen) -> str | None:
    out = _one(outputs, chosen)
    if isinstance(out, str):
        return out
    if len(out.shape) != 4 or out.shape[1] < 2 or not out.floating:
        return f"segmentation reads per-pixel class scores N x K x H x W, and output {out.name!r} is {list(out.shape)}"
    if targets is not None and not _integer_labels(targets, ndim=3):
        return "segmentation needs integer masks N x H x W (an array 'labels')"
    return None


def chosen_output(outputs: Outputs, chosen: str | None) -> np.ndarray:
    """The output a one-output metric reads (data.output, else the only one)."""
    return outputs[pick_output(outputs, chosen)]


def _fidelity(outputs: Outputs, reference: Outputs) -> dict[str, float]:
    return fidelity.worst_fidelity(per_output_fidelity(outputs, reference))


def per_output_fidelity(outputs: Outputs, reference: Outputs) -> dict[str, dict[str, float]]:
    return {name: fidelity.output_fidelity(values, reference[name]) for name, values in outputs.items()
            if np.issubdtype(values.dtype, np.floating) and name in reference}


FIDELITY = Metric(
    key="fidelity", summary="each float output against the reference stage's: cosine, SNR (dB), max abs error",
    needs="reference", values=FIDELITY_VALUES, fits=_fits_float,
    compare=lambda out, ref, chosen: _fidelity(out, ref))

METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric(key="top1", summary="classification: top-1 (and top-5) accuracy on labels, top-1 agreement",
           needs="labels", fits=_fits_classes,
           values=(Value("accuracy", "accuracy", True, "share",
                         _budgets("accuracy", ("drop", POINTS), ("min", SHARE), points=True)),
                   Value("top5_accuracy", "top-5 accuracy", True, "share",
                         _budgets("top5_accuracy", ("drop", POINTS), ("min", SHARE), points=True)),
                   Value("agreement", "agreement", True, "share", _budgets("agreement", ("min", SHARE)))),
           headline=("accuracy", "agreement"),
           score=lambda out, t, chosen: classification.accuracy(chosen_output(out, chosen), t["labels"]),
           compare=lambda out, ref, chosen: classification.agreement(chosen_output(out, chosen), chosen_output(ref, chosen))),
    Metric(key="cosine", summary="text embeddings: cosine with the reference's (mean, min, 5th percentile), "
                                 "top-5 neighbour agreement", needs="reference", fits=_fits_float,
           values=(FIDELITY_VALUES[0],
                   Value("cosine_min", "cosine min", True, "cosine"), Value("cosine_p5", "cosine p5", True, "cosine"),
                   Value("top5_agreement", "top-5 agreement", True, "share", _budgets("top5_agreement", ("min", SHARE)))),
           headline=("cosine", "cosine_min", "top5_agreement"),
           compare=lambda out, ref, chosen: text.embedding_similarity(chosen_output(out, chosen), chosen_output(ref, chosen))),
    FIDELITY,
    Metric(key="regression", summary="regression: MAE, RMSE (targets' unit) and R2 on the set's targets",
           needs="targets", fits=_fits_regression,
           values=(Value("mae", "MAE", False, "target", _budgets("mae", ("max", POSITIVE), ("rise", POSITIVE))),
                   Value("rmse", "RMSE", False, "target", _budgets("rmse", ("max", POSITIVE), ("rise", POSITIVE))),
                   Value("r2", "R2", True, "score", _budgets("r2", ("min", ANY_REAL), ("drop", POSITIVE)))),
           score=lambda out, t, chosen: regression.regression_errors(chosen_output(out, chosen), t["targets"])),
    Metric(key="segmentation", summary="segmentation: mean IoU over classes and pixel accuracy on label masks",
           needs="labels", fits=_fits_segmentation,
           values=(Value("miou", "mIoU", True, "share", _budgets("miou", ("drop", POINTS), ("min", SHARE), points=True)),
                   Value("pixel_accuracy", "pixel accuracy", True, "share",
                         _budgets("pixel_accuracy", ("drop", POINTS), ("min", SHARE), points=True))),
           score=lambda out, t, chosen: segmentation.segmentation_scores(chosen_output(out, chosen), t["labels"])),
)}

DETECTION_OUTPUTS = ("boxes", "scores", "labels")  # padded N x K (x 4): what a model with its own decoding returns


def _fits_detection(outputs, targets, chosen) -> str | None:
    names = {o.name for o in outputs}
    if chosen != "decoded" and not set(DETECTION_OUTPUTS) <= names:
        return ("detection reads boxes: outputs 'boxes', 'scores' and 'labels' (padded N x K), or raw heads with "
                "data.decode = 'package.module:function' turning them into per-image boxes")
    if targets is not None and not ({"boxes", "labels"} <= set(targets) and targets["boxes"].ndim == 3):
        return "detection needs target arrays 'boxes' (N x M x 4, xyxy pixels) and 'labels' (N x M, -1 pads)"
    return None


def detection_metric(decode: Callable[[Outputs], list[dict[str, np.ndarray]]] | None = None) -> Metric:
    """COCO mAP of per-image boxes against the targets (pycocotools). `decode` turns the model's raw outputs
    into per-image {'boxes', 'scores', 'labels'}; without it the model returns them itself, padded."""
    from edgepress.measure.scores import detection

    def score(outputs: Outputs, targets: Targets, chosen: str | None) -> dict[str, float]:
        found = decode(outputs) if decode is not None else detection.padded_detections(
            *(outputs[name] for name in DETECTION_OUTPUTS))
        truths = [{"boxes": b[l >= 0], "labels": l[l >= 0]} for b, l in zip(targets["boxes"], targets["labels"])]
        scores = detection.mean_average_precision(found, truths)
        return {key: scores[key] for key in ("map50", "map", "map75", "recall100")}

    return Metric(key="detection", summary="detection: COCO mAP@0.5 and mAP@0.5:0.95 (pycocotools) of boxes, scores "
                                           "and labels (the model's own, or data.decode's) against target boxes",
                  needs="targets", fits=lambda o, t, c: _fits_detection(o, t, "decoded" if decode else c),
                  values=(Value("map50", "mAP@0.5", True, "share",
                                _budgets("map50", ("drop", POINTS), ("min", SHARE), points=True)),
                          Value("map", "mAP@.5:.95", True, "share",
                                _budgets("map", ("drop", POINTS), ("min", SHARE), points=True)),
                          Value("map75", "mAP@0.75", True, "share"), Value("recall100", "AR@100", True, "share")),
                  headline=("map50", "map"), score=score)


METRICS["detection"] = detection_metric()

# The artifact's own budgets: read from the file, the timings and the runner's memory, not from the outputs.
# The ratios are to the run's ONNX reference (recipe.onnx_reference_stage): latency_ratio is judged at its 95%
# interval's upper end (interleaved in one runner, so it holds on a noisy machine); size_ratio is exact.
SIZE_AND_LATENCY = (
    Budget("size_bytes", "size_bytes", "max", Bounds(1, 2**40)),
    Budget("size_ratio_max", "size_ratio", "max", Bounds(0, 1000, low_open=True)),
    Budget("latency_p90_ms", "latency_p90_ms", "max", Bounds(0, 3_600_000, low_open=True)),
    Budget("latency_ratio_max", "latency_ratio", "max", Bounds(0, 1000, low_open=True)),
    Budget("peak_memory_bytes", "peak_memory_bytes", "max", Bounds(1, 2**50)),
    # Distinct operators the shipped graph uses: what a reduced ONNX Runtime build must contain (io/operators.py).
    Budget("operator_count_max", "operator_count", "max", Bounds(1, 100_000)),
)
ARTIFACT_BUDGETS = tuple(b.name for b in SIZE_AND_LATENCY)
TIMED_BUDGETS = ("latency_p90_ms", "latency_ratio_max", "peak_memory_bytes")  # measured by a target's runner
RELATIVE_BUDGETS = ("latency_ratio_max", "size_ratio_max")  # against the ONNX reference


def _all_values() -> dict[str, Value]:
    found: dict[str, Value] = {}
    for metric in METRICS.values():
        for value in metric.values:
            found.setdefault(value.key, value)
    return found


VALUES: dict[str, Value] = _all_values()
BUILTIN_BUDGETS: dict[str, Budget] = {b.name: b for b in SIZE_AND_LATENCY}
BUILTIN_BUDGETS.update({b.name: b for value in VALUES.values() for b in value.budgets})


def budget_named(name: str, custom: Metric | None = None) -> Budget | None:
    if name in BUILTIN_BUDGETS:
        return BUILTIN_BUDGETS[name]
    return next((b for v in (custom.values if custom else ()) for b in v.budgets if b.name == name), None)


def value_named(key: str, custom: Metric | None = None) -> Value | None:
    return VALUES.get(key) or next((v for v in (custom.values if custom else ()) if v.key == key), None)


def user_metric(entry: str, function: Callable[..., Any] | None, *, higher_is_better: bool,
                needs: Literal["targets", "reference"] = "targets") -> Metric:
    """A user's `package.module:function(outputs, targets) -> float` (outputs and targets: dicts of N-first
    arrays), named after the function, with budgets <name>_min/_drop_max (or _max/_rise_max when lower is
    better)."""
    name = entry.rpartition(":")[2]
    rules = (("min", ANY_REAL), ("drop", POSITIVE)) if higher_is_better else (("max", ANY_REAL), ("rise", POSITIVE))
    value = Value(name, name, higher_is_better, "target", _budgets(name, *rules))

    def score(outputs: Outputs, targets: Targets, chosen: str | None) -> dict[str, float]:
        return {name: float(function(outputs, targets))}

    return Metric(key=entry, summary=f"the user's {entry}", needs=needs, values=(value,),
                  fits=lambda outputs, targets, chosen: None, score=score)


def fitting_metrics(outputs: list[OutputInfo], targets: Targets | None, chosen: str | None) -> list[str]:
    """The built-in metrics that can judge these outputs with these targets (a refusal names them)."""
    found = []
    for metric in METRICS.values():
        has_targets = targets is not None and bool(targets)
        if metric.needs != "reference" and not has_targets:
            continue
        if metric.key == "cosine":  # text embeddings: fidelity says the same of any other float output
            continue
        if metric.fits(outputs, targets, chosen) is None:
            found.append(metric.key)
    return found


def usable_budgets(metric: Metric) -> list[str]:
    """The budgets a recipe judged by `metric` may set: size and latency, the metric's, and fidelity's."""
    names = list(ARTIFACT_BUDGETS)
    for value in metric.values + FIDELITY.values:
        names += [b.name for b in value.budgets if b.name not in names]
    return names
