"""edgepress `ptq` versus plain ONNX Runtime `quantize_static`, on the real CIFAR-10 ResNets.

One run, every model measured in the same process: accuracy on test_jpeg_10000 and
test_raw_1017, top-1 agreement with FP32, size, and batch-1 latency at 1 thread, timed in
interleaved rounds (each round times every model once, in a shuffled order) so machine noise
falls on all of them alike. Prints a table; --json PATH also writes the numbers.

    python bench/int8_vs_plain_ort.py [--models resnet20 resnet56] [--json results.json] [--peers]

--peers adds NNCF and Intel Neural Compressor, called as their documentation shows (bench/peers.py says how
to install them beside edgepress).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepress.compress.quant.conv_kernels import choose_conv_kernels
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.core.datapath import data_root
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.checkpoint import load_checkpoint
from edgepress.models.data import load_dataset, preprocess
from edgepress.models.zoo import build_model
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec
from edgepress.runtime.latency import interleaved_latency
from edgepress.runtime.session import open_session, predict

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
NORMALISE = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CALIBRATION_SAMPLES = 512

# What a user gets from plain quantize_static: QDQ, per-channel, MinMax, no other options.
PLAIN = {
    "ort U8S8": dict(activation_type="QUInt8", weight_type="QInt8", reduce_range=False),
    "ort S8S8": dict(activation_type="QInt8", weight_type="QInt8", reduce_range=False),
    "ort U8S8+reduce_range": dict(activation_type="QUInt8", weight_type="QInt8", reduce_range=True),
}


class _Reader:
    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self._it = iter([{name: inputs[i:i + 32]} for i in range(0, len(inputs), 32)])

    def get_next(self):
        return next(self._it, None)


def plain_quantize(source: Path, out: Path, calibration: np.ndarray, *, activation_type: str, weight_type: str,
                   reduce_range: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(source), str(out), _Reader("input", calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, activation_type=getattr(QuantType, activation_type),
                    weight_type=getattr(QuantType, weight_type))


def load(stem: str) -> tuple[np.ndarray, np.ndarray]:
    raw = load_dataset(DatasetSpec(dataset=f"cifar10:{stem}"))
    return preprocess(images=raw.images, spec=NORMALISE), raw.labels


def bench_model(model_name: str, *, work: Path, sets: dict, calibration: np.ndarray, args, failed: list[dict]
                ) -> list[dict]:
    print(f"[bench] {model_name}: export and quantize", file=sys.stderr, flush=True)
    model = build_model(name=f"cifar_{model_name}", entry=None, kwargs={})
    load_checkpoint(path=data_root() / "weights" / CHECKPOINTS[model_name], model=model)
    model.eval()
    paths = {"fp32": work / f"{model_name}-fp32.onnx"}
    export_onnx(model=model, input_shape=(3, 32, 32), path=paths["fp32"], settings=ExportSettings(), log=lambda _: None)
    for name, options in PLAIN.items():
        paths[name] = work / f"{model_name}-{name.replace(' ', '_').replace('+', '_')}.onnx"
        plain_quantize(paths["fp32"], paths[name], calibration, **options)
    paths["edgepress ptq"] = work / f"{model_name}-edgepress.onnx"
    quantize(source=paths["fp32"], out=paths["edgepress ptq"], calibration=calibration, settings=PtqSettings())
    # What the shipped recipes run: ptq, then each conv shape's kernel chosen by timing it here (choose_conv_kernels).
    paths["edgepress ptq + conv kernels"] = work / f"{model_name}-edgepress-kernels.onnx"
    choose_conv_kernels(paths["edgepress ptq"], paths["edgepress ptq + conv kernels"], threads=args.threads,
                        sample={"input": calibration[:1]}, log=lambda line: print(f"[bench] {line}", file=sys.stderr))
    if args.peers:
        from peers import PEERS

        for name, peer in PEERS.items():
            print(f"[bench] {model_name}: {name}", file=sys.stderr, flush=True)
            path = work / f"{model_name}-{name.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
            try:  # a peer that fails on a model is a result too
                peer(paths["fp32"], path, calibration)
                import onnx

                onnx.save(onnx.load(str(path)), str(path))  # weights a peer saved beside the file, inline: sizes compare
                open_session(path, threads=1)
            except Exception as error:  # noqa: BLE001
                failed.append({"model": model_name, "config": name, "error": str(error).splitlines()[0][:300]})
                continue
            paths[name] = path
    # The defaults before issue 20's graph work: the saturation guard everywhere, Q/DQ islands left open.
    paths["edgepress ptq (before issue 20)"] = work / f"{model_name}-edgepress-before.onnx"
    quantize(source=paths["fp32"], out=paths["edgepress ptq (before issue 20)"], calibration=calibration,
             settings=PtqSettings(saturation_guard="uint8_weights", simplify_qdq=False))

    print(f"[bench] {model_name}: accuracy on {', '.join(sets)}", file=sys.stderr, flush=True)
    top1 = {}
    for name, path in paths.items():
        session = open_session(path, threads=args.eval_threads)
        top1[name] = {s: predict(session, x, batch_size=256).argmax(1) for s, (x, _) in sets.items()}
    print(f"[bench] {model_name}: latency, {args.rounds} interleaved rounds x {args.runs_per_round} runs",
          file=sys.stderr, flush=True)
    sample = sets["test_raw_1017"][0][:1]
    times = interleaved_latency(paths, sample, threads=args.threads, rounds=args.rounds,
                                runs_per_round=args.runs_per_round, warmup_runs=args.warmup_runs)
    rows = []
    fp32_p50 = float(np.median(times["fp32"]))
    for name, path in paths.items():
        t = times[name]
        round_medians = np.median(t.reshape(args.rounds, -1), axis=1)
        rows.append({
            "model": model_name, "config": name, "size_bytes": path.stat().st_size,
            "accuracy": {s: float(np.mean(top1[name][s] == y)) for s, (_, y) in sets.items()},
            "agreement": {s: float(np.mean(top1[name][s] == top1["fp32"][s])) for s in sets},
            "latency_ms": {"p50": float(np.median(t)), "p90": float(np.percentile(t, 90)),
                           "p25": float(np.percentile(t, 25)), "p75": float(np.percentile(t, 75)), "runs": int(t.size),
                           "round_p50_min": float(round_medians.min()), "round_p50_max": float(round_medians.max())},
            "p50_vs_fp32": float(np.median(t)) / fp32_p50,
        })
    return rows


def table(rows: list[dict]) -> str:
    header = ("model", "config", "size KiB", "acc jpeg10k", "acc raw1017", "agree jpeg10k", "agree raw1017",
              "p50 ms", "p90 ms", "IQR ms", "round p50 range", "p50/fp32")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lat = r["latency_ms"]
        lines.append("| " + " | ".join([
            r["model"], r["config"], f"{r['size_bytes'] / 1024:.0f}",
            f"{100 * r['accuracy']['test_jpeg_10000']:.2f}%", f"{100 * r['accuracy']['test_raw_1017']:.2f}%",
            f"{100 * r['agreement']['test_jpeg_10000']:.2f}%", f"{100 * r['agreement']['test_raw_1017']:.2f}%",
            f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p75'] - lat['p25']:.3f}",
            f"{lat['round_p50_min']:.3f}-{lat['round_p50_max']:.3f}", f"{r['p50_vs_fp32']:.2f}x"]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(CHECKPOINTS), default=sorted(CHECKPOINTS))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for latency (default 1)")
    parser.add_argument("--eval-threads", type=int, default=2, help="threads for accuracy runs")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=25)
    parser.add_argument("--warmup-runs", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--peers", action="store_true", help="NNCF and Intel Neural Compressor too (bench/peers.py)")
    args = parser.parse_args()
    if args.peers:
        from peers import INSTALL, missing

        if missing():
            print(f"bench: error: --peers needs NNCF and onnx-neural-compressor ({missing()}); fix: {INSTALL}",
                  file=sys.stderr)
            return 2
    if not (data_root() / "weights").is_dir():
        print(f"bench: error: shared data not found at {data_root()}; fix: set EDGEPRESS_DATA", file=sys.stderr)
        return 2
    started = time.time()
    sets = {stem: load(stem) for stem in ("test_jpeg_10000", "test_raw_1017")}
    calibration = load("train_raw_5085")[0][:CALIBRATION_SAMPLES]
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="edgepress-bench-") as scratch:
        for model_name in args.models:
            rows += bench_model(model_name, work=Path(scratch), sets=sets, calibration=calibration, args=args,
                                failed=failed)
    print(table(rows))
    for failure in failed:
        print(f"\n{failure['model']}, {failure['config']}: failed: {failure['error']}")
    import onnxruntime

    meta = {"onnxruntime": onnxruntime.__version__, "machine": platform.processor() or platform.machine(),
            "threads": args.threads, "calibration_samples": CALIBRATION_SAMPLES,
            "edgepress_ptq_default": PtqSettings().__dict__, "seconds": round(time.time() - started, 1)}
    print(f"\nlatency: batch 1, {args.threads} thread(s), {args.rounds} interleaved rounds x {args.runs_per_round} runs; "
          f"onnxruntime {meta['onnxruntime']}; {meta['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "failed": failed}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
