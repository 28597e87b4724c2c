"""edgepress device runner: one file, copied to the device and run there; needs Python 3.8+, onnxruntime, numpy.

    python3 device_runner.py bench MODEL.onnx [--compare OTHER.onnx] [--threads N] [--runs N | --duration S] [--profile]
                                             [--warmup N|auto] [--inputs X.npz] [--dim NAME=SIZE ...]
                                             [--denormals keep|zero] [--disable-optimizer NAME ...]
    python3 device_runner.py predict MODEL.onnx --inputs X.npz --out Y.npz [--threads N] [--batch-size N]
    python3 device_runner.py probe      (what the device has: Python, onnxruntime, numpy, CPU)

MODEL.ort works wherever MODEL.onnx does: ONNX Runtime reads a file named .ort as ORT format, any other as ONNX.

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
import math
import os
import platform
import random
import re
import sys
import time
import zipfile

EXIT_ERROR = 2
SETTLE_WINDOW_RUNS = 10
SETTLE_TOLERANCE = 0.03  # warm-up ends when two consecutive windows' medians differ by less than this share
SETTLE_MAX_RUNS = 1000
SETTLE_MAX_S = 3.0  # ...or this long: a 50 ms model on a busy machine may never settle within 3 %
ROUND_BLOCK_MS = 2.0  # an interleaved round's block of runs of one model lasts about this long
DEFAULT_EPOCHS = 12  # fresh session pairs per bench; 12 medians give a sign-test 95% interval of ranks 3 and 10
EPOCH_WARMUP_MS = 20.0  # untimed runs of each fresh session, about this long (2 to 50 runs)
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


def median_ci95(np, values) -> list:
    """A distribution-free 95% interval of the median of independent values: the order statistics at the ranks a
    sign test allows (binomial(n, 1/2) tails of at most 2.5% each), so it covers at least 95% whatever the
    values' distribution. With fewer than 6 values no such ranks exist: their range (covering 1 - 2^(1-n))."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n = ordered.size
    k, tail = 0, 0.0  # k: how many values each end may drop
    while k < n // 2:
        tail += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0))
        if tail > 0.025:
            break
        k += 1
    low_rank = max(k - 1, 0)
    return [float(ordered[low_rank]), float(ordered[n - 1 - low_rank])]


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
    (re.compile(r"^\w+\.(?:cc|h):\d+ \S+ (?=\S)"), ""),  # a release build's short source location and function
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


def open_session(ort, path: str, args, *, profile_prefix=None):
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
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(args.disabled_optimizers or ()))
    except Exception as exc:  # ORT raises several types for a corrupt or unsupported file
        mismatch = format_mismatch(path)
        if mismatch is not None:
            raise BadInput(*mismatch) from None
        if is_ort_path(path):  # ORT format: written by one onnxruntime, read by it or a later one
            reason = ort_reason(exc)
            raise BadInput(f"ONNX Runtime {ort.__version__} cannot load {path!r}: {reason}",
                           ort_load_fix(reason)) from None
        raise BadInput(f"ONNX Runtime cannot load {path!r}: {ort_reason(exc)}",
                       "re-export the model; check it with onnx.checker") from None
    return session, (time.perf_counter() - started) * 1e3


ORT_IDENTIFIER = b"ORTM"  # bytes 4-8 of an ORT-format (FlatBuffers) file


def is_ort_path(path) -> bool:
    """Whether ONNX Runtime reads the file as ORT format: it decides by the name alone, as this does."""
    return str(path).lower().endswith(".ort")


def has_ort_identifier(head: bytes) -> bool:
    """Whether a file's first 8 bytes mark it as ORT format (FlatBuffers' file identifier)."""
    return len(head) >= 8 and head[4:8] == ORT_IDENTIFIER


def file_is_ort(path) -> bool | None:
    """Whether the file's bytes are ORT format, whatever its name; None when it cannot be read."""
    try:
        with open(path, "rb") as model_file:
            return has_ort_identifier(model_file.read(8))
    except OSError:
        return None


