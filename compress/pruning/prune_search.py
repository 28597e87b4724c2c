"""Find the smallest pruning ratio that meets a MAC and/or a measured latency target.

MACs are counted; latency is measured, NetAdapt-style: each candidate is exported to ONNX and
timed under ONNX Runtime on the recipe's target, interleaved with the unpruned model, because
latency is not proportional to MACs (channel counts that are not a multiple of the kernels'
block width of 8 can cost more than they save). Neither is monotonic in the ratio once channels
are rounded, so the search scans a coarse grid first and only then bisects inside one step.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgepress.core.errors import UserError

GRID_STEP = 0.05
BISECT_STEPS = 5


class Unreachable(Exception):
    """A cut function cannot produce a candidate at this ratio."""


@dataclass(frozen=True)
class LatencyProbe:
    """Measures a torch model's ONNX Runtime p50 against the unpruned model's, in the same rounds."""

    reference_onnx: Path
    input_shape: tuple[int, ...]
    threads: int
    scratch: Path
    rounds: int = 6
    runs_per_round: int = 40
    # Candidates are compared with the unpruned model exported the same way. TorchScript takes 0.2 s where
    # dynamo takes 4 s (ResNet-20), and after ONNX Runtime's optimisation their graphs differ only in how
    # the global pool is spelt; models it cannot trace fall back to dynamo (open_probe).
    exporter: str = "torchscript"

    def p50_ms(self, model) -> tuple[float, float]:
        """(candidate p50 ms, reference p50 ms), timed interleaved."""
        from edgepress.export.export import ExportSettings, export_onnx
        from edgepress.runtime.latency import interleaved_latency

        path = self.scratch / "candidate.onnx"
        export_onnx(model=model.eval(), input_shape=self.input_shape, path=path,
                    settings=ExportSettings(parity_samples=8, exporter=self.exporter), log=lambda _: None)
        sample = np.random.default_rng(0).standard_normal((1, *self.input_shape)).astype(np.float32)
        times = interleaved_latency({"candidate": path, "reference": self.reference_onnx}, sample,
                                    threads=self.threads, rounds=self.rounds, runs_per_round=self.runs_per_round,
                                    warmup_runs=20)
        return float(np.median(times["candidate"])), float(np.median(times["reference"]))


def open_probe(model, *, input_shape: tuple[int, ...], threads: int, scratch: Path) -> LatencyProbe:
    from edgepress.export.export import ExportSettings, export_onnx

    reference = scratch / "reference.onnx"
    for exporter in ("torchscript", "dynamo"):
        try:
            export_onnx(model=model.eval(), input_shape=input_shape, path=reference,
                        settings=ExportSettings(parity_samples=8, exporter=exporter), log=lambda _: None)
            break
        except UserError:
            if exporter == "dynamo":
                raise
    return LatencyProbe(reference_onnx=reference, input_shape=input_shape, threads=threads, scratch=scratch,
                        exporter=exporter)


@dataclass(frozen=True)
class Targets:
    macs_limit: float | None = None  # absolute MACs
    latency_ratio: float | None = None  # candidate p50 / unpruned p50
    latency_ms: float | None = None  # candidate p50


def search_ratio(*, cut: Callable[[float], Any], count_macs: Callable[[Any], int], targets: Targets,
                 probe: LatencyProbe | None, log: Callable[[str], None]) -> tuple[Any, float, list[dict[str, Any]]]:
    """(pruned model, ratio, trials) for the smallest ratio on the grid, refined by bisection, meeting targets."""
    trials: list[dict[str, Any]] = []

    def meets(ratio: float):
        try:
            candidate = cut(ratio)
        except Unreachable as exc:  # e.g. per-layer ratios that cannot reach this far: a miss, not a failure
            trials.append({"ratio": round(ratio, 4), "meets": False, "error": str(exc)})
            return None
        trial: dict[str, Any] = {"ratio": round(ratio, 4), "macs": count_macs(candidate)}
        ok = targets.macs_limit is None or trial["macs"] <= targets.macs_limit
        # Latency costs an export and a timing run: only measure candidates that pass on MACs.
        if ok and probe is not None and (targets.latency_ratio is not None or targets.latency_ms is not None):
            p50, reference = probe.p50_ms(candidate)
            trial.update(p50_ms=round(p50, 4), reference_p50_ms=round(reference, 4), p50_ratio=round(p50 / reference, 4))
            ok = ((targets.latency_ratio is None or p50 <= targets.latency_ratio * reference)
                  and (targets.latency_ms is None or p50 <= targets.latency_ms))
        trial["meets"] = ok
        trials.append(trial)
        log("trial " + ", ".join(f"{k} {v}" for k, v in trial.items()))
        return candidate if ok else None

    grid = [round(GRID_STEP * k, 4) for k in range(1, int(round(0.95 / GRID_STEP)) + 1)]
    low, best = 0.0, None
    for ratio in grid:
        found = meets(ratio)
        if found is not None:
            best = (found, ratio)
            break
        low = ratio
    if best is None:
        raise UserError("no pruning ratio up to 0.95 meets the target "
                        f"({', '.join(f'{k} {v}' for k, v in vars(targets).items() if v is not None)})",
                        fix="relax the target, add depth pruning (prune_depth), or free layers from ignored_layers")
    high = best[1]
    for _ in range(BISECT_STEPS):
        middle = (low + high) / 2
        found = meets(middle)
        if found is not None:
            best, high = (found, middle), middle
        else:
            low = middle
    return best[0], best[1], trials


def scratch_dir():
    return tempfile.TemporaryDirectory(prefix="edgepress-prune-")
