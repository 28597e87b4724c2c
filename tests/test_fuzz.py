"""Untrusted input, fuzzed (issue 6, point 3).

Over a thousand mutated recipes go through `check` (and a bounded sample through `run`), a few hundred
corrupted ONNX files through a recipe's `[model] onnx` (every hand-made one and a seeded sample of the byte-level
mutants also through `bench`), a few hundred corrupted checkpoints and some corrupted dataset npz files through
`check`. Every case must end with success (exit 0; 1 for a budget violated by `run`) or with exactly one line
"edgepress: error: ...; fix: ..." and exit 2. An internal error, a traceback, a hang, a crash (a signal) or any
other ending fails the test, whose message is a table of how the cases ended and the first failures.

Everything is generated from a fixed seed. Speed: a worker process per core (tests/fuzz_worker.py) imports
edgepress once and runs case after case in process through `edgepress.cli.main`; a case that answers nothing
within its time-out is a hang (the worker is killed and replaced), a worker that dies by a signal is a crash.
Every file the cases read or write lies under the test's tmp_path (the workers' cwd and TMPDIR are there).

`python tests/test_fuzz.py --table` runs the same cases and prints the Markdown table.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WORKER = TESTS / "fuzz_worker.py"
SEED = 20260306

CHECK_TIMEOUT_S = 60.0  # one `check` or `bench` case; the first one of a worker also imports torch
RUN_TIMEOUT_S = 180.0
START_TIMEOUT_S = 180.0
RUN_SAMPLE_PASSING = 15  # mutated run recipes that pass `check` and then go through `run`
RUN_SAMPLE_FAILING = 15
RUN_MUTANTS = 160  # checked, to find the passing ones
BENCH_SAMPLE = 60  # mutated ONNX files that also go through `bench` (each may start the device runner)

KINDS = ("recipes/check", "recipes/run", "onnx/bench", "onnx/recipe", "checkpoint/check", "npz/check")
ENDINGS = ("ok", "one-line error, exit 2", "internal error", "traceback", "hang", "crash", "other")
FAILURES = ("internal error", "traceback", "hang", "crash", "other")


# ---------------------------------------------------------------- cases and how they end

@dataclass
class Case:
    id: int
    kind: str
    label: str  # the mutation, for the failure message
    argv: list[str]
    timeout_s: float = CHECK_TIMEOUT_S


@dataclass
class Ending:
    code: int | None
    stderr: str = ""
    escaped: str | None = None  # an exception that left main(): a traceback in a real run
    signal: int | None = None  # the worker died of it
    hang: bool = False
    seconds: float = 0.0


def classify(case: Case, ending: Ending) -> str:
    if ending.hang:
        return "hang"
    if ending.signal is not None:
        return "crash"
    if ending.escaped or "Traceback (most recent call last)" in ending.stderr:
        return "traceback"
    lines = ending.stderr.splitlines()
    if any(line.startswith("edgepress: internal error") for line in lines):
        return "internal error"
    errors = [line for line in lines if line.startswith("edgepress: error:")]
    if ending.code == 0 or (ending.code == 1 and case.kind == "recipes/run"):
        return "ok" if not errors else "other"
    if ending.code == 2 and len(errors) == 1 and "fix:" in errors[0]:
        return "one-line error, exit 2"
    return "other"


# ---------------------------------------------------------------- the workers

class _Worker:
    def __init__(self, *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=cwd, env=env)
        self.buffer = b""
        self.ready = False
        self.case: Case | None = None
        self.deadline = time.monotonic() + START_TIMEOUT_S

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, case: Case) -> None:
        self.case = case
        self.deadline = time.monotonic() + case.timeout_s
        self.proc.stdin.write((json.dumps({"id": case.id, "argv": case.argv}) + "\n").encode())
        self.proc.stdin.flush()

    def lines(self) -> list[dict] | None:
        """The answers that arrived whole; None once the worker's stdout is closed (it died)."""
        data = os.read(self.fileno(), 1 << 16)
        if not data:
            return None
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]

    def stop(self, *, kill: bool) -> int | None:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        return code


def run_cases(cases: list[Case], *, folder: Path, workers: int, python_path: Path | None = None) -> dict[int, Ending]:
    """Every case through the workers; {case id: how it ended}. `python_path` joins the workers' PYTHONPATH."""
    scratch = folder / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}
    env.update(TMPDIR=str(scratch), MPLCONFIGDIR=str(folder / "matplotlib"), OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(python_path), env.get("PYTHONPATH")) if p)
    started = 0

    def start() -> _Worker:
        nonlocal started
        started += 1
        return _Worker(env=env, cwd=folder, log=folder / f"worker-{started}.log")

    pending = collections.deque(cases)
    pool = [start() for _ in range(max(1, min(workers, len(cases))))]
    endings: dict[int, Ending] = {}
    try:
        while pending or any(w.case is not None for w in pool):
            for worker in pool:
                if worker.ready and worker.case is None and pending:
                    worker.send(pending.popleft())
            waiting = [w for w in pool if not w.ready or w.case is not None]
            if not waiting:
                break
            timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            readable, _, _ = select.select(waiting, [], [], timeout)
            for index, worker in enumerate(pool):
                replace = False
                if worker in readable:
                    answers = worker.lines()
                    if answers is None:  # died: a signal (or an exit) in the middle of a case
                        code = worker.stop(kill=False)
                        if worker.case is None:
                            raise RuntimeError(f"fuzz worker exited {code} between cases; see {worker.log.name}")
                        died_of = -code if code is not None and code < 0 else None
                        endings[worker.case.id] = Ending(code=code, signal=died_of, stderr=f"worker exit {code}")
                        replace = True
                    for answer in answers or []:
                        if "ready" in answer:
                            worker.ready = True
                        else:
                            endings[answer["id"]] = Ending(code=answer["code"], stderr=answer["stderr"],
                                                           escaped=answer["escaped"], seconds=answer["seconds"])
                            worker.case = None
                elif time.monotonic() >= worker.deadline and (worker.case is not None or not worker.ready):
                    if worker.case is None:
                        raise RuntimeError(f"fuzz worker did not start within {START_TIMEOUT_S:.0f} s")
                    endings[worker.case.id] = Ending(code=None, hang=True)
                    worker.stop(kill=True)
                    replace = True
                if replace:
                    pool[index] = start()
    finally:
        for worker in pool:
            worker.stop(kill=worker.case is not None)
    return endings


