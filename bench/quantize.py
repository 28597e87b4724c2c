"""INT8 that is faster *and* accurate: every quantization route of edgepress against FP32 and plain ONNX Runtime.

One run: the real CIFAR-10 ResNet-20 and ResNet-56 as FP32, plain `quantize_static` (U8S8, S8S8,
U8S8 + reduce_range), edgepress `ptq` (saturation guard as 7-bit-free U8U8 weights, or as FP32
nodes; reduce_range), `accuracy_aware_ptq` and `qat`; accuracy and agreement with FP32 on
test_jpeg_10000 and test_raw_1017; batch-1 latency at each --threads, all models of one network
timed in interleaved rounds. Then MobileNetV2 with and without equalization (bench/mobilenet_bench.py)
and MiniLM FP32 / dynamic INT8 / 4-bit (bench/minilm_bench.py, in a process of its own: ONNX Runtime
decides a thread's denormal handling from the first session it opens, and MiniLM's recipe flushes them).
QAT trains as the accurate-int8 recipes do (ResNet-20 3 epochs, ResNet-56 2 epochs with mixup) unless
--qat-epochs says otherwise. The last lines say, per network, whether the goal is met and by what.

    python bench/quantize.py [--models resnet20 resnet56] [--threads 1 2] [--qat-epochs N] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import int8_vs_plain_ort as plain
from edgepress.compress import qat
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.compress.accuracy_aware_ptq import AccuracyAwarePtqSettings, search
from edgepress.core.datapath import data_root
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.checkpoint import load_checkpoint
from edgepress.models.zoo import build_model
from edgepress.runtime.isa import local_isa
from edgepress.runtime.latency import interleaved_latency
from edgepress.runtime.session import open_session, predict

GOAL_AGREEMENT, GOAL_P50_RATIO = 0.99, 0.6
# As recipes/cifar10-resnet{20,56}-accurate-int8.toml; mixup gave ResNet-20 no gain.
QAT_EPOCHS, QAT_MIXUP = {"resnet20": 3, "resnet56": 2}, {"resnet56": 1.0}
EDGEPRESS_PTQ = {
    "edgepress ptq (guard: u8 weights)": PtqSettings(),
    "edgepress ptq (guard: fp32 nodes)": PtqSettings(saturation_guard="fp32"),
    "edgepress ptq (reduce_range)": PtqSettings(saturation_guard="off", reduce_range=True),
}


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _network(name: str):
    model = build_model(name=f"cifar_{name}", entry=None, kwargs={})
    load_checkpoint(path=data_root() / "weights" / plain.CHECKPOINTS[name], model=model)
    return model.eval()


def build_models(name: str, *, work: Path, sets: dict, calibration: tuple, training: tuple, args) -> tuple[dict, dict]:
    """{config: ONNX path} and {config: notes} for one network."""
    paths, notes = {"fp32": work / f"{name}-fp32.onnx"}, {}
    export_onnx(model=_network(name), input_shape=(3, 32, 32), path=paths["fp32"], settings=ExportSettings(), log=lambda _: None)
    for config, options in plain.PLAIN.items():
        paths[config] = work / f"{name}-{len(paths)}.onnx"
        plain.plain_quantize(paths["fp32"], paths[config], calibration[0][:plain.CALIBRATION_SAMPLES], **options)
    for config, settings in EDGEPRESS_PTQ.items():
        paths[config] = work / f"{name}-{len(paths)}.onnx"
        quantize(source=paths["fp32"], out=paths[config], calibration=calibration[0], settings=settings)
    _log(f"{name}: accuracy-aware PTQ (agreement >= {GOAL_AGREEMENT})")
    aware = work / f"{name}-aware.onnx"
    try:
        done = search(source=paths["fp32"], out=aware, calibration=calibration[0], validation_labels=calibration[1],
                      settings=AccuracyAwarePtqSettings(min_agreement=GOAL_AGREEMENT), threads=1, isa=local_isa(),
                      log=lambda m: None)
        paths["edgepress accuracy_aware_ptq"] = aware
        notes["edgepress accuracy_aware_ptq"] = f"{done['search']['chosen']}, {done['float_nodes']} FP32 nodes"
    except UserError as exc:
        notes["edgepress accuracy_aware_ptq"] = f"no configuration met the goal: {exc}"
    epochs = args.qat_epochs or QAT_EPOCHS[name]
    _log(f"{name}: QAT, {epochs} epoch(s) on {len(training[0])} images")
    started = time.time()
    # as the accurate-int8 recipes: conv1 in FP32; mixup where it measurably helped (ResNet-56)
    settings = qat.QatSettings(epochs=epochs, fp32_layers=("conv1",), mixup=QAT_MIXUP.get(name, 0.0))
    teacher = _network(name)
    graph, trained = qat.train(model=_network(name), teacher=teacher, calibration=calibration[0],
                               train_inputs=training[0], train_labels=training[1],
                               check_inputs=sets["test_raw_1017"][0], settings=settings, log=_log)
    paths["edgepress qat"] = work / f"{name}-qat.onnx"
    exported = qat.export(graph=graph, input_shape=(3, 32, 32), out=paths["edgepress qat"],
                          parity_inputs=sets["test_jpeg_10000"][0], settings=settings, log=_log)
    notes["edgepress qat"] = (f"{trained['weight_bits']}-bit weights, {epochs} epochs, mixup {settings.mixup}, {time.time() - started:.0f} s; "
                              f"torch vs ORT top-1 {100 * exported['parity']['top1_agreement']:.2f}% on test_jpeg_10000, "
                              f"{exported['onnxruntime_kernels']['float_compute_nodes']} float compute nodes")
    return paths, notes


def bench_network(name: str, *, work: Path, sets: dict, calibration: tuple, training: tuple, args) -> list[dict]:
    paths, notes = build_models(name, work=work, sets=sets, calibration=calibration, training=training, args=args)
    top1 = {}
    for config, path in paths.items():
        session = open_session(path, threads=2)
        top1[config] = {s: predict(session, x, batch_size=256).argmax(1) for s, (x, _) in sets.items()}
    rows = []
    sample = sets["test_raw_1017"][0][:1]
    for threads in args.threads:
        _log(f"{name}: latency at {threads} thread(s), {args.rounds} interleaved rounds x {args.runs_per_round} runs")
        times = interleaved_latency(paths, sample, threads=threads, rounds=args.rounds,
                                    runs_per_round=args.runs_per_round, warmup_runs=args.warmup_runs)
        fp32_p50 = float(np.median(times["fp32"]))
        for config, path in paths.items():
            t = times[config]
            rows.append({"model": name, "config": config, "threads": threads, "size_bytes": path.stat().st_size,
                         "accuracy": {s: float(np.mean(top1[config][s] == y)) for s, (_, y) in sets.items()},
                         "agreement": {s: float(np.mean(top1[config][s] == top1["fp32"][s])) for s in sets},
                         "latency_p50_ms": float(np.median(t)),
                         "latency_iqr_ms": float(np.percentile(t, 75) - np.percentile(t, 25)),
                         "p50_vs_fp32": float(np.median(t)) / fp32_p50, "note": notes.get(config, "")})
    for config, note in notes.items():
        if config not in paths:
            rows.append({"model": name, "config": config, "threads": None, "note": note})
    return rows


def resnet_table(rows: list[dict]) -> str:
    header = ("model", "config", "threads", "size KiB", "acc jpeg10k", "acc raw1017", "agree jpeg10k", "agree raw1017",
              "p50 ms", "IQR ms", "p50/fp32", "goal", "note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r["threads"] is None:
            lines.append(f"| {r['model']} | {r['config']} | - | - | - | - | - | - | - | - | - | - | {r['note']} |")
            continue
        met = r["agreement"]["test_jpeg_10000"] >= GOAL_AGREEMENT and r["p50_vs_fp32"] <= GOAL_P50_RATIO
        lines.append("| " + " | ".join([
            r["model"], r["config"], str(r["threads"]), f"{r['size_bytes'] / 1024:.0f}",
            f"{100 * r['accuracy']['test_jpeg_10000']:.2f}%", f"{100 * r['accuracy']['test_raw_1017']:.2f}%",
            f"{100 * r['agreement']['test_jpeg_10000']:.2f}%", f"{100 * r['agreement']['test_raw_1017']:.2f}%",
            f"{r['latency_p50_ms']:.3f}", f"{r['latency_iqr_ms']:.3f}", f"{r['p50_vs_fp32']:.2f}x",
            "MET" if met else "-", r["note"]]) + " |")
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """Per network at 1 thread: the models that meet the goal, or the closest miss among the fast ones."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        timed = [r for r in rows if r["model"] == name and r["threads"] == 1 and r["config"] != "fp32"]
        if not timed:
            continue
        agreement = lambda r: r["agreement"]["test_jpeg_10000"]  # noqa: E731
        met = [r for r in timed if agreement(r) >= GOAL_AGREEMENT and r["p50_vs_fp32"] <= GOAL_P50_RATIO]
        fast = [r for r in timed if r["p50_vs_fp32"] <= GOAL_P50_RATIO]
        goal = f"goal (1 thread: p50 <= {GOAL_P50_RATIO}x FP32, agreement >= {100 * GOAL_AGREEMENT:.0f} % on test_jpeg_10000)"
        if met:
            lines.append(f"{name}: {goal} MET by " + ", ".join(
                f"{r['config']} ({100 * agreement(r):.2f} %, {r['p50_vs_fp32']:.2f}x)" for r in met))
        elif fast:
            best = max(fast, key=agreement)
            lines.append(f"{name}: {goal} MISSED: the best fast model, {best['config']}, agrees {100 * agreement(best):.2f} % "
                         f"at {best['p50_vs_fp32']:.2f}x")
        else:
            lines.append(f"{name}: {goal} MISSED: no INT8 model is at most {GOAL_P50_RATIO}x FP32")
    return lines


