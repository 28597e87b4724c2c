"""Float where float is faster: ptq's `float_where_faster`, a measured per-unit choice of INT8 or float.

INT8 is not faster everywhere. ONNX Runtime fuses a float Conv with its activation (HardSwish, HardSigmoid,
Relu) into one NCHWc kernel, while the INT8 graph runs a HardSwish as DequantizeLinear -> HardSigmoid ->
QuantizeLinear -> QLinearMul; on small maps a QLinearConv is no faster than the float conv; and each border
between integer and float regions costs a QuantizeLinear or DequantizeLinear and a layout change. Only timing
the model on the target says which wins, so the choice is measured:

- the unit (what is coupled): a compute node and the elementwise tail ONNX Runtime would fuse or run beside it
  in float (activations, a HardSwish's or squeeze-excitation's Mul), `units`;
- the score: the whole model's latency, the candidate against the current best, interleaved in one process
  (runtime/latency.interleaved_latency), judged per round;
- when it is cut: a candidate is kept only when it is faster in a clear majority of rounds (a sign test at
  about 2 %): first whole groups of units with the same tail and unions of groups (every HardSwish unit at
  once, so borders between them vanish together), then each unit on its own.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgepress.compress.quant import onnx_graph

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# Ops that follow a compute node elementwise and run fused with it, or next to it, in a float graph.
TAIL_OPS = ("Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Tanh", "Mul")
# A sign test over rounds: kept when faster in at least this share of them, where chance alone gives it < 2 %.
SIGNIFICANCE = 0.02
MAX_GROUPS = 4  # 15 unions at most


@dataclass(frozen=True)
class Unit:
    nodes: tuple[str, ...]  # the compute node first
    tail: str  # its tail's op types, e.g. "HardSigmoid+Mul", or "" for a bare compute node


def units(model_path: Path) -> list[Unit]:
    """Every compute node with the tail ops reachable from it through tail ops only, in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph, consumers = model.graph, onnx_graph.consumers(model)
    found = []
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        members, frontier = [node], list(node.output)
        while frontier:
            for consumer in consumers.get(frontier.pop(), []):
                if consumer.op_type in TAIL_OPS and consumer not in members:
                    members.append(consumer)
                    frontier.extend(consumer.output)
        tail = "+".join(sorted({m.op_type for m in members[1:]}))
        found.append(Unit(nodes=tuple(m.name for m in members), tail=tail))
    return found