# ---------------------------------------------------------------- recipe mutations

NUMBER = re.compile(r"(?<![\w.\"'-])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.\"'])")
KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*)(\s*=)", re.M)
STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
VALUE = re.compile(r"^(\s*[A-Za-z_][\w-]*\s*=\s*)(.+)$", re.M)

# Replacements for a number; RUN_NUMBERS leaves out those that ask for days of honest work (1e11 epochs).
NUMBERS = ["0", "-1", "-7", "1e999", "-1e999", "nan", "inf", "-inf", "1e308", "0.0", "-0.0", "1e-320", str(2**63),
           str(-2**63 - 1), str(2**64), "9" * 40, "99999999999", "3.5", '"7"', "true", "[1, 2]", "{}", "[]"]
RUN_NUMBERS = [n for n in NUMBERS if n not in ("99999999999",)]
STRINGS = ["", "x" * 100_000, "ünïcödé 漢字 🙂", "../../../../../../etc/passwd", "/dev/zero", "/dev/null", "/",
           "{data}/nope/none.npz", "{data}", "~nobody_fuzz/x", "\\u0000", "a:b", "digits:nope", "cifar10:../../etc",
           "qemu-aarch64:nope", "ssh://", "ssh://@:", "local", "model", "%s%n", "${HOME}", "C:\\\\x", "\\\\", " ",
           "small_cnn_28", "cifar_resnet20", "train", "export", "ptq", "digits:test", "nan"]
VALUES = ['"str"', "1", "1.5", "true", "[]", '[1, "a"]', "{}", "{ a = 1 }", "[[1]]", '"""multi\nline"""',
          "2021-01-01", "07:32:00", "1979-05-27T07:32:00Z", "'literal'", "[{ kind = \"ptq\" }]", "-0", "+1",
          "0x10", "0o7", "0b1", "1_000"]
JUNK = ["[[stages]]", "[[stages]]\nkind = \"ptq\"", "[model]", "[data]", "[budgets]", "[target]", "[[targets]]",
        "kind = ", "= 3", "[model", "x = \"unterminated", "\x00", "a.b.c = 1", "\"\" = 1", "[a.b]\nc = 1",
        "name = \"dup\"", "a = " + "[" * 3000 + "]" * 3000, "a = " + "{b = " * 2000 + "1" + "}" * 2000,
        "mean = [" + ", ".join(["0.5"] * 50_000) + "]", "# comment", "\ufeff",
        "[[stages]]\nkind = \"train\"\nepochs = 1",
        "[bench]\nruns = 1", "reference_stage = \"nope\"", "[data.preprocess]\nstd = [0.0]"]
CHARS = list("\"[]{}=.,#\\\n\t 0'-+_:aZé漢\x7f") + ["\x00", "\u2028", "🙂"]


def _typo(key: str, rng: random.Random) -> str:
    if len(key) < 2:
        return key + "x"
    i = rng.randrange(len(key))
    return rng.choice([key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key.upper(),
                       key[:i] + rng.choice("abcxyz_-") + key[i + 1:], key + "s"])


def _sub_one(pattern: re.Pattern, text: str, rng: random.Random, make) -> str:
    found = list(pattern.finditer(text))
    if not found:
        return text
    m = rng.choice(found)
    return text[:m.start()] + make(m) + text[m.end():]


def text_mutation(text: str, rng: random.Random, *, vocabulary: list[str], numbers: list[str]) -> tuple[str, str]:
    lines = text.split("\n")
    op = rng.choice(["delete", "duplicate", "swap", "char", "truncate", "junk", "number", "number", "string", "string",
                     "key", "key", "value", "value", "header", "unicode"])
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "char":
        pos = rng.randrange(len(text) or 1)
        return text[:pos] + rng.choice(CHARS) + text[pos + 1:], op
    elif op == "truncate":
        return text[:rng.randrange(len(text) or 1)], op
    elif op == "junk":
        lines.insert(i, rng.choice(JUNK))
    elif op == "number":
        return _sub_one(NUMBER, text, rng, lambda m: rng.choice(numbers)), op
    elif op == "string":
        return _sub_one(STRING, text, rng, lambda m: json.dumps(rng.choice(STRINGS), ensure_ascii=False)
                        .replace("\\\\", "\\")), op
    elif op == "key":
        return _sub_one(KEY, text, rng, lambda m: m.group(1) + (
            _typo(m.group(2), rng) if rng.random() < 0.5 else rng.choice(vocabulary)) + m.group(3)), op
    elif op == "value":
        return _sub_one(VALUE, text, rng, lambda m: m.group(1) + rng.choice(VALUES)), op
    elif op == "header":
        return _sub_one(re.compile(r"^\[\[?[\w.]+\]\]?", re.M), text, rng,
                        lambda m: rng.choice(["[[stages]]", "[stages]", "[model]", "[[model]]", "[data]", "[budgets]",
                                              "[target]", "[[targets]]", "[bench]", "[nope]", "[data.evaluation]"])), op
    elif op == "unicode":
        return _sub_one(STRING, text, rng, lambda m: '"' + m.group(1) + rng.choice(["é", "\\u00e9", "🙂", "\\t",
                                                                                     "\\\\", " ", "\\u0000"]) + '"'), op
    return "\n".join(lines), op


