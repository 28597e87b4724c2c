"""In-process timing under ONNX Runtime for benchmarks and the pruning search; `edgepress bench` and recipes
time through the device runner (device_runner.py)."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from edgepress.runtime.session import as_feed


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


def interleaved_latency(paths: dict, sample: np.ndarray | dict[str, np.ndarray], *, threads: int, rounds: int,
                        runs_per_round: int, warmup_runs: int, denormals: str = "keep",
                        disabled_optimizers: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per-run ms for each model, timed in alternating rounds in one process, so that a machine's slow spells fall
    on every model alike and their ratio stays honest: each round runs the models forward then backward (ABBA
    for two), so that none is favoured by following another (device_runner.round_order). Every model gets the
    same session settings: flushing denormals is a CPU flag of the calling thread, which ONNX Runtime
    (1.32) sets from the first session a process opens, so settings cannot be mixed in one process."""
    from edgepress.runtime.session import open_session

    sessions = {name: open_session(path, threads=threads, denormals=denormals, disabled_optimizers=disabled_optimizers)
                for name, path in paths.items()}
    for session in sessions.values():
        time_runs(session, sample, warmup_runs=warmup_runs, runs=1)
    times: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    names = list(sessions)
    half = max(1, runs_per_round // 2)
    for round_index in range(rounds):
        forward = names if round_index % 2 == 0 else names[::-1]
        for name in forward + forward[::-1]:
            times[name].append(time_runs(sessions[name], sample, warmup_runs=1, runs=half))
    return {name: np.concatenate(chunks) for name, chunks in times.items()}