def format_mismatch(path: str):
    """(problem, fix) when the file's name and bytes disagree: ONNX Runtime reads a file named .ort as ORT format
    and any other as an ONNX protobuf, so a renamed file fails with a parse error that does not say why."""
    ort_bytes, ort_name = file_is_ort(path), is_ort_path(path)
    if ort_bytes is None:
        return None
    base, stem = os.path.basename(path), os.path.splitext(os.path.basename(path))[0]
    if ort_bytes and not ort_name:
        return (f"model {base!r} is an ORT-format model not named .ort, so ONNX Runtime read it as ONNX",
                f"rename it to {stem}.ort")
    if ort_name and not ort_bytes:
        return (f"model {base!r} is named .ort but is not an ORT-format model (no 'ORTM' identifier); ONNX Runtime "
                "reads a .ort file as ORT format", f"rename an ONNX model to {stem}.onnx, or convert it to ORT format")
    return None


def ort_load_fix(reason: str) -> str:
    """What mends an .ort this onnxruntime refuses, from ONNX Runtime's reason."""
    if "verification failed" in reason:  # FlatBuffers' verifier: offsets or sizes that do not hold together
        return "the file is corrupt or truncated: convert the ONNX model again, or copy it again"
    if "not a registered function/op" in reason or "Could not find an implementation" in reason:
        # an .ort converted for amd64 holds x86-only operators (the NCHWc layout) that no ARM build registers
        return "convert the ONNX model again for this device's CPU (ort_format target_platform \"any\")"
    return "convert the ONNX model again with the device's onnxruntime version"


def session_settings(args) -> dict:
    return {"denormals": args.denormals, "disabled_optimizers": sorted(args.disabled_optimizers or ())}


def run_once_ms(session, feed) -> float:
    started = time.perf_counter_ns()
    session.run(None, feed)
    return (time.perf_counter_ns() - started) / 1e6


def first_run(session, feed, path: str = "") -> float:
    try:
        return run_once_ms(session, feed)
    except Exception as exc:
        reason = ort_reason(exc)
        raise BadInput(f"the model does not run on these inputs: {reason}",
                       other_cpu_fix(path, reason) or
                       "give inputs of the model's shapes (--inputs FILE.npz, or --dim NAME=SIZE); if they are "
                       "right, the model itself fails on them: re-export it") from None


def other_cpu_fix(path: str, reason: str):
    """The fix for an .ort converted for amd64 on a CPU of other vector width: its NCHWc blocks (16 channels with
    AVX-512, 8 with AVX2) are baked in, and kernels of another width fail on them (or, worse, answer wrongly)."""
    if is_ort_path(path) and "NCHWc" in reason:
        return ("this .ort was converted for amd64 on a CPU with other vector registers (its NCHWc layout is "
                "baked in): convert the ONNX model again with ort_format target_platform \"any\"")
    return None


def warm_up(np, sessions, feeds, warmup: str) -> int:
    """Untimed runs: a fixed count, or ('auto') windows until two in a row agree on their median (at most
    SETTLE_MAX_RUNS runs or SETTLE_MAX_S seconds: every epoch warms its own sessions again anyway)."""
    if warmup != "auto":
        for _ in range(int(warmup)):
            for session, feed in zip(sessions, feeds):
                session.run(None, feed)
        return int(warmup)
    done, previous = 0, None
    deadline = time.perf_counter() + SETTLE_MAX_S
    while done < SETTLE_MAX_RUNS and time.perf_counter() < deadline:
        window = [np.median([run_once_ms(s, f) for _ in range(SETTLE_WINDOW_RUNS)]) for s, f in zip(sessions, feeds)]
        done += SETTLE_WINDOW_RUNS
        if previous is not None and all(abs(w - p) <= SETTLE_TOLERANCE * p for w, p in zip(window, previous)):
            break
        previous = window
    return done