# Values a structural mutation puts anywhere: every TOML type, odd sizes and odd contents.
TYPED = [0, -1, 1, 7, 2**63 - 1, 2**63, -2**70, 1.5, -0.0, 1e-300, 1e300, float("nan"), float("inf"), True, False,
         "", "x" * 5000, "ünï 🙂", "../x", "/dev/zero", "{data}/x", "digits:test", "ptq", "local",
         [], [1], ["a", 1.5],
         [[1, 2], [3]], [0.5] * 3, {}, {"a": 1}, {"kind": "ptq"}, [{"kind": "export"}], [{"dataset": "digits:test"}],
         {"dataset": "digits:test", "limit": 0}, datetime.date(2020, 1, 1), datetime.time(7, 32)]


def _paths(node, prefix=()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _get(node, path):
    for part in path:
        node = node[part]
    return node


# Same-type replacements: a recipe that still validates but asks for something odd (zero epochs, one sample).
SAME_TYPE = {int: [0, 1, 2, 3, 8, 100, 1000, -1], float: [0.0, 1e-6, 0.5, 0.999, 1.0, 2.0, 100.0, -0.5]}


def _same_type(value, rng: random.Random, strings: list[str]):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return rng.choice(SAME_TYPE[type(value)])
    if isinstance(value, str):
        return rng.choice(strings)
    if isinstance(value, list) and value:
        return rng.choice([value[:-1], value + value[-1:], value[::-1]])
    return value


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return [s for child in children for s in _strings(child)]


def structure_mutation(table: dict, rng: random.Random, *, vocabulary: list[str]) -> str:
    paths = [p for p in _paths(table) if p]
    path = rng.choice(paths)
    parent, last = _get(table, path[:-1]), path[-1]
    op = rng.choice(["delete", "set", "set", "retype", "same", "same", "same", "rename", "add", "duplicate", "clear",
                     "wrap", "swap"])
    if op == "same":
        parent[last] = _same_type(parent[last], rng, _strings(table) + ["", "digits:train", "local", "ptq", "train"])
    elif op == "retype":
        value = parent[last]
        parent[last] = rng.choice([str(value), [value], {"value": value}, 1, 1.0, True])
    elif op == "delete":
        del parent[last]
    elif op == "set":
        parent[last] = rng.choice(TYPED)
    elif op == "rename" and isinstance(last, str):
        parent[_typo(last, rng) if rng.random() < 0.5 else rng.choice(vocabulary)] = parent.pop(last)
    elif op == "add":
        target = parent if isinstance(parent, dict) else table
        target[rng.choice(vocabulary + ["unknown_key", "kind", "name"])] = rng.choice(TYPED)
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, parent[last])
    elif op == "clear":
        value = parent[last]
        parent[last] = type(value)() if isinstance(value, (list, dict, str)) else None
        if parent[last] is None:
            del parent[last]
    elif op == "wrap":
        parent[last] = [parent[last]] if rng.random() < 0.7 else {"value": parent[last]}
    elif op == "swap":
        other = rng.choice(paths)
        try:
            other_parent = _get(table, other[:-1])
            parent[last], other_parent[other[-1]] = other_parent[other[-1]], parent[last]
        except (KeyError, IndexError, TypeError):
            pass
    return op


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def to_toml(table: dict) -> str:
    """A small TOML writer: every top-level key on its own line, tables inline (valid TOML 1.0)."""
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()) + "\n"


def mutate_recipe(text: str, rng: random.Random, *, vocabulary: list[str], numbers: list[str],
                  edits: int | None = None) -> tuple[str, str]:
    """One mutant of a valid recipe: 1-3 text-level edits, or structural edits written back as TOML (then
    sometimes a text-level edit on top). `edits` fixes the count."""
    if rng.random() < 0.45:
        table = tomllib.loads(text)
        ops = [structure_mutation(table, rng, vocabulary=vocabulary) for _ in range(edits or rng.randint(1, 2))]
        text = to_toml(table)
        if edits is None and rng.random() < 0.3:
            text, op = text_mutation(text, rng, vocabulary=vocabulary, numbers=numbers)
            ops.append(op)
        return text, "structure:" + "+".join(ops)
    ops = []
    for _ in range(edits or rng.choice([1, 1, 2, 3])):
        text, op = text_mutation(text, rng, vocabulary=vocabulary, numbers=numbers)
        ops.append(op)
    return text, "text:" + "+".join(ops)


