"""edgepress device runner: one file, copied to the device and run there; needs Python 3.8+, onnxruntime, numpy.

    python3 device_runner.py bench MODEL.onnx [--compare OTHER.onnx] [--threads N] [--runs N | --duration S]
                                             [--warmup N|auto] [--inputs X.npz] [--dim NAME=SIZE ...]
                                             [--denormals keep|zero] [--disable-optimizer NAME ...]
    python3 device_runner.py predict MODEL.onnx --inputs X.npz --out Y.npz [--threads N] [--batch-size N]
    python3 device_runner.py probe      (what the device has: Python, onnxruntime, numpy, CPU)

Prints one JSON object on stdout (human progress goes to stderr). Bad input: {"error": ..., "fix": ...}, exit 2.
While it times, bench also prints a progress line {"partial": true, "runs": N, "new_samples_ms": [[...]], ...} on
stdout about once a second: the timings measured since the previous line (the first line also carries a "header"
with what summarize() needs). A device that dies mid-run thus loses no timing that reached the host, and the host
rebuilds the statistics from those lines with summarize(). Only the last line without "partial" is the result.
It imports nothing of edgepress and no torch: the device needs only `pip install onnxruntime numpy`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
import zipfile

EXIT_ERROR = 2
BOOTSTRAP_RESAMPLES = 2000
SETTLE_WINDOW_RUNS = 10
SETTLE_TOLERANCE = 0.03  # warm-up ends when two consecutive windows' medians differ by less than this share
SETTLE_MAX_RUNS = 1000
RANDOM_INPUT_LIMIT = 1 << 30  # bytes of random inputs at most: a model's declared shapes may be hostile
# Seconds between progress lines: what a device that dies mid-run loses at most. Each line carries only the new
# timings (every timing once in all), so the output grows with the runs, not with their square.
PROGRESS_INTERVAL_S = 1.0
PR_SET_PDEATHSIG = 1  # prctl(2), linux/prctl.h


class BadInput(Exception):
    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _import_runtime():
    try:
        import numpy
        import onnxruntime
    except ImportError as exc:
        raise BadInput(f"the device's Python ({sys.executable}) cannot import {exc.name}",
                       "pip install onnxruntime numpy for that Python, or point the target at another one") from None
    return numpy, onnxruntime


# ---------------------------------------------------------------- statistics

def percentile_summary(np, samples_ms) -> dict:
    p50, p90, p95, p99 = np.percentile(samples_ms, [50, 90, 95, 99])
    mean = float(samples_ms.mean())
    std = float(samples_ms.std(ddof=1)) if samples_ms.size > 1 else 0.0
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99), "mean": mean, "std": std,
            "min": float(samples_ms.min()), "max": float(samples_ms.max()), "cv": std / mean if mean > 0 else 0.0}


def bootstrap_medians(np, samples_ms, *, rng, resamples: int = BOOTSTRAP_RESAMPLES):
    """Medians of `resamples` bootstrap resamples, drawn in chunks so memory stays small on a device."""
    n = samples_ms.size
    medians = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        medians[start:start + count] = np.median(samples_ms[rng.integers(0, n, size=(count, n))], axis=1)
    return medians


def paired_round_ratios(np, first_ms, second_ms, *, round_runs: int, rng, resamples: int = BOOTSTRAP_RESAMPLES):
    """Ratios of medians over resamples of whole interleaved rounds: a round of one model and the adjacent
    round of the other saw the same machine, so rounds are resampled as pairs (a block bootstrap). Resampling
    single runs would treat a slow spell's runs as independent and give too narrow an interval."""
    rounds = min(first_ms.size, second_ms.size) // round_runs
    first = first_ms[:rounds * round_runs].reshape(rounds, round_runs)
    second = second_ms[:rounds * round_runs].reshape(rounds, round_runs)
    ratios = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(first.size, 1)))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        picked = rng.integers(0, rounds, size=(count, rounds))
        ratios[start:start + count] = (np.median(first[picked].reshape(count, -1), axis=1)
                                       / np.median(second[picked].reshape(count, -1), axis=1))
    return ratios


def ci95(np, values) -> list:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


# ---------------------------------------------------------------- inputs

_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(bool)": "bool"}


def parse_dims(pairs) -> dict:
    dims = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not value.isdigit() or int(value) <= 0:
            raise BadInput(f"--dim {pair!r} is not NAME=SIZE with a positive SIZE", "write e.g. --dim batch=1")
        dims[name] = int(value)
    return dims


