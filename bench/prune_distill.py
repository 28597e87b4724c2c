"""Prune the real ResNet-56 to at most 50 % of its MACs, recover with and without a teacher.

The teacher: the unpruned model fine-tuned for `--teacher-epochs` on the same training set first
(0 = the checkpoint as is). Two thirds of the training images carry the JPEG corruption of
test_jpeg_10000; the checkpoint is wrong on 16.8 % of those test images, and a student that copies
it inherits that, while plain cross-entropy learns the domain from the labels. Both students start
from the same pruned adapted model, so the only difference between them is the teacher's loss.

The pruning: `--depth-blocks` whole residual blocks removed (greedy, output KL), then block-inner
channels cut to the MAC target with kept widths rounded to `--round-to` (ONNX Runtime's NCHWc
kernels work in blocks of 8 channels on AVX2; other widths cost latency MACs do not show).
For contrast, in the same run: depth pruning alone to the MAC target, channel pruning alone,
and unstructured 50 % magnitude sparsity (zeros in dense tensors), none of them fine-tuned.

Trains on train_raw_5085 + train_jpeg_10000 (CPU, the shipped fine-tuning loop), then measures
every model under ONNX Runtime in one run: accuracy on test_raw_1017 and test_jpeg_10000,
agreement with the unpruned model, parameters, MACs, ONNX size, and batch-1 latency at 1 thread
in interleaved rounds. Prints a table and the issue's goals as MET / NOT MET; --json PATH too.

    python bench/prune_distill.py [--epochs 8] [--teacher-epochs 2] [--depth-blocks 6] [--train-limit N] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepress.compress.prune_depth import DepthSettings, remove_blocks
from edgepress.compress.distill import teacher_loss_fn
from edgepress.compress.training.loop import LoopSettings, fit
from edgepress.compress.prune import PruneSettings, prune_to_macs
from edgepress.compress.sparsify import SparsifySettings, sparsify
from edgepress.compress.train import cross_entropy_loss_fn
from edgepress.measure.sizes import gzip_size_bytes
from edgepress.core.datapath import data_root
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.checkpoint import load_checkpoint
from edgepress.models.data import load_dataset, preprocess
from edgepress.models.zoo import build_model
from edgepress.io.onnx_stats import count_params_and_macs
from edgepress.io.torch_artifact import count_macs
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec
from edgepress.runtime.session import open_session, predict


from edgepress.runtime.latency import interleaved_latency

NORMALISE = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TESTS = ("test_raw_1017", "test_jpeg_10000")
TEACHER = "unpruned, fine-tuned (teacher)"


def load(stem: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    raw = load_dataset(DatasetSpec(dataset=f"cifar10:{stem}", limit=limit))
    return preprocess(images=raw.images, spec=NORMALISE), raw.labels.astype(np.int64)


def _round_range(times_ms: np.ndarray, *, rounds: int) -> list[float]:
    """[lowest, highest] per-round median: how far the machine's slow spells moved one model."""
    medians = np.median(times_ms.reshape(rounds, -1), axis=1)
    return [float(medians.min()), float(medians.max())]


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--teacher-epochs", type=int, default=2,
                        help="fine-tune the unpruned model on the training set before it teaches (0 = as is)")
    parser.add_argument("--teacher-learning-rate", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher's soft targets")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--macs-target", type=float, default=0.5)
    parser.add_argument("--depth-blocks", type=int, default=6, help="residual blocks removed before channel pruning")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--importance", default="l1", choices=["l1", "l2", "bn_scale"])
    parser.add_argument("--train-limit", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (data_root() / "weights").is_dir():
        print(f"bench: error: shared data not found at {data_root()}; fix: set EDGEPRESS_DATA", file=sys.stderr)
        return 2
    started = time.time()
    torch.set_num_threads(2)
    parts = [load("train_raw_5085"), load("train_jpeg_10000")]
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if args.train_limit:
        train_x, train_y = train_x[:args.train_limit], train_y[:args.train_limit]
    tests = {stem: load(stem) for stem in TESTS}

    unpruned = build_model(name="cifar_resnet56", entry=None, kwargs={})
    load_checkpoint(path=data_root() / "weights" / "resnet56-4bfd9763.th", model=unpruned)
    unpruned.eval()
    inputs, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    train_seconds = {}
    ce_loss = cross_entropy_loss_fn()
    teacher = copy.deepcopy(unpruned)
    if args.teacher_epochs:
        say(f"teacher: fine-tuning the unpruned model for {args.teacher_epochs} epochs on {len(inputs)} images")
        began = time.time()
        fit(teacher, inputs=inputs, labels=labels, loss_fn=ce_loss, resume_dir=None, key="teacher",
            log=lambda m: None, label="teacher",
            settings=LoopSettings(epochs=args.teacher_epochs, batch_size=args.batch_size,
                                  learning_rate=args.teacher_learning_rate, augment="crop_flip", weight_decay=5e-4))
        train_seconds[TEACHER] = time.time() - began
    teacher.eval()
    shape = (3, 32, 32)
    base_macs = count_macs(teacher, shape)
    scoring = torch.from_numpy(train_x[:256])
    shallow, removed = remove_blocks(teacher, inputs=scoring, settings=DepthSettings(blocks=args.depth_blocks),
                                     input_shape=shape)
    # The depth-only contrast ranks in one shot: greedy re-scoring of 25 blocks 14 times costs minutes.
    depth_only, _ = remove_blocks(teacher, inputs=scoring, input_shape=shape,
                                  settings=DepthSettings(macs_target=args.macs_target, ranking="one_shot"))
    share = args.macs_target * base_macs / count_macs(shallow, shape)
    pruned, ratio = prune_to_macs(shallow, input_shape=shape,
                                  settings=PruneSettings(macs_target=share, importance=args.importance,
                                                         round_to=args.round_to))
    say(f"removed {len(removed)} blocks ({', '.join(r['block'] for r in removed)}), then channel ratio {ratio:.3f}")
    channels_only, _ = prune_to_macs(teacher, input_shape=shape,
                                     settings=PruneSettings(macs_target=args.macs_target, importance=args.importance,
                                                            round_to=args.round_to))
    sparse, sparsity = sparsify(teacher, settings=SparsifySettings(sparsity=0.5))
    loop = LoopSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        warmup_epochs=1 if args.epochs > 1 else 0, augment="crop_flip", weight_decay=5e-4)
    kd_loss = teacher_loss_fn(teacher, alpha=args.alpha, temperature=args.temperature)

    models = {"unpruned": unpruned, **({TEACHER: teacher} if args.teacher_epochs else {}), "depth only, no fine-tuning": depth_only,
              "channels only, no fine-tuning": channels_only, "unstructured 50 % sparse, no fine-tuning": sparse,
              "pruned, no fine-tuning": pruned}
    for name, loss in (("pruned + distillation", kd_loss), ("pruned + cross-entropy", ce_loss)):
        student = copy.deepcopy(pruned)
        say(f"{name}: {args.epochs} epochs on {len(inputs)} images")
        began = time.time()
        fit(student, inputs=inputs, labels=labels, settings=loop, loss_fn=loss, resume_dir=None, key=name,
            log=lambda m: None, label=name)
        train_seconds[name] = time.time() - began
        models[name] = student

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepress-bench-") as scratch:
        paths = {}
        for index, (name, model) in enumerate(models.items()):
            paths[name] = Path(scratch) / f"{index}.onnx"
            export_onnx(model=model.eval(), input_shape=(3, 32, 32), path=paths[name], settings=ExportSettings(),
                        log=lambda m: None)
        say("accuracy under ONNX Runtime")
        top1 = {name: {s: predict(open_session(p, threads=2), x, batch_size=256).argmax(1) for s, (x, _) in tests.items()}
                for name, p in paths.items()}
        say(f"latency: {args.rounds} interleaved rounds x {args.runs_per_round} runs, 1 thread")
        times = interleaved_latency(paths, tests["test_raw_1017"][0][:1], threads=1, rounds=args.rounds,
                                    runs_per_round=args.runs_per_round, warmup_runs=50)
        base_p50 = float(np.median(times["unpruned"]))
        teacher_row = TEACHER if args.teacher_epochs else "unpruned"
        for name, path in paths.items():
            params, macs = count_params_and_macs(path)
            rows.append({"model": name, "params": params, "macs": macs, "size_bytes": path.stat().st_size,
                         "size_gzip_bytes": gzip_size_bytes(path),
                         "accuracy": {s: float(np.mean(top1[name][s] == y)) for s, (_, y) in tests.items()},
                         "agreement": {s: float(np.mean(top1[name][s] == top1["unpruned"][s])) for s in tests},
                         "agreement_with_teacher": {s: float(np.mean(top1[name][s] == top1[teacher_row][s]))
                                                    for s in tests},
                         "p50_ms": float(np.median(times[name])), "p90_ms": float(np.percentile(times[name], 90)),
                         "iqr_ms": float(np.subtract(*np.percentile(times[name], [75, 25]))),
                         "round_p50_range_ms": _round_range(times[name], rounds=args.rounds),
                         "p50_vs_unpruned": float(np.median(times[name])) / base_p50,
                         "train_seconds": train_seconds.get(name)})

    header = ("| model | params | MACs | size KiB | gzip KiB | acc raw1017 | acc jpeg10k | agree jpeg10k | agree teacher jpeg10k | p50 ms | "
              "p90 ms | IQR ms | round p50 range | p50 vs unpruned | train s |")
    print(header + "\n|" + "---|" * 15)
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | {r['size_bytes'] / 1024:.0f} | {r['size_gzip_bytes'] / 1024:.0f} | "
              f"{100 * r['accuracy']['test_raw_1017']:.2f}% | {100 * r['accuracy']['test_jpeg_10000']:.2f}% | "
              f"{100 * r['agreement']['test_jpeg_10000']:.2f}% | "
              f"{100 * r['agreement_with_teacher']['test_jpeg_10000']:.2f}% | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['iqr_ms']:.3f} | "
              f"{r['round_p50_range_ms'][0]:.3f}-{r['round_p50_range_ms'][1]:.3f} | "
              f"{r['p50_vs_unpruned']:.2f}x | {r['train_seconds'] or 0:.0f} |")
    by_name = {r["model"]: r for r in rows}
    distill_seconds = train_seconds["pruned + distillation"] + train_seconds.get(TEACHER, 0.0)
    kd, ce, base = by_name["pruned + distillation"], by_name["pruned + cross-entropy"], by_name["unpruned"]
    goals = {
        "MACs at most 50 % of unpruned": kd["macs"] <= 0.5 * base["macs"],
        "p50 at most 0.6x unpruned": kd["p50_vs_unpruned"] <= 0.6,
        "test_raw_1017 within 1.5 points of unpruned": base["accuracy"]["test_raw_1017"] - kd["accuracy"]["test_raw_1017"] <= 0.015,
        "distillation beats plain fine-tuning on both test sets": all(
            kd["accuracy"][s] > ce["accuracy"][s] for s in TESTS),
        "teacher fine-tuning + distillation within 30 minutes": distill_seconds <= 1800,
    }
    print()
    for goal, met in goals.items():
        print(f"- {goal}: {'MET' if met else 'NOT MET'}")
    print(f"\nremoved blocks {[r['block'] for r in removed]}; unstructured sparsity {sparsity:.3f}")
    print(f"distillation alpha {args.alpha}, temperature {args.temperature}; teacher fine-tuned {args.teacher_epochs} "
          f"epochs at lr {args.teacher_learning_rate}; teacher + distillation {distill_seconds:.0f} s")
    print(f"channel ratio {ratio:.3f} (round_to {args.round_to}); {args.epochs} epochs, batch {args.batch_size}, lr {args.learning_rate}, "
          f"{len(inputs)} training images; total {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goals": goals, "ratio": ratio, "removed_blocks": removed,
                                                    "args": vars(args)}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