def _keys(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            found |= _keys(value)
    elif isinstance(node, list):
        for value in node:
            found |= _keys(value)
    return found


# ---------------------------------------------------------------- the files mutated

TINY_RUN = """
name = "fuzz-run"
reference_stage = "model"

[model]
name = "small_cnn_8"
kwargs = { width = 4 }

[data]
training = { dataset = "digits:train", limit = 64 }
evaluation = [{ dataset = "digits:test", limit = 32 }]
preprocess = { mean = [0.5], std = [0.5] }

[[stages]]
kind = "train"
epochs = 1
batch_size = 32

[[stages]]
kind = "export"
exporter = "torchscript"

[bench]
warmup_runs = 1
runs = 200

[budgets]
size_bytes = 100000
accuracy_drop_points = 50.0
"""

SMALL_CNN = 'name = "small_cnn_8"\nkwargs = { width = 8 }'
DIGITS = 'dataset = "digits:test", limit = 16'


def file_recipe(kind: str, *, model: str, evaluation: str = DIGITS) -> str:
    """The smallest recipe around one file under test: a [model] and one evaluation set, no stages."""
    return (f'name = "fuzz-{kind}"\n[model]\n{model}\n[data]\nevaluation = [{{ {evaluation} }}]\n'
            'preprocess = { mean = [0.5], std = [0.5] }\n')


STAGES = """
[[stages]]
kind = "prune"
channel_ratio = 0.25
importance = "l2"
ignored_layers = ["classifier"]

[[stages]]
kind = "sparsify"
sparsity = 0.3

[[stages]]
kind = "distill"
epochs = 1
alpha = 0.5
temperature = 2.0
"""


class Assets:
    """The valid files every mutation starts from, made once in `folder`."""

    def __init__(self, folder: Path) -> None:
        import numpy as np
        import torch

        from edgepress.models.cifar_resnet import resnet20
        from edgepress.models.small_cnn import small_cnn

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = small_cnn(width=8).eval()
        self.state = model.state_dict()
        self.onnx = folder / "tiny.onnx"
        with warnings.catch_warnings():  # the torchscript exporter's deprecation notice: it is the quick one
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(self.onnx), dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        self.checkpoint = folder / "tiny.pt"
        torch.save(self.state, self.checkpoint)
        self.legacy_checkpoint = folder / "tiny-legacy.pt"
        torch.save(self.state, self.legacy_checkpoint, _use_new_zipfile_serialization=False)
        self.other_architecture = folder / "resnet20.pt"
        torch.save(resnet20().state_dict(), self.other_architecture)
        rng = np.random.default_rng(0)
        np.savez(folder / "digits.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
                 labels=rng.integers(0, 10, 40))
        self.pwned = folder / "PWNED"  # a checkpoint's pickle tries to create it: weights_only must refuse


class _Pwn:
    """Pickled as a call to os.mkdir: what torch.load(weights_only=False) would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def recipe_seeds(assets: Assets) -> dict[str, str]:
    from tests.conftest import TINY_RECIPE

    tiny = TINY_RECIPE.format(epochs=1, budgets="size_bytes = 200000\nagreement_min = 0.5\nlatency_p90_ms = 50.0\n"
                                               "accuracy_drop_points = 5.0")
    seeds = {
        "tiny": tiny,
        "demo": (ROOT / "edgepress" / "builtin" / "demo.toml").read_text(),
        "tiny-onnx": file_recipe("onnx", model='onnx = "../tiny.onnx"')
        + '\n[[stages]]\nkind = "ptq"\n\n[target]\nthreads = 1\n',
        "tiny-checkpoint": file_recipe("checkpoint", model=SMALL_CNN + '\ncheckpoint = "../tiny.pt"'),
        "tiny-npz": tiny.replace('evaluation = [{ dataset = "digits:test" }]', 'evaluation = '
                                 '[{ path = "../digits.npz", label = "mine" }, { dataset = "digits:test" }]'),
        "tiny-stages": tiny.replace('[[stages]]\nkind = "export"', STAGES.strip() + '\n\n[[stages]]\nkind = "export"')
        + '\n[[targets]]\nname = "local"\nthreads = 1\n',
    }
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        seeds[f"recipes/{path.name}"] = path.read_text()
    return seeds


SEED_COUNTS = {"tiny": 250, "demo": 90, "tiny-onnx": 110, "tiny-checkpoint": 110, "tiny-npz": 110, "tiny-stages": 150}
REAL_RECIPE_COUNT = 14  # per file under recipes/ (their data is on the shared folder, or they fail for its lack)


def special_recipes(folder: Path) -> list[tuple[str, Path]]:
    """Recipe files that are not text at all, or too large, or not files."""
    found = []

    def write(name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        found.append((name, path))

    write("empty.toml", b"")
    write("binary.toml", bytes(random.Random(SEED).randrange(256) for _ in range(4096)))
    write("huge.toml", b"# padding\n" * 200_000 + b'name = "x"\n')
    write("bom.toml", "\ufeff".encode() + b'name = "x"\n')
    write("latin1.toml", 'name = "caf\xe9"\n'.encode("latin-1"))
    write("deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000)
    (folder / "folder.toml").mkdir()
    found.append(("folder.toml", folder / "folder.toml"))
    os.mkfifo(folder / "fifo.toml")  # reading it would block forever
    found.append(("fifo.toml", folder / "fifo.toml"))
    found.append(("missing.toml", folder / "missing.toml"))
    return found


# ---------------------------------------------------------------- corrupted binary files

def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        pos = rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    length = rng.choice([1, 4, 16, 256])
    fill = rng.choice([b"\xff", b"\x00", bytes(rng.randrange(256) for _ in range(length))])
    return data[:start] + (fill * length)[:length] + data[start + length:]


def byte_mutants(data: bytes, rng: random.Random, *, truncations: int, flips: int,
                 overwrites: int) -> list[tuple[str, bytes]]:
    """(label, bytes): `truncations` prefixes (the first bytes, the middle, all but the last, and seeded others),
    bit flips, and overwritten runs of bytes."""
    cuts = {1, 2, 4, 8, 16, len(data) // 2, len(data) - 1}
    while len(cuts) < truncations:
        cuts.add(rng.randrange(1, len(data)))
    found = [(f"truncated at {cut} of {len(data)}", data[:cut]) for cut in sorted(cuts)]
    found += [("bit-flipped", _flip_bits(data, rng)) for _ in range(flips)]
    found += [("overwritten", _overwrite(data, rng)) for _ in range(overwrites)]
    return found


def onnx_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """(label, path) of a few hundred broken or hostile ONNX files, each in a folder of its own."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    folder.mkdir()
    base = assets.onnx.read_bytes()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes | None = None, *, model=None, extra=None) -> Path:
        home = folder / f"{len(made):04d}"
        home.mkdir()
        path = home / "model.onnx"
        if model is not None:
            onnx.save(model, str(path))
        elif data is not None:
            path.write_bytes(data)
        if extra:
            extra(home)
        made.append((label, path))
        return path

    place("the original (valid)", base)
    for label, data in byte_mutants(base, rng, truncations=40, flips=150, overwrites=40):
        place(label, data)
    for size in (1, 7, 64, 4096, 100_000):
        place(f"{size} random bytes", bytes(rng.randrange(256) for _ in range(size)))
    place("empty file", b"")
    place("a checkpoint given as ONNX", assets.checkpoint.read_bytes())
    place("a recipe given as ONNX", b'name = "x"\n[model]\nname = "small_cnn_8"\n')
    place("a zip given as ONNX", assets.checkpoint.read_bytes()[:200])
    home = folder / f"{len(made):04d}"
    (home / "model.onnx").mkdir(parents=True)
    made.append(("a folder named model.onnx", home / "model.onnx"))
    made.append(("a path that does not exist", folder / "absent" / "model.onnx"))

    # Structurally odd but parseable models.
    model = onnx.load(str(assets.onnx))
    variants = {
        "no graph": lambda m: m.ClearField("graph"),
        "IR version 0": lambda m: setattr(m, "ir_version", 0),
        "no opset import": lambda m: m.ClearField("opset_import"),
        "opset 1": lambda m: [setattr(o, "version", 1) for o in m.opset_import],
        "opset 9999": lambda m: [setattr(o, "version", 9999) for o in m.opset_import],
        "no nodes": lambda m: m.graph.ClearField("node"),
        "no outputs": lambda m: m.graph.ClearField("output"),
        "two inputs": lambda m: m.graph.input.append(helper.make_tensor_value_info("y", 1, [1])),
        "unknown operator": lambda m: setattr(m.graph.node[0], "op_type", "NoSuchOp"),
        "unknown domain": lambda m: setattr(m.graph.node[0], "domain", "com.example.fuzz"),
        "initializer dims lie": lambda m: m.graph.initializer[0].dims.extend([1 << 20, 1 << 20]),
        "input of a billion images": lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value",
                                                       1_000_000_000),
        "input of huge images": lambda m: [setattr(d, "dim_value", 1 << 20)
                                           for d in m.graph.input[0].type.tensor_type.shape.dim[2:]],
        "string input": lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 8),
        "cycle": lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[-1].output[0]),
        "node output renamed": lambda m: m.graph.node[-1].output.__setitem__(0, "nowhere"),
    }
    for label, change in variants.items():
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        change(copy)
        place(label, copy.SerializeToString())
    place("a TensorProto given as ONNX", numpy_helper.from_array(np.zeros((3, 3), np.float32), "t").SerializeToString())
    place("a GraphProto given as ONNX", model.graph.SerializeToString())
    place("subgraphs nested 500 deep", _nested_model(500))
    place("subgraphs nested 30 deep", _nested_model(30))

    # External data: kept beside the model, then pointed elsewhere.
    outside = folder / "outside.data"
    outside.write_bytes(b"\0" * 4096)

    def external(location: str | None, *, offset: str | None = None, length: str | None = None,
                 files=None) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        tensor = max(copy.graph.initializer, key=lambda t: len(t.raw_data))
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset or "0"), ("length", length or str(size))):
            if value is not None:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        return copy

    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data

    def beside(name: str):
        def make(home: Path) -> None:
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_bytes(weights)
        return make

    def link(home: Path) -> None:
        (home / "link.data").symlink_to(outside)

    cases = [
        ("external data beside the model (valid)", external("w.data"), beside("w.data")),
        ("external data in a subfolder", external("sub/w.data"), beside("sub/w.data")),
        ("external data '../outside.data'", external("../outside.data"), None),
        ("external data 'sub/../../outside.data'", external("sub/../../outside.data"), beside("sub/w.data")),
        ("external data at an absolute path", external(str(outside)), None),
        ("external data at /etc/passwd", external("/etc/passwd"), None),
        ("external data at /dev/zero", external("/dev/zero", length=str(1 << 40)), None),
        ("external data through a symlink out", external("link.data"), link),
        ("external data missing", external("missing.data"), None),
        ("external data without location", external(None), beside("w.data")),
        ("external data location ''", external(""), None),
        ("external data location '.'", external("."), None),
        ("external data location with NUL", external("w.data\x00../x"), beside("w.data")),
        ("external data length 1 TB", external("w.data", length=str(1 << 40)), beside("w.data")),
        ("external data offset past the end", external("w.data", offset=str(1 << 40)), beside("w.data")),
        ("external data negative offset", external("w.data", offset="-8"), beside("w.data")),
        ("external data offset not a number", external("w.data", offset="abc"), beside("w.data")),
        ("external data short file", external("w.data"), lambda home: (home / "w.data").write_bytes(b"\0" * 8)),
    ]
    for label, proto, extra in cases:
        place(label, proto.SerializeToString(), extra=extra)
    return made


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _nested_model(depth: int) -> bytes:
    """A ModelProto whose If nodes nest subgraphs `depth` deep, written by hand: protobuf's own writer refuses
    to go past its recursion limit, which is the point."""
    graph = _field(1, _field(4, b"Identity"))  # GraphProto.node[0].op_type
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + b"\xa0\x01\x05"  # name, g, type = GRAPH
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # node: op_type, attribute
    graph += _field(12, _field(1, b"y"))  # an output named y
    return b"\x08\x08" + _field(7, graph) + _field(8, b"\x10\x11")  # ir_version 8, graph, opset_import version 17