def minilm_section(threads: list[int], json_path: Path) -> list[dict] | str:
    """bench/minilm_bench.py in a fresh process, so its sessions' denormal setting takes effect."""
    script = Path(__file__).with_name("minilm_bench.py")
    done = subprocess.run([sys.executable, str(script), "--threads", *map(str, threads), "--json", str(json_path)],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return f"not run: bench/minilm_bench.py exited with {done.returncode}"
    print(done.stdout.split("\n", 1)[0])  # the sessions' settings
    return json.loads(json_path.read_text())["rows"]


def generic_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows])


def optional_section(module: str, function: str, **kwargs) -> list[dict] | str:
    """Rows from a sibling benchmark module, or why there are none."""
    try:
        measure = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        return f"not run: {exc}"
    return measure(**kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(plain.CHECKPOINTS), default=sorted(plain.CHECKPOINTS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--qat-epochs", type=int, help="QAT epochs for every network (default: each recipe's)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs-per-round", type=int, default=20)
    parser.add_argument("--warmup-runs", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[], choices=["mobilenet", "minilm"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (data_root() / "weights").is_dir():
        print(f"bench: error: shared data not found at {data_root()}; fix: set EDGEPRESS_DATA", file=sys.stderr)
        return 2
    started = time.time()
    sets = {stem: plain.load(stem) for stem in ("test_jpeg_10000", "test_raw_1017")}
    raw, jpeg = plain.load("train_raw_5085"), plain.load("train_jpeg_10000")
    calibration = raw  # ptq uses its first 512; accuracy-aware PTQ holds out 1000 of the rest for validation
    training = (np.concatenate([raw[0], jpeg[0]]), np.concatenate([raw[1], jpeg[1]]).astype(np.int64))
    results: dict = {"resnet": []}
    with tempfile.TemporaryDirectory(prefix="edgepress-bench-") as scratch:
        for name in args.models:
            results["resnet"] += bench_network(name, work=Path(scratch), sets=sets, calibration=calibration,
                                               training=training, args=args)
    print(resnet_table(results["resnet"]))
    if "mobilenet" not in args.skip:
        _log("mobilenet")
        results["mobilenet"] = optional_section("mobilenet_bench", "measure_mobilenet", threads=args.threads, log=_log)
        print("\nmobilenet:\n" + (results["mobilenet"] if isinstance(results["mobilenet"], str) else generic_table(results["mobilenet"])))
    goals = goal_lines(results["resnet"])
    if "minilm" not in args.skip:
        _log("minilm (its own process)")
        with tempfile.TemporaryDirectory(prefix="edgepress-bench-") as scratch:
            results["minilm"] = minilm_section(args.threads, Path(scratch) / "minilm.json")
        if isinstance(results["minilm"], str):
            print(f"\nminilm: {results['minilm']}")
        else:
            import minilm_bench

            print("\nminilm:\n" + minilm_bench.table(results["minilm"]))
            goals += [f"minilm {line}" for line in minilm_bench.goal_lines(results["minilm"])]
    results["goals"] = goals
    print("\n" + "\n".join(goals))
    import onnxruntime

    results["meta"] = {"onnxruntime": onnxruntime.__version__, "machine": platform.processor() or platform.machine(),
                       "isa": local_isa().describe(), "threads": args.threads,
                       "qat_epochs": {name: args.qat_epochs or QAT_EPOCHS[name] for name in args.models},
                       "seconds": round(time.time() - started, 1)}
    print(f"\nlatency: batch 1, {args.rounds} interleaved rounds x {args.runs_per_round} runs per thread count; "
          f"onnxruntime {results['meta']['onnxruntime']} on {results['meta']['isa']}; {results['meta']['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
