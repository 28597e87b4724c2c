"""Batch-1 latency under ONNX Runtime: warm up, time many runs, report percentiles in ms."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from edgepress.runtime.session import as_feed


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ms: np.ndarray) -> LatencyStats:
    samples_ms = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return LatencyStats(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(samples_ms.mean()),
                        std=float(samples_ms.std()), min=float(samples_ms.min()), max=float(samples_ms.max()),
                        runs=int(samples_ms.size))


def time_runs(session: ort.InferenceSession, sample: np.ndarray | dict[str, np.ndarray], *, warmup_runs: int,
              runs: int) -> np.ndarray:
    """Per-run wall times in ms for `runs` calls on one fixed input (an array, or named arrays for a
    text model), after `warmup_runs` untimed calls."""
    feed = as_feed(session, sample)
    for _ in range(warmup_runs):
        session.run(None, feed)
    times_ms = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times_ms[i] = (time.perf_counter_ns() - start) / 1e6
    return times_ms


def measure_latency(session: ort.InferenceSession, sample: np.ndarray | dict[str, np.ndarray], *, warmup_runs: int,
                    runs: int) -> LatencyStats:
    return summarize(time_runs(session, sample, warmup_runs=warmup_runs, runs=runs))


def interleaved_latency(paths: dict, sample: np.ndarray | dict[str, np.ndarray], *, threads: int, rounds: int,
                        runs_per_round: int, warmup_runs: int) -> dict[str, np.ndarray]:
    """Per-run ms for each model, timed in shuffled alternating rounds in one process, so that a
    machine's slow spells fall on every model alike and their ratio stays honest."""
    from edgepress.runtime.session import open_session

    sessions = {name: open_session(path, threads=threads) for name, path in paths.items()}
    for session in sessions.values():
        time_runs(session, sample, warmup_runs=warmup_runs, runs=1)
    times: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    order = list(sessions)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_runs(sessions[name], sample, warmup_runs=2, runs=runs_per_round))
    return {name: np.concatenate(chunks) for name, chunks in times.items()}