def random_feed(np, session, *, dims: dict, seed: int) -> dict:
    """One input per model input: free dimensions from `dims` (by name) or 1; token ids small, masks ones.
    A model that declares inputs of more than RANDOM_INPUT_LIMIT bytes in all is refused before any is made."""
    rng = np.random.default_rng(seed)
    feed = {}
    used = set()
    total = 0
    for node in session.get_inputs():
        shape = []
        for dim in node.shape:
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:
                shape.append(dims.get(str(dim), 1))
                used.add(str(dim))
        dtype = _NUMPY_TYPES.get(node.type)
        if dtype is None:
            raise BadInput(f"input {node.name!r} has type {node.type}, which random inputs do not cover",
                           "pass real inputs with --inputs FILE.npz")
        total += int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        if total > RANDOM_INPUT_LIMIT:
            raise BadInput(f"the model's inputs need more than {RANDOM_INPUT_LIMIT >> 30} GiB of random values "
                           f"(input {node.name!r} has shape {shape})",
                           "give free dimensions smaller sizes with --dim NAME=SIZE, or pass --inputs FILE.npz")
        if dtype.startswith("float"):
            feed[node.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        elif dtype == "bool" or "mask" in node.name:
            feed[node.name] = np.ones(shape, dtype=dtype)
        elif "type" in node.name:  # token_type_ids
            feed[node.name] = np.zeros(shape, dtype=dtype)
        else:
            feed[node.name] = rng.integers(0, 100, size=shape).astype(dtype)
    unknown = sorted(set(dims) - used)
    if unknown:
        names = sorted({str(d) for node in session.get_inputs() for d in node.shape if not isinstance(d, int)})
        raise BadInput(f"--dim names {unknown} match no free dimension of the model",
                       f"the model's free dimensions are {names or 'none'}")
    return feed


def npz_feed(np, session, path: str) -> dict:
    """Inputs from an npz file: arrays named after the model's inputs, or one array for a one-input model."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as exc:
        raise BadInput(f"cannot read inputs {path!r}: {type(exc).__name__}: {exc}",
                       "pass an .npz written by numpy.savez") from None
    inputs = session.get_inputs()
    if len(inputs) == 1 and len(arrays) == 1:
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    missing = [node.name for node in inputs if node.name not in arrays]
    if missing:
        raise BadInput(f"inputs {path!r} lack arrays named {missing} (it holds {sorted(arrays)})",
                       "save one array per model input, named after the input")
    feed = {}
    for node in inputs:
        value = arrays[node.name]
        want = _NUMPY_TYPES.get(node.type)
        if want is not None and str(value.dtype) != want:
            value = value.astype(want)
        if len(value.shape) != len(node.shape) or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(node.shape, value.shape)):
            raise BadInput(f"input {node.name!r} has shape {list(value.shape)}, the model wants {node.shape}",
                           "reshape the arrays in the npz to the model's input shape")
        feed[node.name] = value
    return feed


# ---------------------------------------------------------------- sessions and timing

_ORT_NOISE = (
    (re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : "), ""),
    (re.compile(r"^Load model from .*? failed:"), ""),
    # a source location, a C++ signature and the failed check that precede the sentence a person can read
    (re.compile(r"/onnxruntime_src/\S+:\d+ [^(]*\(.*?\) (?:\S.*? was false\. )?(?=[A-Z])"), ""),
    (re.compile(r'In Node, \("([^"]*)", (\S+), "[^"]*", -?\d+\) : \(.*?\) -> \(.*?\) , '), r'in node "\1" (\2): '),
)


def ort_reason(exc: BaseException, limit: int = 300) -> str:
    """ONNX Runtime's message on one line, without its error code, source locations and node signatures,
    so that the reason itself (at the end) survives the cut to `limit` characters."""
    text = " ".join(str(exc).split())
    for pattern, replacement in _ORT_NOISE:
        text = pattern.sub(replacement, text)
    return text[:limit] or type(exc).__name__


def set_denormals(options, denormals: str) -> None:
    """"zero": flush denormal floats to zero. x86 services arithmetic on them in microcode: a padded sequence's
    masked attention scores leave exp() at the smallest normal float, and Softmax and the scores x V MatMul
    then run several times slower. Flushing them changes results by less than 1e-37."""
    if denormals == "zero":
        options.add_session_config_entry("session.set_denormal_as_zero", "1")


def open_session(ort, path: str, args):
    if not os.path.isfile(path):
        raise BadInput(f"model {path!r} does not exist on the device", "check the path, or the copy to the device")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = args.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if args.spinning != "default":
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spinning == "on" else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if args.spinning == "on" else "0")
    set_denormals(options, args.denormals)
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(args.disabled_optimizers or ()))
    except Exception as exc:  # ORT raises several types for a corrupt or unsupported file
        raise BadInput(f"ONNX Runtime cannot load {path!r}: {ort_reason(exc)}",
                       "re-export the model; check it with onnx.checker") from None
    return session, (time.perf_counter() - started) * 1e3


def session_settings(args) -> dict:
    return {"denormals": args.denormals, "disabled_optimizers": sorted(args.disabled_optimizers or ())}


def run_once_ms(session, feed) -> float:
    started = time.perf_counter_ns()
    session.run(None, feed)
    return (time.perf_counter_ns() - started) / 1e6


def first_run(session, feed) -> float:
    try:
        return run_once_ms(session, feed)
    except Exception as exc:
        raise BadInput(f"the model does not run on these inputs: {ort_reason(exc)}",
                       "give inputs of the model's shapes (--inputs FILE.npz, or --dim NAME=SIZE); if they are "
                       "right, the model itself fails on them: re-export it") from None


def warm_up(np, sessions, feeds, warmup: str) -> int:
    """Untimed runs: a fixed count, or ('auto') windows until two in a row agree on their median."""
    if warmup != "auto":
        for _ in range(int(warmup)):
            for session, feed in zip(sessions, feeds):
                session.run(None, feed)
        return int(warmup)
    done, previous = 0, None
    while done < SETTLE_MAX_RUNS:
        window = [np.median([run_once_ms(s, f) for _ in range(SETTLE_WINDOW_RUNS)]) for s, f in zip(sessions, feeds)]
        done += SETTLE_WINDOW_RUNS
        if previous is not None and all(abs(w - p) <= SETTLE_TOLERANCE * p for w, p in zip(window, previous)):
            break
        previous = window
    return done


def timed_runs(sessions, feeds, *, runs: int, duration_s: float, round_runs: int, seed: int, progress=None):
    """Per-run ms for each session. With two, they alternate in rounds of `round_runs` in a shuffled order, so
    slow spells of a noisy machine fall on both alike. Stops after `runs` runs each, or after `duration_s`.
    `progress(new_samples, count)` is called between whole rounds, at most every PROGRESS_INTERVAL_S, with the
    timings since its previous call (never inside a round, so the interleaved rounds stay whole)."""
    samples = [[] for _ in sessions]
    order = list(range(len(sessions)))
    rng = random.Random(seed)
    deadline = time.perf_counter() + duration_s if duration_s else None
    reported, next_report = 0, time.perf_counter() + PROGRESS_INTERVAL_S
    while True:
        rng.shuffle(order)
        for index in order:
            for _ in range(round_runs):
                samples[index].append(run_once_ms(sessions[index], feeds[index]))
        count = len(samples[0])
        if (deadline is None and count >= runs) or (deadline is not None and time.perf_counter() >= deadline
                                                     and count >= 10):
            return [s[:runs] if deadline is None else s for s in samples]
        if progress is not None and time.perf_counter() >= next_report:
            progress([s[reported:] for s in samples], count)
            reported, next_report = count, time.perf_counter() + PROGRESS_INTERVAL_S


def peak_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def cpu_affinity():
    """The CPUs this process may run on, as the kernel has them after any --cpus (inherited from whatever
    started the runner otherwise, e.g. taskset or a container's cpuset); None where the OS does not tell."""
    if not hasattr(os, "sched_getaffinity"):  # macOS, Windows
        return None
    return sorted(os.sched_getaffinity(0))


def summarize(np, header: dict, samples_ms, *, peak_rss: int) -> dict:
    """The bench result from the timings of each model (the first, then --compare's) and the header that
    bench() makes before timing. The host calls it too, on the timings a runner streamed before it died."""
    samples = [np.asarray(s, dtype=np.float64) for s in samples_ms]
    rng = np.random.default_rng(header["seed"])
    medians = [bootstrap_medians(np, s, rng=rng) for s in samples]

    def one(index: int) -> dict:
        return dict({"runs": int(samples[index].size), "latency_ms": percentile_summary(np, samples[index]),
                     "p50_ci95_ms": ci95(np, medians[index])}, **header["models"][index])

    result = one(0)
    result.update(header["common"])
    result.update(peak_rss_bytes=peak_rss,
                  samples_ms=[round(float(v), 5) for v in samples[0]] if header["keep_samples"] else None)
    if len(samples) > 1:
        # p50 ratio of the first model over the second; its interval from resampled pairs of interleaved rounds.
        round_runs = header["round_runs"]
        ratios = paired_round_ratios(np, samples[0], samples[1], round_runs=round_runs, rng=rng)
        result["compare"] = dict(one(1), p50_ratio=float(np.median(samples[0]) / np.median(samples[1])),
                                 p50_ratio_ci95=ci95(np, ratios), interleaved_rounds=int(samples[0].size // round_runs))
        if header["keep_samples"]:
            result["compare"]["samples_ms"] = [round(float(v), 5) for v in samples[1]]
    return result


def print_progress(header: dict, new_samples, count: int) -> None:
    line = {"partial": True, "runs": count, "peak_rss_bytes": peak_rss_bytes(),
            "new_samples_ms": [[round(float(v), 5) for v in s] for s in new_samples]}
    if len(new_samples[0]) == count:  # the first line: the host needs the header once
        line["header"] = header
    print(json.dumps(line), flush=True)


def bench(args) -> dict:
    np, ort = _import_runtime()
    if args.cpus:
        if not hasattr(os, "sched_setaffinity"):
            raise BadInput("--cpus needs Linux (os.sched_setaffinity)", "drop --cpus on this device")
        try:
            os.sched_setaffinity(0, args.cpus)
        except OSError:
            raise BadInput(f"--cpus {','.join(map(str, sorted(args.cpus)))} names no CPU this process may run on",
                           f"pick from the device's CPUs {sorted(os.sched_getaffinity(0))}") from None
    paths = [args.model] + ([args.compare] if args.compare else [])
    sessions, models, feeds = [], [], []
    for index, path in enumerate(paths):
        session, created = open_session(ort, path, args)
        feed = (npz_feed(np, session, args.inputs) if args.inputs
                else random_feed(np, session, dims=args.dims, seed=args.seed + index))
        sessions.append(session), feeds.append(feed)
        models.append({"session_create_ms": created, "first_run_ms": first_run(session, feed),
                       "size_bytes": os.path.getsize(path), "model": os.path.basename(path)})
    warmup_runs = warm_up(np, sessions, feeds, args.warmup)
    print(f"runner: warm-up {warmup_runs} runs; timing", file=sys.stderr, flush=True)
    header = {"seed": args.seed, "round_runs": args.round_runs, "keep_samples": bool(args.samples), "models": models,
              "common": {
                  "warmup_runs": warmup_runs, "threads": args.threads,
                  "thread_settings": {"intra_op": args.threads, "inter_op": args.inter_op_threads,
                                      "spinning": args.spinning, "affinity": cpu_affinity(),
                                      "pinned": sorted(args.cpus) if args.cpus else None,
                                      "interleaved": len(paths) > 1},
                  "session_settings": session_settings(args),
                  "inputs": {name: {"shape": list(value.shape), "dtype": str(value.dtype)}
                             for name, value in feeds[0].items()},
                  "input_source": args.inputs or "random",
                  "device": {"machine": platform.machine(), "system": platform.system(),
                             "python": platform.python_version(), "onnxruntime": ort.__version__,
                             "numpy": np.__version__, "cpu_count": os.cpu_count()}}}
    samples = timed_runs(sessions, feeds, runs=args.runs, duration_s=args.duration, round_runs=args.round_runs,
                         seed=args.seed, progress=lambda new, count: print_progress(header, new, count))
    return dict(summarize(np, header, samples, peak_rss=peak_rss_bytes()), complete=True)


def predict(args) -> dict:
    np, ort = _import_runtime()
    if not args.inputs or not args.out:
        raise BadInput("predict needs --inputs FILE.npz and --out FILE.npz", "pass both")
    session, _ = open_session(ort, args.model, args)
    feed = npz_feed(np, session, args.inputs)
    count = len(next(iter(feed.values())))
    started = time.perf_counter()
    chunks = []
    for start in range(0, count, args.batch_size):
        part = {name: value[start:start + args.batch_size] for name, value in feed.items()}
        try:
            chunks.append(session.run(None, part))
        except Exception as exc:
            raise BadInput(f"the model does not run on {args.inputs!r}: {ort_reason(exc)}",
                           "give inputs of the model's shapes") from None
    names = [node.name for node in session.get_outputs()]
    outputs = {name: np.concatenate([chunk[i] for chunk in chunks]) for i, name in enumerate(names)}
    temporary = args.out + ".partial.npz"
    np.savez(temporary, **outputs)
    os.replace(temporary, args.out)
    return {"outputs": os.path.basename(args.out), "samples": count, "seconds": time.perf_counter() - started,
            "device": {"machine": platform.machine(), "onnxruntime": ort.__version__}}


def probe() -> dict:
    np, ort = _import_runtime()
    return {"device": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
                       "onnxruntime": ort.__version__, "numpy": np.__version__, "cpu_count": os.cpu_count(),
                       "providers": ort.get_available_providers()}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="device_runner.py", description="edgepress device runner")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("probe")
    for name in ("bench", "predict"):
        p = sub.add_parser(name)
        p.add_argument("model")
        p.add_argument("--threads", type=int, default=1, help="intra-op threads")
        p.add_argument("--inter-op-threads", type=int, default=1)
        p.add_argument("--spinning", choices=("default", "on", "off"), default="default")
        p.add_argument("--denormals", choices=("keep", "zero"), default="keep",
                       help="zero: flush denormal floats to zero (x86: ONNX Runtime's session.set_denormal_as_zero)")
        p.add_argument("--disable-optimizer", action="append", dest="disabled_optimizers", metavar="NAME",
                       help="an ONNX Runtime graph transformer not to run, e.g. SkipLayerNormFusion")
        p.add_argument("--inputs", help="an .npz of inputs (random ones when absent, bench only)")
        if name == "bench":
            p.add_argument("--compare", help="a second model, timed interleaved with the first")
            p.add_argument("--runs", type=int, default=200)
            p.add_argument("--duration", type=float, default=0.0, help="seconds of timed runs (replaces --runs)")
            p.add_argument("--warmup", default="auto", help="untimed runs before timing, or 'auto'")
            p.add_argument("--round-runs", type=int, default=5, help="runs per model per interleaved round")
            p.add_argument("--dim", action="append", dest="dim_pairs", help="NAME=SIZE for a free dimension")
            p.add_argument("--cpus", help="pin the process to these CPUs, e.g. 0,1 (Linux)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--samples", action="store_true", help="include every timing in the JSON")
        else:
            p.add_argument("--out")
            p.add_argument("--batch-size", type=int, default=64)
    return parser


def end_with_parent() -> None:
    """On Linux, have the kernel send this runner SIGTERM when the process that started it ends: edgepress stops
    its runner on SIGTERM, SIGINT and SIGHUP itself, but not when SIGKILL ends it; and a runner started over an
    ssh connection that drops ends with its session. Elsewhere, or without ctypes, the runner runs on."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes
        import signal

        if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (ImportError, OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took effect: nobody waits for the result
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None) -> int:
    end_with_parent()
    args = _parser().parse_args(argv)
    try:
        if args.command is None:
            raise BadInput("no command", "run `device_runner.py bench MODEL.onnx`, `predict` or `probe`")
        if args.command == "probe":
            print(json.dumps(probe()))
            return 0
        if args.threads <= 0 or args.inter_op_threads <= 0:
            raise BadInput("thread counts must be positive", "pass --threads 1 or more")
        if args.command == "bench":
            if args.runs <= 0 or args.duration < 0 or args.round_runs <= 0:
                raise BadInput("--runs and --round-runs must be positive, --duration not negative", "fix the flags")
            if args.warmup != "auto" and not args.warmup.isdigit():
                raise BadInput(f"--warmup {args.warmup!r} is neither a count nor 'auto'", "pass e.g. --warmup 50")
            args.dims = parse_dims(args.dim_pairs)
            try:
                args.cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
            except ValueError:
                raise BadInput(f"--cpus {args.cpus!r} is not a list of CPU numbers", "write e.g. --cpus 0,1") from None
            result = bench(args)
        else:
            result = predict(args)
    except BadInput as exc:
        print(json.dumps({"error": exc.problem, "fix": exc.fix}))
        return EXIT_ERROR
    except MemoryError as exc:  # a model or inputs too large for this device, not a bug of the runner
        print(json.dumps({"error": f"the device ran out of memory ({exc or 'MemoryError'})",
                          "fix": "use a smaller model, batch or inputs, or a device with more memory"}))
        return EXIT_ERROR
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
