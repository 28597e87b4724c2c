"""MiniLM (all-MiniLM-L6-v2) under ONNX Runtime: FP32, fused FP32, dynamic INT8 (fused and not), 4-bit weights.

One run builds the five models with edgepress's own stage functions into a temporary folder,
embeds real sentences (the stdlib's help topics, `pydoc_topics:test`) with each, and times
batch-1 inference at a fixed sequence length on one padded sentence, the models interleaved
(shuffled rounds, every model once per round) so machine noise falls on all alike.

Quality is against the plain exported FP32 model: mean / min cosine similarity of the
embeddings, and top-5 neighbour agreement among the evaluated sentences. Latency ratios are
against the plain exported FP32 model and against the fused FP32 model, at the same thread
count, every session with the same settings: by default the recipe's (denormals flushed,
SkipLayerNormFusion off); `--denormals keep --disable-optimizer none` for ONNX Runtime's defaults.
Run it once per setting: ONNX Runtime's first session in a process sets the denormal flag.

    python bench/minilm_bench.py [--threads 1 2] [--sentences 300] [--seq-len 128] [--json PATH]
                                 [--denormals keep|zero] [--disable-optimizer NAME|none ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgepress.compress.dynamic_int8 import DynamicInt8Settings, quantize_int8
from edgepress.compress.int4_weights import Int4WeightsSettings, quantize_int4
from edgepress.compress.fuse_transformer import fuse_transformer
from edgepress.measure.metrics import METRICS
from edgepress.measure.scores.fidelity import cosine_per_sample
from edgepress.export.export_transformer import export_transformer
from edgepress.models.minilm import minilm_l6, minilm_tokenizer
from edgepress.models.text import load_pydoc, tokenize
from edgepress.runtime.device_runner import set_denormals
from edgepress.runtime.latency import interleaved_latency
from edgepress.runtime.session import open_session, predict_feeds

FP32, FUSED, INT8, INT8_UNFUSED, INT4 = "fp32", "fp32_fused", "int8_dynamic", "int8_dynamic_unfused", "int4_matmulnbits"
# The recipe's target settings (recipes/minilm-int8.toml): on x86 a padded sentence's masked attention leaves
# denormal floats, and ONNX Runtime 1.32's SkipLayerNormalization kernel is slower than Add + LayerNormalization.
RECIPE_DENORMALS, RECIPE_DISABLED_OPTIMIZERS = "zero", ("SkipLayerNormFusion",)
ROUNDS, RUNS_PER_ROUND, WARMUP_RUNS = 15, 20, 10


def build_models(*, folder: Path, seq_len: int, log) -> dict[str, Path]:
    """The plain export, its transformer fusion, both quantizations of the fused graph, and dynamic INT8 of the
    plain export (the recipe's model)."""
    model = minilm_l6()
    paths = {name: folder / f"{name}.onnx" for name in (FP32, FUSED, INT8, INT8_UNFUSED, INT4)}
    export_transformer(model=model, sequence_length=seq_len, path=paths[FP32], opset=17, log=log)
    fuse_transformer(source=paths[FP32], out=paths[FUSED], model_type="bert", num_heads=model.num_heads,
                     hidden_size=model.hidden_size, log=log)
    quantize_int8(source=paths[FUSED], out=paths[INT8], settings=DynamicInt8Settings(), log=log)
    quantize_int8(source=paths[FP32], out=paths[INT8_UNFUSED], settings=DynamicInt8Settings(), log=log)
    quantize_int4(source=paths[FUSED], out=paths[INT4], settings=Int4WeightsSettings(), log=log)
    return paths


def thread_flushes_denormals(denormals: str) -> bool:
    """Open a session with `denormals` and tell whether this thread now flushes denormals to zero.

    ONNX Runtime (1.32) sets the calling thread's flag once, from the first session a process opens, so
    call this before any other session: it multiplies 1e-30 by 1e-10, a denormal 1e-40 unless flushed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "denormal_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.full(4, 1e-10, np.float32), "c")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    set_denormals(options, denormals)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return bool(np.all(session.run(None, {"x": np.full(4, 1e-30, np.float32)})[0] == 0))


def measure_minilm(*, threads: list[int], sentences: int = 300, seq_len: int = 128, denormals: str = RECIPE_DENORMALS,
                   disabled_optimizers: tuple[str, ...] = RECIPE_DISABLED_OPTIMIZERS, log=print) -> list[dict]:
    """One row per (model, threads): size, quality against FP32, latency p50 / IQR and its ratio to FP32. Every
    session in this process gets the same settings (ONNX Runtime's first session sets the denormal flag)."""
    flushed = thread_flushes_denormals(denormals)
    if flushed != (denormals == "zero"):
        log(f"warning: asked for denormals {denormals!r}, but an earlier session in this process set this thread to "
            f"{'flush' if flushed else 'keep'} them; run bench/minilm_bench.py on its own")
    session = {"denormals": denormals, "disabled_optimizers": tuple(disabled_optimizers)}
    texts = load_pydoc("test")
    if not 6 <= sentences <= len(texts):
        raise ValueError(f"sentences must be 6 to {len(texts)} (the pydoc_topics:test set), got {sentences}")
    feeds = tokenize(texts[:sentences], tokenizer_path=minilm_tokenizer(), sequence_length=seq_len)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepress-minilm-") as scratch:
        paths = build_models(folder=Path(scratch), seq_len=seq_len, log=lambda text: None)
        log(f"built {', '.join(paths)} at sequence length {seq_len}")
        embeddings = {name: predict_feeds(open_session(path, threads=os.cpu_count() or 1, **session), feeds, batch_size=32)
                      for name, path in paths.items()}
        # the recipe's text metric, as the pipeline scores a stage against its reference
        quality = {name: METRICS["cosine"].compare({"output": values}, {"output": embeddings[FP32]}, None)
                   | {"cosine": float(cosine_per_sample(values, embeddings[FP32]).mean())}
                   for name, values in embeddings.items()}
        sample = {name: values[:1] for name, values in feeds.items()}  # batch 1: one sentence, padded to seq_len
        for count in threads:
            times = interleaved_latency(paths, sample, threads=count, rounds=ROUNDS, runs_per_round=RUNS_PER_ROUND,
                                        warmup_runs=WARMUP_RUNS, **session)
            p50 = {name: float(np.median(ms)) for name, ms in times.items()}
            log(f"{count} thread(s): " + ", ".join(f"{name} {value:.2f} ms" for name, value in p50.items()))
            for name, path in paths.items():
                q25, q75 = np.percentile(times[name], [25, 75])
                rows.append({"model": name, "threads": count, "size_bytes": path.stat().st_size,
                             "cosine_mean": quality[name]["cosine"], "cosine_min": quality[name]["cosine_min"],
                             "top5_agreement": quality[name]["top5_agreement"], "latency_p50_ms": p50[name],
                             "latency_iqr_ms": float(q75 - q25), "p50_vs_fp32": p50[name] / p50[FP32],
                             "p50_vs_fp32_fused": p50[name] / p50[FUSED], "runs": int(len(times[name])),
                             "session": {"denormals": denormals, "denormals_flushed": flushed,
                                         "disabled_optimizers": list(disabled_optimizers)}})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | threads | size | cosine mean | cosine min | top-5 agreement | p50 ms | IQR ms "
             "| p50 vs FP32 | p50 vs fused FP32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['threads']} | {r['size_bytes'] / 2**20:.1f} MiB | {r['cosine_mean']:.4f} "
              f"| {r['cosine_min']:.4f} | {100 * r['top5_agreement']:.1f} % | {r['latency_p50_ms']:.2f} "
              f"| {r['latency_iqr_ms']:.2f} | {r['p50_vs_fp32']:.2f}x | {r['p50_vs_fp32_fused']:.2f}x |" for r in rows]
    return "\n".join(lines)


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's goal at 1 thread: p50 at most 0.5x FP32 with mean cosine at least 0.99."""
    lines = []
    for row in (r for r in rows if r["threads"] == 1 and r["model"] in (INT8, INT8_UNFUSED, INT4)):
        met = row["p50_vs_fp32"] <= 0.5 and row["cosine_mean"] >= 0.99
        lines.append(f"{row['model']}: {row['p50_vs_fp32']:.2f}x FP32 p50 ({row['p50_vs_fp32_fused']:.2f}x fused), "
                     f"cosine {row['cosine_mean']:.4f}: goal (<= 0.5x, >= 0.99) {'MET' if met else 'MISSED'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--denormals", choices=("keep", "zero"), default=RECIPE_DENORMALS,
                        help=f"every session's denormal handling (default {RECIPE_DENORMALS}, as the recipe)")
    parser.add_argument("--disable-optimizer", action="append", dest="disabled_optimizers", metavar="NAME",
                        help=f"ONNX Runtime transformers every session skips (default {', '.join(RECIPE_DISABLED_OPTIMIZERS)}, "
                             "as the recipe); --disable-optimizer none for none")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    disabled = [n for n in (args.disabled_optimizers or RECIPE_DISABLED_OPTIMIZERS) if n != "none"]
    rows = measure_minilm(threads=args.threads, sentences=args.sentences, seq_len=args.seq_len, denormals=args.denormals,
                          disabled_optimizers=tuple(disabled), log=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"sessions: denormals {args.denormals}, disabled optimizers {disabled or 'none'} (FP32 and INT8 alike)")
    print(table(rows))
    print()
    print("\n".join(goal_lines(rows)))
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "sentences": args.sentences, "seq_len": args.seq_len, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