def checkpoint_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    import numpy as np
    import torch

    folder.mkdir()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes | None = None, *, obj=None, legacy: bool = False) -> None:
        path = folder / f"{len(made):04d}.pt"
        if obj is not None:
            torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        else:
            path.write_bytes(data or b"")
        made.append((label, path))

    for label, data in byte_mutants(assets.checkpoint.read_bytes(), rng, truncations=30, flips=110, overwrites=30):
        place(f"zip checkpoint {label}", data)
    legacy = assets.legacy_checkpoint.read_bytes()
    for label, data in byte_mutants(legacy, rng, truncations=20, flips=50, overwrites=15):
        place(f"legacy checkpoint {label}", data)
    state = assets.state
    pwn = _Pwn(assets.pwned)
    place("a pickle that runs os.mkdir", obj={**state, "features.0.weight": pwn})
    place("a legacy pickle that runs os.mkdir", obj={"x": pwn}, legacy=True)
    place("a plain pickle that runs os.mkdir", __import__("pickle").dumps(pwn))
    place("a pickle of a Path (not weights-only)", obj={"state_dict": state, "where": Path("/tmp")})
    place("another architecture", assets.other_architecture.read_bytes())
    place("an ONNX file given as checkpoint", assets.onnx.read_bytes())
    place("empty file", b"")
    place("random bytes", bytes(rng.randrange(256) for _ in range(2048)))
    place("a list of tensors", obj=list(state.values()))
    place("one tensor", obj=torch.zeros(3))
    place("a dict of numbers", obj={"a": 1, "b": 2.0})
    place("an empty dict", obj={})
    place("a string", obj="weights")
    place("integer keys", obj={i: v for i, v in enumerate(state.values())})
    place("complex weights", obj={k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()})
    place("int8 weights", obj={k: v.to(torch.int8) for k, v in state.items()})
    place("NaN weights", obj={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                              for k, v in state.items()})
    place("a missing key", obj={k: v for i, (k, v) in enumerate(state.items()) if i})
    place("an extra key", obj={**state, "extra.weight": torch.zeros(2)})
    place("a wrong shape", obj={**state, "classifier.weight": torch.zeros(3, 3)})
    huge_view = torch.zeros(1, 1).expand(1 << 30, 1 << 30)  # stride 0: a 4-byte storage
    place("a huge view of a tiny storage", obj={**state, "classifier.weight": huge_view})
    place("a non-tensor value", obj={**state, "classifier.weight": "zeros"})
    place("a numpy array value", obj={**state, "classifier.weight": np.zeros((10, 16), np.float32)})
    place("DataParallel prefix (valid)", obj={f"module.{k}": v for k, v in state.items()})
    place("wrapped under state_dict (valid)", obj={"state_dict": state, "epoch": 3, "best_prec1": 90.0})
    place("wrapped under model, not a dict", obj={"model": "resnet"})
    place("a meta tensor", obj={**state, "classifier.weight": torch.empty(10, 16, device="meta")})
    place("a sparse tensor", obj={**state, "classifier.weight": torch.zeros(10, 16).to_sparse()})
    home = folder / "folder.pt"
    home.mkdir()
    made.append(("a folder", home))
    made.append(("a path that does not exist", folder / "absent.pt"))
    return made