def with_float_neighbours(model_path: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` plus every other non-compute node whose data inputs all come from float nodes or the graph's
    inputs: an Add of two float convs, the pooling after one. Left quantized, each would put a QuantizeLinear
    and a DequantizeLinear between float neighbours."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    float_tensors = {value.name for value in graph.input}
    chosen = set(names)
    added = []
    for node in graph.node:  # topological order: a float producer is decided before its consumers
        data = [name for name in node.input if name and name not in constants]
        if node.name not in chosen and node.op_type not in COMPUTE_OPS and data and all(d in float_tensors for d in data):
            chosen.add(node.name)
            added.append(node.name)
        if node.name in chosen:
            float_tensors.update(node.output)
    return tuple(names) + tuple(added)


def runs_per_round(session, sample, *, half_ms: float = 2.0) -> int:
    """Runs per interleaved round of `session`'s model on `sample`: ABBA halves of about `half_ms` each, so that a
    round's median is more than one run's noise."""
    from edgepress.runtime.latency import time_runs

    one_run_ms = float(np.median(time_runs(session, sample, warmup_runs=5, runs=10)))
    return 2 * max(2, math.ceil(half_ms / max(one_run_ms, 1e-3)))


def faster_in_rounds(candidate: np.ndarray, best: np.ndarray, rounds: int) -> tuple[bool, float]:
    """(surely faster, median ratio): per-round medians compared, kept when the candidate wins so many rounds
    that a coin would do it less than SIGNIFICANCE of the time."""
    ratios = np.median(candidate.reshape(rounds, -1), axis=1) / np.median(best.reshape(rounds, -1), axis=1)
    wins = int(np.sum(ratios < 1.0))
    p_value = sum(comb(rounds, k) for k in range(wins, rounds + 1)) / 2 ** rounds
    return bool(p_value < SIGNIFICANCE and np.median(ratios) < 1.0), float(np.median(ratios))


def search(*, float_model: Path, quantize_excluding: Callable[[tuple[str, ...]], Path],
           time_pair: Callable[[Path, Path], tuple[np.ndarray, np.ndarray]], rounds: int,
           log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The fastest model found and what was tried. `quantize_excluding(names)` writes an INT8 model with those
    nodes in float and returns its path; `time_pair(a, b)` times two models interleaved, per-run ms each."""
    candidates = units(float_model)
    excluded: tuple[str, ...] = ()
    best = quantize_excluding(excluded)
    trials = []

    def attempt(label: str, adding: tuple[str, ...]) -> None:
        nonlocal best, excluded
        candidate = quantize_excluding(with_float_neighbours(float_model, excluded + adding))
        candidate_ms, best_ms = time_pair(candidate, best)
        kept, ratio = faster_in_rounds(candidate_ms, best_ms, rounds)
        trials.append({"float": label, "nodes": len(adding), "ratio_to_best": ratio, "kept": kept})
        log(f"float_where_faster: {label} in float: {ratio:.3f}x the best so far, " + ("kept" if kept else "not kept"))
        if kept:
            best, excluded = candidate, excluded + adding

    groups: dict[str, list[Unit]] = {}
    for unit in candidates:
        groups.setdefault(unit.tail or "(none)", []).append(unit)
    # Borders cost most, so whole groups first, and their unions: float hardswish units beside INT8 ReLU units
    # may lose where all of them in float wins. At most MAX_GROUPS kinds of tail, most units first, are combined.
    kinds = sorted(groups, key=lambda tail: -len(groups[tail]))[:MAX_GROUPS]
    for size in range(1, len(kinds) + 1):
        for chosen in itertools.combinations(kinds, size):
            adding = tuple(name for tail in chosen for unit in groups[tail] for name in unit.nodes
                           if name not in excluded)
            if adding and not (size == 1 and len(groups[chosen[0]]) == 1):
                attempt("every unit with tail " + " or ".join(chosen), adding)
    for unit in candidates:
        if unit.nodes[0] not in excluded:
            attempt(unit.nodes[0] + (f" + {unit.tail}" if unit.tail else ""), unit.nodes)
    float_compute = [unit.nodes[0] for unit in candidates if unit.nodes[0] in excluded]
    return best, {"float_nodes": list(with_float_neighbours(float_model, excluded)) if excluded else [],
                  "float_compute_nodes": float_compute, "units": len(candidates),
                  "trials": trials}


def quantize_float_where_faster(*, source: Path, out: Path, calibration, settings, threads: int, target_isas,
                                log: Callable[[str], None], rounds: int = 20) -> dict[str, Any]:
    """ptq with `float_where_faster`: the search above over ptq.quantize, timed at `threads`; returns quantize's
    record of the model kept, with the search's under "float_where_faster"."""
    import dataclasses
    import shutil
    import tempfile

    from edgepress.compress.quant.static import calibration_feeds, prepared_graph, quantize
    from edgepress.runtime.latency import interleaved_latency
    from edgepress.runtime.session import open_session

    with tempfile.TemporaryDirectory(prefix="edgepress-faster-") as folder:
        scratch = Path(folder)
        graph = scratch / "graph.onnx"
        prepared_graph(source, graph, settings=settings, log=lambda _: None)
        session = open_session(source, threads=threads)
        sample = {name: values[:1] for name, values in calibration_feeds(session, calibration, samples=1).items()}
        per_round = runs_per_round(session, sample)  # timed on the float model, for every trial alike
        records: dict[Path, dict[str, Any]] = {}

        def quantize_excluding(names: tuple[str, ...]) -> Path:
            path = scratch / f"candidate-{len(records)}.onnx"
            variant = dataclasses.replace(settings, float_where_faster=False,
                                          nodes_to_exclude=settings.nodes_to_exclude + names)
            records[path] = quantize(source=source, out=path, calibration=calibration, settings=variant,
                                     calibration_cache=scratch / "ranges.json", target_isas=target_isas)
            return path

        def time_pair(candidate: Path, best: Path) -> tuple[np.ndarray, np.ndarray]:
            times = interleaved_latency({"candidate": candidate, "best": best}, sample, threads=threads,
                                        rounds=rounds, runs_per_round=per_round, warmup_runs=10)
            return times["candidate"], times["best"]

        log(f"float_where_faster: {len(units(graph))} units, {rounds} interleaved rounds of {per_round} runs "
            f"per trial at {threads} thread(s)")
        best, found = search(float_model=graph, quantize_excluding=quantize_excluding, time_pair=time_pair,
                             rounds=rounds, log=log)
        shutil.copyfile(best, out)
        done = records[best]
    log(f"float_where_faster: {len(found['float_compute_nodes'])} of {found['units']} compute nodes kept in float")
    searched = set(found["float_nodes"])
    return {**done, "float_where_faster": found,
            "fp32_fallback": [entry for entry in done["fp32_fallback"] if entry["node"] not in searched]
            + [{"node": name, "reason": "float_where_faster: measured faster in float"}
               for name in found["float_compute_nodes"]]}
