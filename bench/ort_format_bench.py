"""The .ort a release ships beside the ONNX model it came from, for every ort_format stage of finished runs:
sizes, operator counts (the kernels a reduced build needs), the .ort's answers against its source on the host and
on each target that evaluated it (same_as_source), and the .ort's p50 over its source's, timed here interleaved
in one process (`edgepress bench MODEL.ort --compare SOURCE.onnx`: rounds alternate the two, the ratio's 95%
interval is over rounds), with the session settings of the run's primary target. Both sides of every number come
from the same run and machine.

    python bench/ort_format_bench.py RUN_FOLDER... [--runs 2000] [--threads 1] [--json results.json]

The runs: `edgepress run recipes/cifar10-resnet20-int8-mobile.toml` and `recipes/minilm-int8-mobile.toml`.
Timings under emulation are never latency: a qemu target contributes agreement only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import edgepress
from edgepress.report.ort_section import ort_stages


def pairs(run: Path) -> list[dict]:
    """Each ort_format stage of a run, with its source: their files and what the run measured of them."""
    report = edgepress.read_report(run / "report.json")
    found = []
    for stage in ort_stages(report):
        source = report.stage_named(stage.metrics.own["ort_format"]["source_stage"])
        own = stage.metrics.own["ort_format"]
        targets = {name: entry.values.get("same_as_source") for name, entry in (stage.metrics.targets or {}).items()
                   if entry.values.get("same_as_source") is not None}
        found.append({
            "run": report.name, "ort": run / stage.artifact, "onnx": run / source.artifact, "source_stage": source.name,
            "onnx_size_bytes": source.metrics.size_bytes, "ort_size_bytes": stage.metrics.size_bytes,
            "onnx_operators": source.metrics.operator_count, "ort_operators": stage.metrics.operator_count,
            "optimization_level": own["optimization_level"],
            "same_as_source_host": {name: v["same_as_source"] for name, v in own["evaluation"].items()},
            "max_abs_error_vs_source_host": {name: v["max_abs_error_vs_source"] for name, v in own["evaluation"].items()},
            "same_as_source_targets": targets,
            # The primary target's session settings, the ones the run timed with: the .onnx then runs the graph
            # the recipe ships it with; the .ort has its fusions baked in, and a session changes none of them.
            "denormals": report.targets[0].session.denormals if report.targets[0].session else "keep",
            "disabled_optimizers": list(report.targets[0].session.disabled_optimizers) if report.targets[0].session
            else [],
        })
    return found


def timed(pair: dict, *, runs: int, threads: int) -> dict:
    result = edgepress.bench(pair["ort"], compare=pair["onnx"], runs=runs, warmup=50, threads=threads,
                             denormals=pair["denormals"], disabled_optimizers=pair["disabled_optimizers"])
    compare = result["compare"]
    return {"ort_p50_ms": result["latency_ms"]["p50"], "onnx_p50_ms": compare["latency_ms"]["p50"],
            "p50_ratio": compare["p50_ratio"], "p50_ratio_ci95": compare["p50_ratio_ci95"], "runs": runs,
            "threads": threads}


def table(rows: list[dict]) -> str:
    header = ("run", "source", ".onnx KiB", ".ort KiB", "ops .onnx", "ops .ort", "same as source (host)",
              "max |error| (host)", "same as source (targets)", ".onnx p50 ms", ".ort p50 ms", ".ort/.onnx p50 [95% CI]")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        targets = ", ".join(f"{name}: {value:.4f}" for name, value in r["same_as_source_targets"].items()) or "–"
        lat = r["latency"]
        lines.append("| " + " | ".join([
            r["run"], r["source_stage"], f"{r['onnx_size_bytes'] / 1024:.1f}", f"{r['ort_size_bytes'] / 1024:.1f}",
            str(r["onnx_operators"]), str(r["ort_operators"]),
            ", ".join(f"{v:.4f}" for v in r["same_as_source_host"].values()),
            ", ".join(f"{v:.3g}" for v in r["max_abs_error_vs_source_host"].values()), targets,
            f"{lat['onnx_p50_ms']:.3f}", f"{lat['ort_p50_ms']:.3f}",
            f"{lat['p50_ratio']:.3f} [{lat['p50_ratio_ci95'][0]:.3f}-{lat['p50_ratio_ci95'][1]:.3f}]"]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding report.json")
    parser.add_argument("--runs", dest="timed_runs", type=int, default=2000, help="timed runs of each model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        for pair in pairs(run):
            print(f"[bench] {pair['run']}: {pair['ort'].name} against {pair['onnx'].name}, {args.timed_runs} runs "
                  "each, interleaved", file=sys.stderr, flush=True)
            pair["latency"] = timed(pair, runs=args.timed_runs, threads=args.threads)
            rows.append(pair)
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
