"""Does `--compare`'s 95 % interval cover? Self-compares of models from ~0.005 ms to ~50 ms.

For each model, `tries` runs of the device runner (`bench A --compare A'`, A' a copy of A under another name, a
fresh process each time, as `edgepress bench --compare` and every recipe's timing do): the true ratio is 1, so a
trustworthy 95 % interval holds 1.0 in at least 95 % of tries (goal: 93 % per model, leaving room for the
binomial noise of 100 tries). Each try keeps every timing, so other interval methods are scored on the very same
runs beside the runner's own (the median of the epochs' ratios, each epoch a fresh pair of sessions timed in ABBA
rounds, with a sign-test interval):

- run bootstrap: the percentile bootstrap of the ratio of all-run medians, resampling single runs (close to
  edgepress's method before issue 19, which resampled rounds of one pair of sessions);
- epoch t-interval: a t interval on the mean of the epochs' log ratios.

    python bench/latency_coverage.py [--tries 100] [--threads 1] [--json bench/results-latency-coverage.json]

Takes about 40 minutes on two cores (`--only NAME` runs the models whose name holds NAME). Run it on a machine doing nothing else that you control: other work of
yours is part of the noise, which is the point, but a benchmark should say what it ran beside.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "runtime" / "device_runner.py"
sys.path.insert(0, str(RUNNER.parent))
import device_runner  # noqa: E402  (the runner is one file, importable on its own)

GOAL_COVERAGE = 0.93
TRY_SECONDS = 1.0  # timed seconds per try and model, within the run limits below
MIN_RUNS, MAX_RUNS = 40, 4000


def matmul_stack(path: Path, *, width: int, layers: int) -> Path:
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [width, width],
                                  (rng.standard_normal((width, width)) / width).astype(np.float32).ravel())
               for i in range(layers)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"],
                              [f"h{i}" if i < layers - 1 else "y"]) for i in range(layers)]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def conv_stack(path: Path, *, channels: int, side: int, layers: int) -> Path:
    rng = np.random.default_rng(0)
    shape = [channels, channels, 3, 3]
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) / (3 * channels ** 0.5)).astype(np.float32).ravel())
               for i in range(layers)]
    nodes = []
    for i in range(layers):
        source = "x" if i == 0 else f"r{i - 1}"
        nodes.append(helper.make_node("Conv", [source, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}" if i < layers - 1 else "y"]))
    dims = [1, channels, side, side]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def models(work: Path) -> dict[str, Path]:
    return {
        "matmul 2x32": matmul_stack(work / "mm32.onnx", width=32, layers=2),
        "matmul 4x256": matmul_stack(work / "mm256.onnx", width=256, layers=4),
        "conv 8x32ch 32x32": conv_stack(work / "conv32.onnx", channels=32, side=32, layers=8),
        "conv 8x64ch 56x56": conv_stack(work / "conv56.onnx", channels=64, side=56, layers=8),
        "conv 24x64ch 56x56": conv_stack(work / "conv56x24.onnx", channels=64, side=56, layers=24),
        "conv 44x64ch 56x56": conv_stack(work / "conv56x44.onnx", channels=64, side=56, layers=44),
    }


def one_try(model: Path, twin: Path, *, runs: int, threads: int, seed: int) -> dict:
    done = subprocess.run([sys.executable, str(RUNNER), "bench", str(model), "--compare", str(twin), "--runs",
                           str(runs), "--threads", str(threads), "--samples", "--seed", str(seed)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    compare = result["compare"]
    return {"p50_ms": result["latency_ms"]["p50"], "ratio": compare["p50_ratio"], "ci95": compare["p50_ratio_ci95"],
            "epochs": result["epochs"], "epoch_ratios": compare["epoch_ratios"],
            "first_ms": result["samples_ms"], "second_ms": compare["samples_ms"]}


T_975 = {5: 2.571, 7: 2.365, 9: 2.262, 11: 2.201, 15: 2.131, 19: 2.093, 23: 2.069}


def other_intervals(attempt: dict, *, seed: int) -> dict[str, list[float]]:
    """Two other intervals on the same runs: one that ignores the epochs (a bootstrap of single runs, as if every
    run were independent), and a t interval on the mean of the epochs' log ratios."""
    rng = np.random.default_rng(seed)
    first, second = np.asarray(attempt["first_ms"]), np.asarray(attempt["second_ms"])
    pooled = (np.median(first[rng.integers(0, first.size, size=(1000, first.size))], axis=1)
              / np.median(second[rng.integers(0, second.size, size=(1000, second.size))], axis=1))
    logs = np.log(np.asarray(attempt["epoch_ratios"]))
    half = T_975.get(logs.size - 1, 2.0) * logs.std(ddof=1) / np.sqrt(logs.size)
    return {"run bootstrap": [float(v) for v in np.percentile(pooled, [2.5, 97.5])],
            "epoch t-interval": [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="run only the models whose name contains this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.time()
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name, path in models(work).items():
            if args.only and args.only not in name:
                continue
            twin = work / f"twin-{path.name}"
            twin.write_bytes(path.read_bytes())
            probe = one_try(path, twin, runs=MIN_RUNS, threads=args.threads, seed=0)
            runs = int(np.clip(TRY_SECONDS * 1e3 / probe["p50_ms"], MIN_RUNS, MAX_RUNS))
            tries = []
            for index in range(args.tries):
                tries.append(one_try(path, twin, runs=runs, threads=args.threads, seed=index))
                if (index + 1) % 10 == 0:
                    print(f"[coverage] {name}: {index + 1}/{args.tries} tries", file=sys.stderr, flush=True)
            methods = {"runner (sign test over epochs)": [t["ci95"] for t in tries]}
            for method_name in ("run bootstrap", "epoch t-interval"):
                methods[method_name] = [other_intervals(t, seed=i)[method_name] for i, t in enumerate(tries)]
            for method_name, intervals in methods.items():
                held = [low <= 1.0 <= high for low, high in intervals]
                table.append({"model": name, "method": method_name, "p50_ms": float(np.median([t["p50_ms"] for t in tries])),
                              "runs": runs, "epochs": int(np.median([t["epochs"] for t in tries])),
                              "tries": len(tries), "coverage": float(np.mean(held)),
                              "mean_width_percent": float(np.mean([100 * (h - l) for l, h in intervals])),
                              "ratio_min": float(min(t["ratio"] for t in tries)),
                              "ratio_max": float(max(t["ratio"] for t in tries))})
    print(f"\nself-compare coverage: {args.tries} tries per model, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{time.time() - started:.0f} s\n")
    print("| model | p50 ms | runs per try | epochs | method | CI holds 1.0 | mean CI width | ratios seen |")
    print("|---|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['model']} | {row['p50_ms']:.4f} | {row['runs']} | {row['epochs']} | {row['method']} | "
              f"{row['coverage']:.0%} | {row['mean_width_percent']:.2f} % | {row['ratio_min']:.3f}-{row['ratio_max']:.3f} |")
    ours = [row for row in table if row["method"].startswith("runner")]
    met = all(row["coverage"] >= GOAL_COVERAGE for row in ours)
    print(f"\ngoal: the runner's interval holds 1.0 in at least {GOAL_COVERAGE:.0%} of tries for every model: "
          f"{'MET' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"tries": args.tries, "threads": args.threads, "rows": table,
                                         "seconds": round(time.time() - started)}, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