def round_runs_for(slowest_ms: float, *, runs: int, epochs: int) -> int:
    """Runs per block of an interleaved round: a block lasts about ROUND_BLOCK_MS, so a slow spell of the machine
    falls on both models of a round alike, yet every epoch gets at least one whole round."""
    by_time = int(ROUND_BLOCK_MS / max(slowest_ms, 1e-6)) or 1
    by_epochs = max(1, runs // (2 * epochs))
    return max(1, min(by_time, by_epochs))


def round_order(count: int, round_index: int) -> list:
    """The blocks of one round: ABBA, then BAAB in the next round. Each model runs first after a switch as often
    as the other, and a drift within a round (a machine warming, a neighbour starting) cancels to first order."""
    if count == 1:
        return [0]
    return [0, 1, 1, 0] if round_index % 2 == 0 else [1, 0, 0, 1]


def timed_epochs(open_pair, *, models: int, runs: int, duration_s: float, round_runs: int, epochs: int,
                 epoch_warmup_runs: int, refill_runs: int = 0, progress=None):
    """Per-run ms of each model, per epoch: [[model 0's epoch 0 runs, epoch 1 runs, ...], [model 1's ...]].

    Each epoch times fresh sessions (`open_pair()`, warmed by `epoch_warmup_runs` runs each) in rounds
    (round_order) of blocks of `round_runs` runs. The sessions bench() opened first are never timed: the first
    model's was opened first, measured for memory and warmed first, and was 0.3 % slower over 40 self-compares
    of a 5 us model. Fresh sessions, because where a session's buffers land in memory
    moves its speed: two sessions of one 0.015 ms model differed by up to 10 %, steadily, in every process. An
    epoch is the unit of the interval, so that spread is inside it rather than mistaken for a difference of the
    models. Every model gets exactly `runs` runs, shared among min(epochs, runs) epochs; with `duration_s`,
    epochs of that size go on until the time is up. `progress(new_epochs, epochs_done)` is called after an epoch,
    at most every PROGRESS_INTERVAL_S, with the epochs since its previous call. With two models, each block
    starts with `refill_runs` untimed runs: the other model's block has just evicted this one's weights from the
    caches (an INT8 MLP of 0.03 ms took 0.07 ms when timed from cold caches after its FP32 twin), and a model
    used alone runs warm."""
    epochs = min(epochs, runs)
    found = [[] for _ in range(models)]
    deadline = time.perf_counter() + duration_s if duration_s else None
    reported, next_report = 0, time.perf_counter() + PROGRESS_INTERVAL_S
    epoch = 0
    while True:
        quota = runs * (epoch % epochs + 1) // epochs - runs * (epoch % epochs) // epochs
        sessions, feeds = open_pair()
        for _ in range(epoch_warmup_runs):
            for index in round_order(models, epoch)[:models]:
                sessions[index].run(None, feeds[index])
        samples = [[] for _ in range(models)]
        round_index = 0
        # Whole ABBA + BAAB pairs while they fit; the epoch's last runs alternate one by one.
        block = round_runs
        while len(samples[0]) < quota:
            if round_index % 2 == 0:  # a pair's block size is decided at its start, so both halves match
                block = round_runs if quota - len(samples[0]) >= (4 if models > 1 else 1) * round_runs else 1
            previous = None
            # Odd epochs start with BAAB: an epoch's first timed runs, on sessions just warmed, would otherwise
            # be model A's in every epoch (a 50 ms model has 3 runs an epoch; 7 of 100 self-compares missed 1.0).
            for index in round_order(models, round_index + epoch):
                if models > 1 and index != previous:
                    for _ in range(refill_runs):
                        sessions[index].run(None, feeds[index])
                previous = index
                for _ in range(block):
                    samples[index].append(run_once_ms(sessions[index], feeds[index]))
            round_index += 1
        for kept, more in zip(found, samples):
            kept.append(more[:quota])
        epoch += 1
        if (deadline is None and epoch >= epochs) or (deadline is not None and time.perf_counter() >= deadline
                                                      and epoch >= 2):
            return found
        if progress is not None and time.perf_counter() >= next_report:
            progress([f[reported:] for f in found], epoch)
            reported, next_report = epoch, time.perf_counter() + PROGRESS_INTERVAL_S


class FreshSessions:
    """Each call: a new session of every model, placed elsewhere in memory than the last. The sessions are opened
    in a random order after a random-size gap is taken from both the heap and the mapped region (a layout
    randomisation in the spirit of Stabilizer, Curtsinger and Berger, ASPLOS 2013), with copies of the inputs,
    while the previous epoch's are still alive: a session freed and then opened again would otherwise land where
    it was."""

    def __init__(self, open_one, paths, feeds, *, seed: int, first) -> None:
        self.open_one, self.paths, self.feeds = open_one, paths, feeds
        self.rng = random.Random(seed)
        self.previous = first  # the sessions bench() opened, freed once the first epoch's are open

    def __call__(self):
        gap = (bytearray(self.rng.randrange(64, 64 * 1024)), bytearray(self.rng.randrange(1, 256) * 4096 + 256 * 1024))
        order = list(range(len(self.paths)))
        self.rng.shuffle(order)
        opened = {}
        for index in order:
            opened[index] = self.open_one(self.paths[index])
            opened[index].run(None, self.feeds[index])
        pair = [opened[index] for index in range(len(self.paths))]
        # The inputs move too: an input buffer's alignment is part of a tiny model's speed.
        feeds = [{name: value.copy() for name, value in feed.items()} for feed in self.feeds]
        self.previous = (pair, feeds, gap)  # the epoch before's are freed only now
        return pair, feeds


def _proc_status_bytes(field: str):
    """A VmRSS/VmHWM figure of this process from /proc/self/status in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Linux 4.0+: writing 5 to clear_refs sets this process's VmHWM to its VmRSS, so the next peak is measured
    from here on."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak resident memory of each model's session on top of the runner's own baseline. The peak is the
    kernel's high-water mark of this process's own address space (VmHWM), which exec starts afresh:
    getrusage's ru_maxrss is not, since Linux folds the parent's peak at fork into it, so a runner started by
    an edgepress that holds torch reported 460 MB for a 31 KB model."""

    def __init__(self, np) -> None:
        # What the runner itself loads on the way, loaded before the baseline: numpy.random alone (random inputs)
        # is 6 MB, which would otherwise count as the model's under `bench` and not under a recipe's --inputs.
        np.random.default_rng(0).standard_normal(1)
        self.resettable = _proc_status_bytes("VmHWM") is not None and _reset_peak()
        self.baseline_bytes = _proc_status_bytes("VmRSS") if self.resettable else None
        self.method = "VmHWM" if self.resettable else "ru_maxrss"

    def start(self) -> None:
        """From here on, what a session adds counts as its own."""
        if self.resettable:
            _reset_peak()
            self._before = _proc_status_bytes("VmRSS")

    def model_peak_bytes(self):
        """The runner's peak as if this model's session were its only one: baseline plus what the session
        added at its peak since start(). Without a resettable peak (not Linux): the process's peak so far,
        which is right only for the first model."""
        if not self.resettable:
            return ru_maxrss_bytes()
        return self.baseline_bytes + max(0, _proc_status_bytes("VmHWM") - self._before)


def ru_maxrss_bytes() -> int:
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


def summarize(np, header: dict, epochs_ms) -> dict:
    """The bench result from each model's timings per epoch (the first model, then --compare's; see timed_epochs)
    and the header that bench() makes before timing. The host calls it too, on the epochs a runner streamed
    before it died. Intervals are over epochs, each a fresh pair of sessions: see timed_epochs."""
    epochs = [[np.asarray(e, dtype=np.float64) for e in model if len(e)] for model in epochs_ms]
    flat = [np.concatenate(model) for model in epochs]

    def one(index: int) -> dict:
        latency = percentile_summary(np, flat[index])
        low, high = median_ci95(np, [float(np.median(e)) for e in epochs[index]])
        # The interval is of the epochs' medians; the p50 of all runs may lie a hair outside it, and is held.
        return dict({"runs": int(flat[index].size), "latency_ms": latency,
                     "p50_ci95_ms": [min(low, latency["p50"]), max(high, latency["p50"])]}, **header["models"][index])

    result = one(0)
    result.update(header["common"])
    result.update(epochs=len(epochs[0]),
                  samples_ms=[round(float(v), 5) for v in flat[0]] if header["keep_samples"] else None)
    if len(epochs) > 1:
        # The first model's p50 over the second's: the median of the epochs' ratios, and its interval.
        ratios = [float(np.median(a) / np.median(b)) for a, b in zip(epochs[0], epochs[1])]
        result["compare"] = dict(one(1), p50_ratio=float(np.median(ratios)), p50_ratio_ci95=median_ci95(np, ratios),
                                 epoch_ratios=[round(r, 5) for r in ratios], round_runs=header["round_runs"])
        if header["keep_samples"]:
            result["compare"]["samples_ms"] = [round(float(v), 5) for v in flat[1]]
    return result


PROFILE_RUNS = 50  # profiled runs per model, after PROFILE_SKIP_RUNS that fill the caches and the arena
PROFILE_SKIP_RUNS = 5
PROFILE_TOP_NODES = 15


def profile(np, ort, path: str, feed: dict, args) -> dict:
    """Where a model's time goes: ONNX Runtime's profiler on a session of its own (profiling slows every run, so
    these runs are never the timed ones). Per op type and per node (the slowest PROFILE_TOP_NODES): ms per run of
    the kernels, and their share of all kernels' time. Kernel names are ONNX Runtime's after its graph
    optimisations: fused nodes (Conv with its Relu, QLinearConv from Q/DQ) show as what actually ran."""
    session, _ = open_session(ort, path, args, profile_prefix="edgepress-profile-" + os.path.basename(path))
    for _ in range(PROFILE_SKIP_RUNS + PROFILE_RUNS):
        session.run(None, feed)
    written = session.end_profiling()
    try:
        with open(written) as events_file:
            events = json.load(events_file)
    finally:
        os.remove(written)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[PROFILE_SKIP_RUNS][0] if len(runs) > PROFILE_SKIP_RUNS else 0
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
               and e["ts"] >= start]
    counted = max(1, len(runs) - PROFILE_SKIP_RUNS)
    total_us = float(sum(e["dur"] for e in kernels)) or 1.0
    by_type, by_node = {}, {}
    for event in kernels:
        op_type = event.get("args", {}).get("op_name", "?")
        node = event["name"][:-len("_kernel_time")]
        by_type.setdefault(op_type, [0.0, set()])
        by_type[op_type][0] += event["dur"]
        by_type[op_type][1].add(node)
        by_node.setdefault(node, [0.0, op_type])
        by_node[node][0] += event["dur"]
    model_runs_ms = [(end - begin) / 1e3 for begin, end in runs[PROFILE_SKIP_RUNS:]]
    return {
        "runs": counted,
        "kernels_ms": total_us / counted / 1e3,
        "model_run_p50_ms": float(np.median(model_runs_ms)) if model_runs_ms else None,
        "by_op_type": [{"op_type": op, "ms": us / counted / 1e3, "share": us / total_us, "nodes": len(nodes)}
                       for op, (us, nodes) in sorted(by_type.items(), key=lambda item: -item[1][0])],
        "by_node": [{"node": node, "op_type": op, "ms": us / counted / 1e3, "share": us / total_us}
                    for node, (us, op) in sorted(by_node.items(), key=lambda item: -item[1][0])[:PROFILE_TOP_NODES]],
    }


