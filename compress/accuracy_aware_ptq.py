"""`accuracy_aware_ptq`: the fastest INT8 model that keeps a stated accuracy, on the recipe's target.

1. Candidates: every scheme with fast integer kernels on the target, times every calibration
   method. Each is quantized (ranges calibrated once per method, then cached), compared with FP32
   on held-out calibration images, and timed on the target interleaved with FP32.
2. A candidate that misses the goal, but is faster than the fastest one that meets it, gets node
   fallback: each compute node is scored by how much the output error falls when it alone stays
   in FP32, and bisection finds the fewest top-scored nodes to keep in FP32.
3. The fastest model that meets the goal and beats FP32 is the output; if none does, a one-line error.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgepress.measure import metrics
from edgepress.io.arrays import ArraySet
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.compress.quant.static import compute_nodes, node_precision_map
from edgepress.core.errors import UserError
from edgepress.measure.metrics import usable_budgets
from edgepress.core.schema import SAMPLES, SEEDS, bounded, closest, setting, within
from edgepress.measure.task import Task
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

Scheme = Literal["u8s8", "s8s8", "u8u8"]
Method = Literal["minmax", "entropy", "percentile"]
MIN_VALIDATION_SAMPLES = 200


@dataclass(frozen=True)
@bounded
class AccuracyAwarePtqSettings:
    min_agreement: float | None = setting(
        None, help="goal: the least share, in (0, 1], of top-1 predictions equal to FP32's, on the validation samples")
    max_accuracy_drop_points: float | None = setting(
        None, help="goal: FP32 top-1 minus INT8 top-1, in points, at most this, on the same samples")
    goal: dict[str, float] = setting(
        default_factory=dict,
        help="any model's goal, as budgets of the recipe's metric against FP32 on the validation samples (names as "
             "`edgepress metrics` lists them): {snr_db_min = 30}, {mae_rise_max = 0.5}, {map50_drop_points = 1}, ...")
    schemes: tuple[Scheme, ...] = setting(
        (), help="the schemes to search (u8s8, s8s8, u8u8); empty: every scheme with fast kernels on the target")
    calibration_methods: tuple[Method, ...] = setting(
        ("percentile", "minmax"), help="the calibration methods to search, each with every scheme (minmax, entropy, "
                                       "percentile)")
    percentile: float = setting(99.999, help='calibration method "percentile": the percentile, in (90, 100], of each '
                                             "activation's values its range covers")
    calibration_samples: int = within(*SAMPLES, default=512,
                                      help="calibration samples (of a seeded shuffle) that set activation ranges")
    validation_samples: int = within(*SAMPLES, default=1000,
                                     help="samples the goal is checked on: calibration samples after the first "
                                          "calibration_samples of the shuffle, never used to calibrate")
    sensitivity_samples: int = within(*SAMPLES, default=128,
                                      help="validation samples on which each node's gain from staying in FP32 is "
                                           "scored, for node fallback")
    fallback_candidates: int = within(1, 100, default=2,
                                      help="how many of the fastest candidates that miss the goal get node fallback")
    max_fp32_nodes: int | None = within(0, 10**6, default=None,
                                        help="node fallback keeps at most this many nodes in FP32; unset: any number")
    nodes_to_exclude: tuple[str, ...] = setting((), help="ONNX node names always kept in FP32, whatever the search "
                                                         "finds")
    latency_rounds: int = within(1, 1000, default=8,
                                 help="rounds of interleaved timing of the candidates and FP32 on the target")
    latency_runs_per_round: int = within(1, 100000, default=30, help="timed runs of each model in every round")
    seed: int = within(*SEEDS, default=0,
                       help="seeds the shuffle that splits the calibration set into calibration and validation")
    choose_conv_kernels: bool = setting(
        True, help="the chosen model's convs then steered to their fastest INT8 kernels, timed here, bit-exact (as "
                   "ptq's choose_conv_kernels); only where the recipe's first target is this machine")

    def __post_init__(self) -> None:
        if self.min_agreement is None and self.max_accuracy_drop_points is None and not self.goal:
            raise ValueError("set min_agreement and/or max_accuracy_drop_points (classifiers) or goal = {budget = "
                             "limit, ...} (any metric): the goal the search must meet")
        for name, limit in self.goal.items():
            budget = metrics.BUILTIN_BUDGETS.get(name)
            if budget is None or name in metrics.ARTIFACT_BUDGETS:
                guess = closest(name, [n for n in metrics.BUILTIN_BUDGETS if n not in metrics.ARTIFACT_BUDGETS])
                raise ValueError(f"goal names {name!r}, no budget of a metric" + (f": did you mean {guess!r}?" if guess else ""))
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not budget.bounds.holds(limit):
                raise ValueError(f"goal {name} = {limit!r} must be a number in {budget.bounds}")
        if self.min_agreement is not None and not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement is a share in (0, 1], got {self.min_agreement}")
        if not self.calibration_methods:
            raise ValueError("calibration_methods must name at least one method")

    def meets(self, score: dict[str, float]) -> bool:
        """Whether a _Workbench.score result meets the goal (it holds each goal budget's measured number)."""
        return ((self.min_agreement is None or score["agreement"] >= self.min_agreement)
                and (self.max_accuracy_drop_points is None
                     or score["accuracy_drop_points"] <= self.max_accuracy_drop_points)
                and all(metrics.BUILTIN_BUDGETS[name].passes(score[name], limit) for name, limit in self.goal.items()))


@dataclass(frozen=True)
class Candidate:
    name: str
    settings: PtqSettings


def candidates(settings: AccuracyAwarePtqSettings, *, isa, warn: Callable[[str], None]) -> list[Candidate]:
    slow = isa.slow_schemes()
    schemes = list(settings.schemes) or [s for s in ("u8s8", "s8s8", "u8u8") if s not in slow]
    for scheme in settings.schemes:
        if scheme in slow:
            warn(f"warning: {scheme} has no fast kernel on this target ({slow[scheme]}); searched anyway")
    found = []
    for scheme in schemes:
        variants = [("", {"saturation_guard": "off"})]
        if scheme == "u8s8" and isa.u8s8_saturates:
            # Two ways around int16 saturation: uint8 weights where inputs may be negative, or 7-bit weights.
            variants = [("+guard", {"saturation_guard": "uint8_weights"}),
                        ("+reduce_range", {"saturation_guard": "off", "reduce_range": True})]
        for suffix, options in variants:
            for method in settings.calibration_methods:
                found.append(Candidate(name=f"{scheme}{suffix} {method}", settings=PtqSettings(
                    scheme=scheme, calibration_method=method, percentile=settings.percentile,
                    calibration_samples=settings.calibration_samples, nodes_to_exclude=settings.nodes_to_exclude,
                    preprocess=False, **options)))
    return found


@dataclass(frozen=True)
class Quantized:
    """One quantized model in the scratch folder and how it scored."""

    path: Path
    done: dict[str, Any]  # what quantize() reports
    score: dict[str, float]
    fp32_nodes: int
    candidate: Candidate


class _Workbench:
    """Quantizes variants of one prepared FP32 model and scores them against FP32 on fixed samples, by the
    recipe's task (any outputs, any metric)."""

    def __init__(self, *, prepared: Path, calibration: dict[str, np.ndarray], validation: ArraySet, task: Task,
                 goal: dict[str, float], scratch: Path, threads: int) -> None:
        from edgepress.runtime.session import open_session, run_all

        self._run = lambda path, feeds: run_all(open_session(path, threads=threads), feeds, batch_size=256)
        self.prepared, self.calibration, self.scratch = prepared, calibration, scratch
        self.validation, self.task, self.goal = validation, task, goal
        self.fp32_outputs = self._run(prepared, validation.feeds)
        self._count = 0

    def quantize(self, settings: PtqSettings) -> tuple[Path, dict[str, Any]]:
        self._count += 1
        out = self.scratch / f"candidate-{self._count}.onnx"
        cache = self.scratch / f"ranges-{settings.calibration_method}.json"
        done = quantize(source=self.prepared, out=out, calibration=self.calibration, settings=settings,
                        calibration_cache=cache)
        return out, done

    def score(self, path: Path, *, samples: int | None = None) -> dict[str, float]:
        subset = self.validation.head(samples)
        outputs = self._run(path, subset.feeds)
        reference = {name: values[:len(subset)] for name, values in self.fp32_outputs.items()}
        found = {k: v for k, v in self.task.score(subset, outputs, reference).items() if isinstance(v, float)}
        fp32 = self.task.score(subset, reference, None)
        if "accuracy" in found:
            found["accuracy_drop_points"] = 100.0 * (fp32["accuracy"] - found["accuracy"])
        for name in self.goal:  # each goal budget's number, as the gate would measure it against FP32
            budget = metrics.BUILTIN_BUDGETS[name]
            if budget.value not in found:
                raise UserError(f"accuracy_aware_ptq goal {name} needs {budget.value}, which data.metric = "
                                f"{self.task.metric.key!r} does not measure",
                                fix=f"use goal budgets of the recipe's metric ({', '.join(usable_budgets(self.task.metric)[2:])})")
            found[name] = budget.measured(found[budget.value], fp32.get(budget.value))
        # output error, normalised so that it reads the same for logits, embeddings and any head
        floats = [k for k, v in reference.items() if np.issubdtype(v.dtype, np.floating)]
        found["output_error"] = float(sum(np.sum((outputs[k] - reference[k]) ** 2) for k in floats)
                                      / max(sum(np.sum(reference[k] ** 2) for k in floats), 1e-12))
        return found


def _time(paths: dict[str, Path], sample: np.ndarray, *, threads: int, settings: AccuracyAwarePtqSettings) -> dict[str, float]:
    from edgepress.runtime.latency import interleaved_latency

    times = interleaved_latency(paths, sample, threads=threads, rounds=settings.latency_rounds,
                                runs_per_round=settings.latency_runs_per_round, warmup_runs=20)
    return {name: float(np.median(t)) for name, t in times.items()}


def fallback_ranking(bench: _Workbench, candidate: Candidate, *, log: Callable[[str], None],
                     samples: int) -> list[dict[str, Any]]:
    """Compute nodes, most worth keeping in FP32 first: how much the output error falls without each."""
    full, _ = bench.quantize(candidate.settings)
    base_error = bench.score(full, samples=samples)["output_error"]
    ranking = []
    nodes = [n for n in compute_nodes(bench.prepared) if n not in candidate.settings.nodes_to_exclude]
    for index, node in enumerate(nodes):
        path, _ = bench.quantize(replace(candidate.settings,
                                         nodes_to_exclude=candidate.settings.nodes_to_exclude + (node,)))
        error = bench.score(path, samples=samples)["output_error"]
        ranking.append({"node": node, "error_all_int8": base_error, "error_without_node": error,
                        "gain": base_error - error})
        path.unlink()
        if (index + 1) % 10 == 0 or index + 1 == len(nodes):
            log(f"  sensitivity {candidate.name}: {index + 1}/{len(nodes)} nodes")
    return sorted(ranking, key=lambda r: -r["gain"])


def fewest_fallbacks(bench: _Workbench, candidate: Candidate, ranking: list[dict[str, Any]], *,
                     settings: AccuracyAwarePtqSettings,
                     log: Callable[[str], None]) -> tuple[Quantized | None, list[dict[str, Any]]]:
    """(the Quantized model with the fewest top-ranked nodes in FP32 that meets the goal, or None;
    every attempt's trial record). Assumes that keeping more of the ranked nodes in FP32
    never hurts, hence bisection."""
    limit = min(len(ranking), settings.max_fp32_nodes if settings.max_fp32_nodes is not None else len(ranking))
    tried: dict[int, Quantized] = {}
    attempts: list[dict[str, Any]] = []

    def attempt(k: int):
        fallback = tuple(r["node"] for r in ranking[:k])
        path, done = bench.quantize(replace(candidate.settings,
                                            nodes_to_exclude=candidate.settings.nodes_to_exclude + fallback))
        score = bench.score(path)
        tried[k] = Quantized(path=path, done=done, score=score, fp32_nodes=k, candidate=candidate)
        attempts.append({"candidate": candidate.name, "fp32_nodes": k, "of_nodes": len(ranking), **score})
        log(f"  {candidate.name} with {k} nodes in FP32: {describe(score, settings)}")
        return settings.meets(score)

    if limit == 0 or not attempt(limit):
        return None, attempts
    low, high = 0, limit  # attempt(low) failed (the bare candidate missed); attempt(high) met
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(middle):
            high = middle
        else:
            low = middle
    return tried[high], attempts


def describe(score: dict[str, float], settings: AccuracyAwarePtqSettings) -> str:
    """A trial's numbers for the log: agreement and drop where a classifier has them, and every goal budget's."""
    parts = [f"agreement {score['agreement']:.4f}"] if "agreement" in score else []
    parts += [f"drop {score['accuracy_drop_points']:.2f} points"] if "accuracy_drop_points" in score else []
    parts += [f"{name} {score[name]:.4g}" for name in settings.goal]
    return ", ".join(parts or [f"output error {score['output_error']:.3g}"])


def search(*, source: Path, out: Path, calibration: np.ndarray | dict[str, np.ndarray],
           validation_labels: np.ndarray | None, settings: AccuracyAwarePtqSettings, threads: int, isa,
           log: Callable[[str], None], task: Task | None = None,
           targets: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """`calibration`: one array or named inputs; `validation_labels` (class labels) or `targets` (any) of the same
    samples; `task` how the recipe judges (default: top-1 with labels, else fidelity)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = calibration if isinstance(calibration, dict) else {"input": calibration}
    targets = targets if targets is not None else ({"labels": validation_labels} if validation_labels is not None else None)
    task = task or Task(metric=metrics.METRICS["top1" if targets and "labels" in targets else "fidelity"])
    count = len(next(iter(feeds.values())))
    if any(np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)) for v in feeds.values()):
        raise UserError("the calibration data contains NaN or infinite values",
                        fix="clean the calibration data or its preprocessing")
    order = np.random.default_rng(settings.seed).permutation(count)
    calibrate_on = {k: v[order[: settings.calibration_samples]] for k, v in feeds.items()}
    held_out = order[settings.calibration_samples: settings.calibration_samples + settings.validation_samples]
    if len(held_out) < MIN_VALIDATION_SAMPLES:
        raise UserError(f"accuracy_aware_ptq validates on calibration images not used for calibration, and only "
                        f"{len(held_out)} of {count} remain after calibration_samples "
                        f"{settings.calibration_samples}",
                        fix=f"raise the [data.calibration] limit to at least "
                            f"{settings.calibration_samples + settings.validation_samples}, or lower calibration_samples")
    with tempfile.TemporaryDirectory(prefix="edgepress-ptq-search-") as scratch_name:
        scratch = Path(scratch_name)
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        validation = ArraySet("validation", {k: v[held_out] for k, v in feeds.items()},
                              None if targets is None else {k: v[held_out] for k, v in targets.items()})
        bench = _Workbench(prepared=prepared, calibration=calibrate_on, validation=validation, task=task,
                           goal=settings.goal, scratch=scratch, threads=threads)
        log(f"target {isa.describe()}, {threads} thread(s); validation on {len(held_out)} held-out calibration images")
        trials, models = [], {}
        for candidate in candidates(settings, isa=isa, warn=log):
            path, done = bench.quantize(candidate.settings)
            score = bench.score(path)
            models[candidate.name] = Quantized(path=path, done=done, score=score, fp32_nodes=0, candidate=candidate)
            trials.append({"candidate": candidate.name, "fp32_nodes": 0, **score})
            log(f"{candidate.name}: {describe(score, settings)}")
        sample = {k: v[held_out[0]][None] for k, v in feeds.items()}
        sample = next(iter(sample.values())) if len(sample) == 1 else sample
        p50 = _time({"fp32": prepared, **{name: m.path for name, m in models.items()}}, sample, threads=threads,
                    settings=settings)
        for trial in trials:
            trial["p50_vs_fp32"] = p50[trial["candidate"]] / p50["fp32"]
        meeting = {name: m for name, m in models.items() if settings.meets(m.score)}
        best_p50 = min((p50[name] for name in meeting), default=float("inf"))
        rankings = {}
        misses = sorted((name for name in models if name not in meeting and p50[name] < best_p50), key=p50.get)
        for name in misses[: settings.fallback_candidates]:
            candidate = models[name].candidate
            log(f"fallback search on {name} (p50 {p50[name] / p50['fp32']:.2f}x FP32)")
            rankings[name] = fallback_ranking(bench, candidate, log=log, samples=settings.sensitivity_samples)
            found, attempts = fewest_fallbacks(bench, candidate, rankings[name], settings=settings, log=log)
            trials += attempts
            if found is not None:
                meeting[f"{name} + {found.fp32_nodes} FP32"] = found
        if not meeting:
            best = min(trials, key=lambda t: (-t.get("agreement", 0.0), t["output_error"]))
            every = [t for t in trials if t["fp32_nodes"] and t["fp32_nodes"] == t.get("of_nodes")]
            why = (f"; even with all {every[0]['of_nodes']} compute nodes in FP32 it reaches only "
                   f"{describe(min(every, key=lambda t: t['output_error']), settings)}, so the loss is in the quantized "
                   f"activations, which compute-node fallback does not remove" if every else "")
            raise UserError(f"no INT8 configuration meets the goal on {isa.describe()} (best: {best['candidate']} with "
                            f"{best['fp32_nodes']} nodes in FP32, {describe(best, settings)}){why}",
                            fix="relax min_agreement / max_accuracy_drop_points / goal, raise max_fp32_nodes, or use qat")
        final = _time({"fp32": prepared, **{name: m.path for name, m in meeting.items()}}, sample, threads=threads,
                      settings=settings)
        chosen = min(meeting, key=final.get)
        winner = meeting[chosen]
        path, done, score, k, candidate = winner.path, winner.done, winner.score, winner.fp32_nodes, winner.candidate
        ratio = final[chosen] / final["fp32"]
        if ratio >= 1.0:
            raise UserError(f"the INT8 models that meet the goal are no faster than FP32 on {isa.describe()} "
                            f"(fastest: {chosen} at {ratio:.2f}x)",
                            fix="relax the goal, ship the FP32 model, or use qat")
        shutil.copyfile(path, out)
        ranking = rankings.get(candidate.name, [])
        fallback = [{"node": r["node"], "rank": i + 1, "reason": f"keeping it in FP32 cuts the output error from "
                     f"{r['error_all_int8']:.3g} to {r['error_without_node']:.3g}"} for i, r in enumerate(ranking[:k])]
        fallback += [{"node": n, "rank": None, "reason": "nodes_to_exclude"} for n in settings.nodes_to_exclude]
        log(f"chosen: {chosen}, p50 {ratio:.2f}x FP32, {describe(score, settings)}")
        return {**done, "search": {"chosen": chosen, "goal": {"min_agreement": settings.min_agreement,
                                                               "max_accuracy_drop_points": settings.max_accuracy_drop_points,
                                                               **settings.goal},
                                   "target_isa": isa.describe(), "threads": threads,
                                   "validation_samples": int(len(held_out)), **score,
                                   "p50_ms": final[chosen], "fp32_p50_ms": final["fp32"], "p50_vs_fp32": ratio,
                                   "trials": trials},
                "fp32_fallback": fallback, "node_precision": node_precision_map(out)}


def run(source: Artifact, settings: AccuracyAwarePtqSettings, ctx: StageContext) -> StageOutput:
    from edgepress.compress.ptq import conv_kernels_on_target
    from edgepress.runtime.isa import local_isa

    calibration = ctx.data.calibration
    ctx.log(f"calibration set: {calibration.name}")
    out = ctx.output_path("onnx")
    done = search(source=source.path, out=out, calibration=calibration.feeds, validation_labels=None,
                  targets=calibration.targets, task=ctx.task, settings=settings, threads=ctx.threads,
                  isa=local_isa(), log=ctx.log)
    if settings.choose_conv_kernels:
        done["conv_kernels"] = conv_kernels_on_target(out, ctx, calibration.feeds)
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": done})


STAGE = StageDef(kind="accuracy_aware_ptq", settings_type=AccuracyAwarePtqSettings, input_format="onnx",
                 output_format="onnx", run=run, needs=("calibration",), timed=lambda _: True,
                 reads_targets=lambda s: s.choose_conv_kernels,
                 summary="the fastest INT8 configuration on [target] that meets an agreement or accuracy goal, "
                         "with sensitive nodes left in FP32")
