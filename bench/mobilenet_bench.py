"""MobileNetV2 (depthwise convolutions) through INT8 with each quantization transform on and off.

The model is the zoo's `mobilenetv2_cifar` (32x32 layout: stem and stage 2 at stride 1) at width 0.35
(0.41 M parameters, the narrowest width in the MobileNetV2 paper), 10 classes: wider ones train too
slowly for a few minutes on two shared CPU cores. It is trained here from scratch on the CIFAR-10 training images
of the shared data (train_raw_5085 + train_jpeg_10000, 15,085 images; SGD, cosine schedule, crop and
flip) for as many epochs as fit `train_seconds_budget` (timed on a few steps first); the weights are
cached in a temporary folder keyed by those settings, so a rerun skips training, and a killed run
resumes from its last epoch.

Then, all in one process: FP32 ONNX; plain `quantize_static` with its default arguments; edgepress
`ptq` (defaults), + equalize, + bias_correction, + both; and `ptq` with fold_batchnorm = false on an
export that keeps its BatchNormalization nodes (both exporters fold BN in eval mode, so this export
turns constant folding off). Accuracy and top-1 agreement with FP32 on test_jpeg_10000 (10,000
images; test_raw_1017 too), and batch-1 latency timed in interleaved rounds (each round times every
model once, in a shuffled order; p50 and IQR over all runs) at each thread count.

    python bench/mobilenet_bench.py [--threads 1 2] [--train-seconds 600] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgepress.compress.quant.equalize import equalize_file
from edgepress.compress.training.loop import LoopSettings, fit, resume_key
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.compress.train import cross_entropy_loss_fn
from edgepress.core.datapath import data_root
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.data import load_dataset, preprocess
from edgepress.models.zoo import build_model
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec
from edgepress.runtime.latency import interleaved_latency
from edgepress.runtime.session import open_session, predict

MODEL = "mobilenetv2_cifar"
WIDTH = 0.35
TRAIN_SETS = ("train_raw_5085", "train_jpeg_10000")
TEST_SETS = ("test_jpeg_10000", "test_raw_1017")  # the first is the primary one
NORMALISE = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CALIBRATION_SAMPLES = 512
LOOP = dict(batch_size=64, learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
            augment="crop_flip", device="cpu", seed=0)
CACHE_VERSION = 1  # bump when training changes in a way the settings below do not show

VARIANTS: dict[str, PtqSettings | None] = {
    "ort defaults": None,  # quantize_static(model, out, reader) and nothing else
    "ptq": PtqSettings(),
    "ptq + equalize": PtqSettings(equalize=True),
    "ptq + bias_correction": PtqSettings(bias_correction=True),
    "ptq + equalize + bias_correction": PtqSettings(equalize=True, bias_correction=True),
    "ptq fold_batchnorm=false": PtqSettings(fold_batchnorm=False),
}


class _Reader:
    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self._it = iter([{name: inputs[i:i + 32]} for i in range(0, len(inputs), 32)])

    def get_next(self):
        return next(self._it, None)


def _load(stem: str) -> tuple[np.ndarray, np.ndarray]:
    raw = load_dataset(DatasetSpec(dataset=f"cifar10:{stem}"))
    return preprocess(images=raw.images, spec=NORMALISE), raw.labels.astype(np.int64)


def _build():
    return build_model(name=MODEL, entry=None, kwargs={"width_mult": WIDTH, "num_classes": 10})


def _cache_dir(train_seconds_budget: int) -> Path:
    settings = {"model": MODEL, "width": WIDTH, "train_sets": TRAIN_SETS, "normalise": asdict(NORMALISE),
                "loop": LOOP, "budget_s": train_seconds_budget, "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "edgepress-bench-mobilenetv2" / key


def _epochs_for_budget(model, x, y, budget_s: int, log: Callable[[str], None]) -> int:
    """Time a few training steps of a copy and fit whole epochs into the budget."""
    import torch

    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.01, momentum=0.9)
    batch = LOOP["batch_size"]
    times = []
    for step in range(6):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(probe(x[step * batch:(step + 1) * batch]), y[step * batch:(step + 1) * batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    epoch_s = float(np.median(times[1:])) * (len(x) / batch) * 1.1  # augmentation and bookkeeping
    epochs = max(1, int(budget_s // epoch_s))
    log(f"[mobilenet] about {epoch_s:.0f} s per epoch here: {epochs} epochs in {budget_s} s")
    return epochs


def trained_model(*, train_seconds_budget: int, log: Callable[[str], None], train_threads: int = 1):
    """The trained torch model and its training record, from the cache when it is there.

    `train_threads`: torch threads while training. One, because on this 2-core machine shared with
    other work a training step of this model took 0.95 s on 1 thread and about 10 s on 2 (OpenMP
    threads waiting on each other while the other core was busy)."""
    import torch

    folder = _cache_dir(train_seconds_budget)
    folder.mkdir(parents=True, exist_ok=True)
    model = _build()
    weights, record_file = folder / "weights.pt", folder / "record.json"
    if weights.is_file() and record_file.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        record = json.loads(record_file.read_text())
        log(f"[mobilenet] trained weights from the cache {folder} ({record['epochs']} epochs, {record['train_seconds']} s)")
        return model.eval(), record
    threads_before = torch.get_num_threads()
    torch.set_num_threads(train_threads)
    parts = [_load(stem) for stem in TRAIN_SETS]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    plan = folder / "plan.json"  # the epoch count is measured once, so a resumed run keeps the same schedule
    if not plan.is_file():
        plan.write_text(json.dumps({"epochs": _epochs_for_budget(model, x, y, train_seconds_budget, log)}))
    settings = LoopSettings(epochs=json.loads(plan.read_text())["epochs"], **LOOP)
    log(f"[mobilenet] training {MODEL} width {WIDTH} on {len(x)} images for {settings.epochs} epochs")
    started = time.time()
    history = fit(model, inputs=x, labels=y, settings=settings, loss_fn=cross_entropy_loss_fn(), resume_dir=folder,
                  key=resume_key(source_sha256=f"{MODEL}-w{WIDTH}-scratch", settings=settings), log=log,
                  label="mobilenetv2")
    torch.set_num_threads(threads_before)
    record = {"epochs": settings.epochs, "train_seconds": round(time.time() - started, 1), "history": history,
              "train_images": int(len(x))}
    torch.save(model.state_dict(), weights)
    record_file.write_text(json.dumps(record))
    return model.eval(), record


def _export_keeping_batchnorm(model, path: Path) -> None:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False, opset_version=18,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _plain_ort(source: Path, out: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import quantize_static

    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(source), str(out), _Reader("input", calibration))


def _transform_note(done: dict[str, Any]) -> str:
    notes = []
    transforms = done.get("transforms", {})
    if "equalize" in transforms:
        eq = transforms["equalize"]
        notes.append(f"CLE {eq['pairs']} pairs, ReLU6 channels unscaled {eq['clip_channels_kept_unscaled']}/"
                     f"{eq['clip_channels_total']}, evenness {eq['range_evenness_before']:.2f}->{eq['range_evenness_after']:.2f}")
    if "bias_correction" in transforms:
        bc = transforms["bias_correction"]
        held = bc["held_out"]
        notes.append(f"bias corr. {bc['nodes_corrected']} nodes, max shift {bc['max_abs_shift']:.3g}, held-out "
                     f"({held['samples']}) error {held['output_error_before']:.2e}->{held['output_error_after']:.2e}")
    fold = transforms.get("fold_batchnorm")
    if fold is not None and fold["batchnorm_nodes_quantized"]:
        notes.append(f"{fold['batchnorm_nodes_quantized']} BatchNormalization nodes kept")
    return "; ".join(notes)


def measure_mobilenet(*, threads: list[int], log: Callable[[str], None] = print,
                      train_seconds_budget: int = 600, rounds: int = 20, runs_per_round: int = 20,
                      warmup_runs: int = 20) -> list[dict]:
    """Train (or load) MobileNetV2, quantize it every way, and measure each model; one row per
    variant and thread count."""
    model, record = trained_model(train_seconds_budget=train_seconds_budget, log=log)
    tests = {stem: _load(stem) for stem in TEST_SETS}
    train_x = np.concatenate([_load(stem)[0] for stem in TRAIN_SETS])
    calibration = train_x[np.sort(np.random.default_rng(0).permutation(len(train_x))[:CALIBRATION_SAMPLES])]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgepress-mobilenet-") as scratch:
        work = Path(scratch)
        paths = {"fp32": work / "fp32.onnx"}
        export_onnx(model=model, input_shape=(3, 32, 32), path=paths["fp32"], settings=ExportSettings(), log=lambda _: None)
        with_bn = work / "fp32-keep-bn.onnx"
        _export_keeping_batchnorm(model, with_bn)
        done: dict[str, dict] = {}
        paths["fp32 + equalize (float only)"] = work / "fp32-equalized.onnx"
        done["fp32 + equalize (float only)"] = {"transforms": {"equalize": equalize_file(
            paths["fp32"], paths["fp32 + equalize (float only)"], calibration)}}
        for variant, settings in VARIANTS.items():
            log(f"[mobilenet] quantize: {variant}")
            paths[variant] = work / f"{variant.replace(' ', '_').replace('+', 'and').replace('=', '-')}.onnx"
            started = time.time()
            if settings is None:
                _plain_ort(paths["fp32"], paths[variant], calibration)
                done[variant] = {}
            else:
                source = with_bn if not settings.fold_batchnorm else paths["fp32"]
                done[variant] = quantize(source=source, out=paths[variant], calibration=calibration, settings=settings)
            done[variant]["quantize_seconds"] = round(time.time() - started, 1)
        log(f"[mobilenet] accuracy on {', '.join(TEST_SETS)}")
        logits = {name: {stem: predict(open_session(path, threads=1), x, batch_size=256) for stem, (x, _) in tests.items()}
                  for name, path in paths.items()}
        for t in threads:
            log(f"[mobilenet] latency at {t} thread(s): {rounds} interleaved rounds x {runs_per_round} runs")
            times = interleaved_latency(paths, tests[TEST_SETS[1]][0][:1], threads=t, rounds=rounds,
                                        runs_per_round=runs_per_round, warmup_runs=warmup_runs)
            fp32_p50 = float(np.median(times["fp32"]))
            for name, path in paths.items():
                p25, p50, p75 = np.percentile(times[name], [25, 50, 75])
                primary, labels = logits[name][TEST_SETS[0]], tests[TEST_SETS[0]][1]
                reference = logits["fp32"][TEST_SETS[0]]
                rows.append({
                    "model": f"{MODEL} w{WIDTH} ({record['epochs']} epochs)", "variant": name, "threads": t, "size_bytes": path.stat().st_size,
                    "accuracy": float(np.mean(primary.argmax(1) == labels)),
                    "agreement_with_fp32": float(np.mean(primary.argmax(1) == reference.argmax(1))),
                    "output_error_vs_fp32": float(np.sum((primary - reference) ** 2) / np.sum(reference ** 2)),
                    f"accuracy_{TEST_SETS[1]}": float(np.mean(logits[name][TEST_SETS[1]].argmax(1) == tests[TEST_SETS[1]][1])),
                    "latency_p50_ms": float(p50), "latency_iqr_ms": float(p75 - p25),
                    "p50_vs_fp32": float(p50) / fp32_p50, "runs": int(times[name].size),
                    "quantize_seconds": done.get(name, {}).get("quantize_seconds"),
                    "note": _transform_note(done.get(name, {})),
                })
    return rows


# (header, cell) for the Markdown table
COLUMNS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("model", lambda r: r["model"]), ("variant", lambda r: r["variant"]), ("threads", lambda r: str(r["threads"])),
    ("size KiB", lambda r: f"{r['size_bytes'] / 1024:.0f}"),
    ("acc jpeg10k", lambda r: f"{100 * r['accuracy']:.2f}%"),
    ("acc raw1017", lambda r: f"{100 * r['accuracy_test_raw_1017']:.2f}%"),
    ("agree w/ FP32", lambda r: f"{100 * r['agreement_with_fp32']:.2f}%"),
    ("output err", lambda r: f"{r['output_error_vs_fp32']:.2e}"),
    ("p50 ms", lambda r: f"{r['latency_p50_ms']:.3f}"), ("IQR ms", lambda r: f"{r['latency_iqr_ms']:.3f}"),
    ("p50/fp32", lambda r: f"{r['p50_vs_fp32']:.2f}x"), ("what the transforms did", lambda r: r["note"]),
)


def table(rows: list[dict]) -> str:
    cells = [[header for header, _ in COLUMNS], ["---"] * len(COLUMNS)] + [[cell(r) for _, cell in COLUMNS] for r in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads for latency")
    parser.add_argument("--train-seconds", type=int, default=600, help="training budget (default 600)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not (data_root() / "cifar10").is_dir():
        print(f"mobilenet_bench: error: shared data not found at {data_root()}; fix: set EDGEPRESS_DATA", file=sys.stderr)
        return 2
    import onnxruntime

    started = time.time()
    rows = measure_mobilenet(threads=args.threads, train_seconds_budget=args.train_seconds, rounds=args.rounds,
                             runs_per_round=args.runs_per_round, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows) + f"\n\nlatency: batch 1, {args.rounds} interleaved rounds x {args.runs_per_round} runs per model; "
          f"onnxruntime {onnxruntime.__version__}; calibration {CALIBRATION_SAMPLES} training images; "
          f"{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
