"""A recipe's targets: each stage's ONNX or ORT-format model timed by the device runner on every target, and evaluated
there when the target asks for it (ARM kernels may answer differently from x86 on the same INT8 model)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.core.progress import say
from edgepress.recipe import BenchSpec, Recipe, TargetSpec
from edgepress.stages.stage import Artifact
from edgepress.targets import PartialMeasurement, Target, TargetOptions, link_or_copy, open_target

# What a target entry keeps of the runner's bench JSON.
_TIMING_KEYS = ("latency_ms", "p50_ci95_ms", "runs", "warmup_runs", "session_create_ms", "first_run_ms",
                "peak_memory_bytes", "runner_baseline_bytes", "memory_method", "epochs", "profile",
                "thread_settings", "session_settings", "device", "samples_ms", "complete",
                "incomplete")


def open_targets(recipe: Recipe) -> dict[str, Target]:
    """Every target opened and probed before any stage runs: an unreachable device, a missing setup or a
    device without onnxruntime fails now, in one line, not after an hour of training."""
    opened = {}
    for spec in recipe.targets:
        target = open_target(spec.name, options=TargetOptions(python=spec.python, identity_file=spec.identity_file,
                                                              workdir=spec.workdir))
        if spec.name != "local" or spec.python is not None:
            found = target.run(files=[], args=["probe"], timeout_s=300.0)["device"]
            say(f"target {target.name}: {found['machine']}, Python {found['python']}, "
                f"onnxruntime {found['onnxruntime']}" + (" (emulated)" if target.emulated else ""))
        opened[spec.name] = target
    return opened


def _save_inputs(path: Path, inputs: np.ndarray | dict[str, np.ndarray]) -> None:
    if isinstance(inputs, dict) and len(inputs) == 1:
        np.savez(path, x=next(iter(inputs.values())))  # one array: the runner gives it to the model's only input
    elif isinstance(inputs, dict):
        np.savez(path, **inputs)
    else:
        np.savez(path, x=inputs)  # one array: the runner gives it to the model's only input


def time_on(target: Target, artifact: Artifact, sample: np.ndarray | dict[str, np.ndarray], *, spec: TargetSpec,
            bench: BenchSpec, reference: Artifact | None = None, reference_stage: str | None = None) -> dict[str, Any]:
    """The runner's timing of the artifact on one input repeated to the bench batch; with a `reference` (the
    run's ONNX reference), timed interleaved with it in the same runner, and their p50 ratio with its 95%
    interval kept as "latency_ratio". A runner that stopped after some timed runs raises PartialMeasurement whose
    result is already such an entry."""
    batch = ({name: np.repeat(values[None], bench.batch, axis=0) for name, values in sample.items()}
             if isinstance(sample, dict) else np.repeat(sample[None], bench.batch, axis=0))
    with tempfile.TemporaryDirectory(prefix="edgepress-bench-") as scratch:
        inputs = Path(scratch) / "bench_inputs.npz"
        _save_inputs(inputs, batch)
        files, compare = [artifact.path, inputs], []
        if reference is not None:
            # The runner names files by base name: the reference goes in under a name of its own.
            named = Path(scratch) / f"reference-{reference.path.name}"
            link_or_copy(reference.path, named)
            files.append(named)
            compare = ["--compare", named.name]
        try:
            found = target.run(files=files, timeout_s=1800.0, args=[
                "bench", artifact.path.name, *compare, "--inputs", inputs.name, "--threads", str(spec.threads),
                "--runs", str(bench.runs), "--warmup", str(bench.warmup_runs), "--samples",
                # where the time goes; emulated kernels are not worth profiling, and slow to run
                *([] if target.emulated else ["--profile"]), *session_flags(spec)])
        except PartialMeasurement as exc:
            exc.result = _timing_entry(exc.result, spec=spec, bench=bench, reference_stage=reference_stage)
            raise
    return _timing_entry(found, spec=spec, bench=bench, reference_stage=reference_stage)


def session_flags(spec: TargetSpec) -> list[str]:
    """The device runner's flags for the target's ONNX Runtime session settings."""
    flags = ["--denormals", spec.denormals]
    for name in spec.disabled_optimizers:
        flags += ["--disable-optimizer", name]
    return flags


def _timing_entry(found: dict[str, Any], *, spec: TargetSpec, bench: BenchSpec,
                  reference_stage: str | None) -> dict[str, Any]:
    entry = {key: found[key] for key in _TIMING_KEYS if key in found}
    entry.update(threads=spec.threads, batch=bench.batch)
    compare = found.get("compare")
    if compare is not None and reference_stage is not None:
        entry["latency_ratio"] = {"p50": compare["p50_ratio"], "ci95": compare["p50_ratio_ci95"],
                                  "epochs": len(compare["epoch_ratios"]), "reference_stage": reference_stage,
                                  "reference_p50_ms": compare["latency_ms"]["p50"],
                                  "reference_p50_ci95_ms": compare["p50_ci95_ms"]}
    return entry


def outputs_on(target: Target, artifact: Artifact, dataset, *, batch_size: int, spec: TargetSpec
               ) -> dict[str, np.ndarray]:
    """Every output of the artifact on the set (already cut to the samples wanted), by name, computed on the
    target by the runner's `predict`."""
    with tempfile.TemporaryDirectory(prefix="edgepress-predict-") as scratch:
        folder = Path(scratch)
        _save_inputs(folder / "inputs.npz", dataset.feeds)
        target.run(files=[artifact.path, folder / "inputs.npz"], fetch=["outputs.npz"], into=folder,
                   timeout_s=7200.0, args=["predict", artifact.path.name, "--inputs", "inputs.npz",
                                           "--out", "outputs.npz", "--batch-size", str(batch_size),
                                           *session_flags(spec)])
        with np.load(folder / "outputs.npz") as found:
            return {name: found[name] for name in found.files}