def print_progress(header: dict, new_epochs, epochs_done: int) -> None:
    line = {"partial": True, "epochs": epochs_done,
            "new_epochs_ms": [[[round(float(v), 5) for v in e] for e in model] for model in new_epochs]}
    if len(new_epochs[0]) == epochs_done:  # the first line: the host needs the header once
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
    memory = MemoryMeter(np)
    sessions, models, feeds = [], [], []
    for index, path in enumerate(paths):
        if index == 0:  # the first model's session alone: --compare's would be measured beside it
            memory.start()
        session, created = open_session(ort, path, args)
        feed = (npz_feed(np, session, args.inputs) if args.inputs
                else random_feed(np, session, dims=args.dims, seed=args.seed + index))
        sessions.append(session), feeds.append(feed)
        first_ms = first_run(session, feed, path)
        for _ in range(2):  # a few more runs: some kernels allocate their scratch on a later run
            session.run(None, feed)
        models.append({"session_create_ms": created, "first_run_ms": first_ms, "size_bytes": os.path.getsize(path),
                       "model": os.path.basename(path)})
        if index == 0:
            models[0]["peak_memory_bytes"] = memory.model_peak_bytes()
    warmup_runs = warm_up(np, sessions, feeds, args.warmup)
    slowest_ms = max(float(np.median([run_once_ms(s, f) for _ in range(3)])) for s, f in zip(sessions, feeds))
    round_runs = (round_runs_for(slowest_ms, runs=args.runs, epochs=args.epochs)
                  if args.round_runs == "auto" else int(args.round_runs))
    epoch_warmup_runs = max(2, min(50, int(EPOCH_WARMUP_MS / max(slowest_ms, 1e-6))))
    refill_runs = 1 if slowest_ms < ROUND_BLOCK_MS else 0  # a slower model's cache refill is lost in its run time

    open_pair = FreshSessions(lambda path: open_session(ort, path, args)[0], paths, feeds, seed=args.seed,
                              first=sessions)
    del sessions
    print(f"runner: warm-up {warmup_runs} runs; timing", file=sys.stderr, flush=True)
    header = {"seed": args.seed, "round_runs": round_runs, "epoch_warmup_runs": epoch_warmup_runs,
              "refill_runs": refill_runs, "keep_samples": bool(args.samples), "models": models,
              "common": {
                  "warmup_runs": warmup_runs, "threads": args.threads,
                  "thread_settings": {"intra_op": args.threads, "inter_op": args.inter_op_threads,
                                      "spinning": args.spinning, "affinity": cpu_affinity(),
                                      "pinned": sorted(args.cpus) if args.cpus else None,
                                      "interleaved": len(paths) > 1},
                  "session_settings": session_settings(args),
                  "runner_baseline_bytes": memory.baseline_bytes, "memory_method": memory.method,
                  "inputs": {name: {"shape": list(value.shape), "dtype": str(value.dtype)}
                             for name, value in feeds[0].items()},
                  "input_source": args.inputs or "random",
                  "device": {"machine": platform.machine(), "system": platform.system(),
                             "python": platform.python_version(), "onnxruntime": ort.__version__,
                             "numpy": np.__version__, "cpu_count": os.cpu_count()}}}
    epochs = timed_epochs(open_pair, models=len(paths), runs=args.runs, duration_s=args.duration,
                          round_runs=round_runs, epochs=args.epochs, epoch_warmup_runs=epoch_warmup_runs,
                          refill_runs=refill_runs,
                          progress=lambda new, done: print_progress(header, new, done))
    result = dict(summarize(np, header, epochs), complete=True)
    if args.profile:
        result["profile"] = profile(np, ort, paths[0], feeds[0], args)
        if len(paths) > 1:
            result["compare"]["profile"] = profile(np, ort, paths[1], feeds[1], args)
    return result


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
            reason = ort_reason(exc)
            raise BadInput(f"the model does not run on {args.inputs!r}: {reason}",
                           other_cpu_fix(args.model, reason) or "give inputs of the model's shapes") from None
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
            p.add_argument("--round-runs", default="auto",
                           help="runs per block of an interleaved ABBA round, or 'auto' (blocks of about 2 ms)")
            p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                           help="fresh sessions this many times; the intervals are over epochs (at least 6)")
            p.add_argument("--dim", action="append", dest="dim_pairs", help="NAME=SIZE for a free dimension")
            p.add_argument("--cpus", help="pin the process to these CPUs, e.g. 0,1 (Linux)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--samples", action="store_true", help="include every timing in the JSON")
            p.add_argument("--profile", action="store_true",
                           help="after timing, ONNX Runtime's per-operator profile of each model (its own session)")
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
            raise BadInput("no command", "run `device_runner.py bench MODEL.onnx` (or MODEL.ort), `predict` or `probe`")
        if args.command == "probe":
            print(json.dumps(probe()))
            return 0
        if args.threads <= 0 or args.inter_op_threads <= 0:
            raise BadInput("thread counts must be positive", "pass --threads 1 or more")
        if args.command == "bench":
            if args.round_runs != "auto" and not (args.round_runs.isdigit() and int(args.round_runs) > 0):
                raise BadInput(f"--round-runs {args.round_runs!r} is neither a positive count nor 'auto'",
                               "pass e.g. --round-runs 5, or leave it out")
            if args.epochs < 6:
                raise BadInput(f"--epochs {args.epochs} is under 6: no 95% interval of a median exists for fewer",
                               "pass --epochs 6 or more, or leave it out (12)")
            if args.runs <= 0 or args.duration < 0:
                raise BadInput("--runs must be positive and --duration not negative", "fix the flags")
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