def npz_files(assets: Assets, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """Dataset files: the npz mutated byte by byte, and .npy headers that lie about their size."""
    import io
    import zipfile

    import numpy as np

    folder.mkdir()
    made: list[tuple[str, Path]] = []

    def place(label: str, data: bytes) -> None:
        path = folder / f"{len(made):04d}.npz"
        path.write_bytes(data)
        made.append((label, path))

    original = (assets.folder / "digits.npz").read_bytes()
    place("the original (valid)", original)
    for label, data in byte_mutants(original, rng, truncations=15, flips=30, overwrites=15):
        place(f"npz {label}", data)
    for shape in [(10**12, 8, 8), (2**62, 1), (-1, 8, 8), (40, 8, 8, 10**9)]:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("images.npy", header.getvalue() + bytes(64))
            labels = io.BytesIO()
            np.save(labels, np.zeros(40, np.int64))
            zipped.writestr("labels.npy", labels.getvalue())
        place(f"npy header declaring shape {list(shape)}", archive.getvalue())
    return made


# ---------------------------------------------------------------- the campaign

def build_cases(folder: Path) -> tuple[list[Case], dict]:
    """The check, bench and checkpoint cases, and what the run phase needs."""
    rng = random.Random(SEED)
    assets = Assets(folder / "assets")
    recipes = assets.folder / "recipes"  # beside the assets: seeds name them as ../tiny.onnx etc.
    recipes.mkdir()
    seeds = recipe_seeds(assets)
    vocabulary = sorted(set().union(*(_keys(tomllib.loads(text)) for text in seeds.values())))
    cases: list[Case] = []

    def add(kind: str, label: str, argv: list[str], timeout_s: float = CHECK_TIMEOUT_S) -> None:
        cases.append(Case(id=len(cases), kind=kind, label=label, argv=argv, timeout_s=timeout_s))

    for name, text in seeds.items():
        count = SEED_COUNTS.get(name, REAL_RECIPE_COUNT)
        for index in range(count):
            mutant, how = mutate_recipe(text, rng, vocabulary=vocabulary, numbers=NUMBERS)
            path = recipes / f"{name.replace('/', '-')}-{index:03d}.toml"
            path.write_text(mutant, encoding="utf-8", errors="surrogatepass")
            add("recipes/check", f"{name} {how} ({path.name})", ["check", str(path)])
    for label, path in special_recipes(recipes):
        add("recipes/check", f"special: {label}", ["check", str(path)])

    run_mutants = []
    for index in range(RUN_MUTANTS):
        mutant, how = mutate_recipe(TINY_RUN, rng, vocabulary=vocabulary, numbers=RUN_NUMBERS, edits=1)
        path = recipes / f"run-{index:03d}.toml"
        path.write_text(mutant, encoding="utf-8", errors="surrogatepass")
        run_mutants.append((how, path))
        add("recipes/check", f"run-base {how} ({path.name})", ["check", str(path)])

    onnx_cases = onnx_files(assets, folder / "onnx", rng)
    bench_picked = set(rng.sample(range(len(onnx_cases)), min(BENCH_SAMPLE, len(onnx_cases))))
    for index, (label, path) in enumerate(onnx_cases):
        recipe = path.parent / "recipe.toml" if path.parent.is_dir() and path.parent != folder / "onnx" else \
            folder / "onnx" / f"recipe-{index:04d}.toml"
        recipe.write_text(file_recipe("onnx", model=f'onnx = "{path}"'))
        add("onnx/recipe", f"{label} ({path})", ["check", str(recipe)])
        # Every hand-made hostile file goes through bench; of the byte-level mutants, a seeded sample (each
        # one that passes the host-side check starts the device runner, about half a second).
        crafted = not label.startswith(("truncated", "bit-flipped", "overwritten"))
        if crafted or index in bench_picked:
            add("onnx/bench", f"{label} ({path})", ["bench", str(path), "--runs", "3", "--warmup", "1"])
    valid = assets.onnx
    for label, path in onnx_cases[:: max(1, len(onnx_cases) // 12)]:
        add("onnx/bench", f"--compare {label} ({path})",
            ["bench", str(valid), "--compare", str(path), "--runs", "3", "--warmup", "1"])

    for index, (label, path) in enumerate(checkpoint_files(assets, folder / "checkpoints", rng)):
        recipe = folder / "checkpoints" / f"recipe-{index:04d}.toml"
        recipe.write_text(file_recipe("checkpoint", model=f'{SMALL_CNN}\ncheckpoint = "{path}"'))
        add("checkpoint/check", f"{label} ({path})", ["check", str(recipe)])
    for index, (label, path) in enumerate(npz_files(assets, folder / "npz", rng)):
        recipe = folder / "npz" / f"recipe-{index:04d}.toml"
        recipe.write_text(file_recipe("npz", model=SMALL_CNN, evaluation=f'path = "{path}"'))
        add("npz/check", f"{label} ({path})", ["check", str(recipe)])
    return cases, {"run_mutants": run_mutants, "assets": assets}


def campaign(folder: Path, *, workers: int | None = None) -> tuple[list[tuple[Case, str, Ending]], dict]:
    """Every case, run; [(case, ending class, ending)] and facts for the assertions."""
    workers = workers or min(2, os.cpu_count() or 1)
    started = time.monotonic()
    cases, extra = build_cases(folder)
    built = time.monotonic()
    endings = run_cases(cases, folder=folder, workers=workers)
    # `run` does real work only for recipes that validate: the first mutants that pass `check`, and as many
    # that fail it (they must fail `run` the same way, before anything is written).
    by_path = {c.argv[1]: c for c in cases if c.argv[0] == "check"}
    passing, failing = [], []
    for how, path in extra["run_mutants"]:
        ending = endings[by_path[str(path)].id]
        (passing if ending.code == 0 else failing).append((how, path))
    out = folder / "runs"
    run_cases_ = []
    for how, path in passing[:RUN_SAMPLE_PASSING] + failing[:RUN_SAMPLE_FAILING]:
        run_cases_.append(Case(id=len(cases) + len(run_cases_), kind="recipes/run",
                               label=f"run-base {how} ({path.name})",
                               argv=["run", str(path), "--out", str(out / path.stem)], timeout_s=RUN_TIMEOUT_S))
    endings.update(run_cases(run_cases_, folder=folder, workers=workers))
    results = [(case, classify(case, endings[case.id]), endings[case.id]) for case in cases + run_cases_]
    facts = {"pwned": extra["assets"].pwned.exists(), "seconds": time.monotonic() - started,
             "build_seconds": built - started, "runs_passing_check": len(passing)}
    return results, facts


def table(results: list[tuple[Case, str, Ending]]) -> str:
    """Markdown: cases by kind and how they ended, and the seconds the workers spent on them."""
    counts = collections.Counter((case.kind, ending) for case, ending, _ in results)
    seconds = collections.Counter()
    for case, _, ending in results:
        seconds[case.kind] += ending.seconds
    lines = ["| cases | total | " + " | ".join(ENDINGS) + " | seconds |", "|---|---:|" + "---:|" * (len(ENDINGS) + 1)]
    for kind in KINDS:
        total = sum(counts[(kind, e)] for e in ENDINGS)
        lines.append(f"| {kind} | {total} | " + " | ".join(str(counts[(kind, e)]) for e in ENDINGS)
                     + f" | {seconds[kind]:.0f} |")
    lines.append(f"| all | {len(results)} | " + " | ".join(str(sum(counts[(k, e)] for k in KINDS)) for e in ENDINGS)
                 + f" | {sum(seconds.values()):.0f} |")
    return "\n".join(lines)


def failure_report(results: list[tuple[Case, str, Ending]], *, shown: int = 12) -> str:
    failed = [(case, ending_class, ending) for case, ending_class, ending in results if ending_class in FAILURES]
    parts = [table(results), f"{len(failed)} cases failed; the first {min(shown, len(failed))}:"]
    for case, ending_class, ending in failed[:shown]:
        last = " | ".join((ending.escaped or ending.stderr).strip().splitlines()[-3:])[:600]
        parts.append(f"- [{ending_class}] {case.kind}: {case.label}\n  edgepress {' '.join(case.argv)[:300]}\n"
                     f"  exit {ending.code}: {last}")
    return "\n".join(parts)


def test_the_referee_sees_crashes_and_hangs_and_goes_on(tmp_path):
    """The harness itself, on a model entry that kills its interpreter and one that never returns: each is
    reported as such, and a fresh worker runs the next case."""
    (tmp_path / "fuzz_hostile_entry.py").write_text(
        "import os, signal, time\n"
        "def crash(**kwargs):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "def hang(**kwargs):\n    time.sleep(3600)\n")
    cases = []
    for index, entry in enumerate(["fuzz_hostile_entry:crash", "fuzz_hostile_entry:hang", None]):
        model = f'entry = "{entry}"\ninput_shape = [1, 8, 8]' if entry else 'name = "small_cnn_8"'
        recipe = tmp_path / f"recipe-{index}.toml"
        recipe.write_text(f'[model]\n{model}\n[data]\nevaluation = [{{ dataset = "digits:test", limit = 8 }}]\n')
        cases.append(Case(id=index, kind="recipes/check", label=str(entry), argv=["check", str(recipe)],
                          timeout_s=10.0))
    endings = run_cases(cases, folder=tmp_path, workers=2, python_path=tmp_path)
    assert [classify(case, endings[case.id]) for case in cases] == ["crash", "hang", "ok"], endings
    assert endings[0].signal == signal.SIGSEGV


def test_untrusted_input_never_crashes_edgepress(tmp_path):
    results, facts = campaign(tmp_path)
    counts = collections.Counter(case.kind for case, _, _ in results)
    assert counts["recipes/check"] >= 1000 and counts["recipes/run"] >= 10, counts
    assert counts["onnx/bench"] + counts["onnx/recipe"] >= 300 and counts["checkpoint/check"] >= 200, counts
    assert counts["npz/check"] >= 50, counts
    assert not facts["pwned"], "a checkpoint's pickle ran os.mkdir: torch.load without weights_only"
    assert not any(ending in FAILURES for _, ending, _ in results), failure_report(results)
    endings = collections.Counter(ending for _, ending, _ in results)
    # Both endings happen in every family: the fuzzing is neither all-invalid nor all-harmless.
    for kind in KINDS:
        assert {e for c, e, _ in results if c.kind == kind} == {"ok", "one-line error, exit 2"}, (kind, table(results))
    assert endings["ok"] and endings["one-line error, exit 2"]


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the Markdown table of how the cases ended")
    parser.add_argument("--keep", type=Path, help="run in this (empty) folder and keep it")
    parser.add_argument("--dump", type=Path, help="write every case and its ending here, one JSON line each")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="edgepress-fuzz-") as scratch:
        where = options.keep or Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        results, facts = campaign(where)
        if options.dump:
            with open(options.dump, "w") as fh:
                for case, ending_class, ending in results:
                    fh.write(json.dumps({"kind": case.kind, "label": case.label, "argv": case.argv,
                                         "ending": ending_class, "code": ending.code,
                                         "stderr": ending.stderr[-3000:]}) + "\n")
        print(table(results) if options.table else failure_report(results, shown=len(results)))
        print(f"\n{len(results)} cases in {facts['seconds']:.0f} s (files made in {facts['build_seconds']:.0f} s); "
              f"{facts['runs_passing_check']} of the run mutants passed check; pickle ran: {facts['pwned']}")
    failed = any(ending in FAILURES for _, ending, _ in results) or facts["pwned"]
    sys.exit(1 if failed else 0)
