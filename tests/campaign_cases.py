"""The campaign's cases (issue 17, point 8), by class: what a new user with inputs of their own tries.

`build(folder)` lays out a user's world under `folder` and returns the cases, each a command line for
`edgepress.cli.main.main` with the ending it must have: "ok" (exit 0), "error" (exactly one `edgepress: error:`
line naming `fragment`, exit 2) or "ok or error" where either is a fair answer (a setting that is odd but
harmless). The world:
- home/: the decoy, a user's folder full of things edgepress must never touch (names that look like
  edgepress's temporary files among them); runs/keep-me.txt: a user's file in the default output parent.
- inputs/: the recipes, data files and model modules the cases use (user_models/ is on the workers' path).
The signal cases need a process to kill: they live in test_campaign.py.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.fuzz_harness import CHECK_TIMEOUT_S, RUN_TIMEOUT_S, Case

CLASSES = ("folders", "names", "entry points", "models", "labels", "sets", "settings", "commands")

BASE = """
name = "campaign"
reference_stage = "model"

[model]
name = "small_cnn_8"
kwargs = { width = 4 }

[data]
training = { dataset = "digits:train", limit = 64 }
calibration = { dataset = "digits:train", limit = 40 }
evaluation = [{ dataset = "digits:test", limit = 32 }]
preprocess = { mean = [0.5], std = [0.5] }

[[stages]]
kind = "train"
epochs = 1
batch_size = 32

[[stages]]
kind = "export"
exporter = "torchscript"

[[stages]]
kind = "ptq"

[target]
threads = 1

[bench]
warmup_runs = 1
runs = 200

[budgets]
size_bytes = 1000000
"""

# The decoy: relative path -> bytes. A user's thesis backup and notes whose names end like temporary files,
# a report.md and a stage-like folder of their own, a file with edgepress's own temporary prefix.
DECOY_FILES = {
    ".thesis.old/chapter1.tex": b"\\chapter{One}\n",
    ".notes.tmp": b"call the bank\n",
    "report.md": b"# my own report\n",
    "00-model/weights.txt": b"not edgepress's\n",
    ".edgepress-tmp-mine.tmp": b"a user's file under edgepress's prefix, outside any run folder\n",
    "adopted/notes.txt": b"keep me\n",
    "adopted/.cache.old/blob": b"\x00" * 64,
    "data/train.npz": b"PK not really\n",
}


@dataclass(frozen=True)
class Plan:
    kind: str  # one of CLASSES
    label: str
    argv: list[str]
    expect: str  # "ok", "error" or "ok or error"
    fragment: str = ""  # what the one error line must contain
    timeout_s: float = CHECK_TIMEOUT_S


class World:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.inputs = folder / "inputs"
        self.models = self.inputs / "user_models"
        self.plans: list[Plan] = []
        self.count = 0

    def recipe(self, replace: dict[str, str] | None = None, *, text: str | None = None, name: str | None = None) -> Path:
        """BASE with each `old` replaced by `new` (each must occur), as a new file."""
        text = BASE if text is None else text
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        self.count += 1
        path = self.inputs / (name or f"recipe-{self.count:03d}.toml")
        path.write_text(text, encoding="utf-8")
        return path

    def add(self, kind: str, label: str, argv: list[str], expect: str, fragment: str = "", *,
            timeout_s: float = CHECK_TIMEOUT_S) -> None:
        assert kind in CLASSES and expect in ("ok", "error", "ok or error")
        self.plans.append(Plan(kind, label, [str(a) for a in argv], expect, fragment, timeout_s))

    def check(self, kind: str, label: str, replace: dict[str, str], expect: str = "error", fragment: str = "") -> None:
        self.add(kind, label, ["check", self.recipe(replace)], expect, fragment)

    def run_refused(self, kind: str, label: str, replace: dict[str, str], fragment: str = "", *,
                    default_out: bool = False) -> None:
        """`run` must refuse it before any stage, so it never reaches the output folder (`default_out`: the
        recipe's name picks it, runs/<name> under the campaign's folder)."""
        out = [] if default_out else ["--out", self.folder / "runs" / f"refused-{self.count + 1:03d}"]
        self.add(kind, label, ["run", self.recipe(replace), *out], "error", fragment)


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def _images(count: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 17, size=(count, size, size), dtype=np.uint8)


def _idx(path: Path, array: np.ndarray) -> str:
    """An IDX file (the MNIST format): magic with the uint8 type code and rank, the sizes, the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())
    return str(path)


def _lay_out(world: World) -> None:
    for relative, data in DECOY_FILES.items():
        path = world.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (world.folder / "runs").mkdir()
    (world.folder / "runs" / "keep-me.txt").write_text("a user's file beside the run folders\n")
    world.models.mkdir(parents=True)
    (world.models / "__init__.py").write_text("")
    (world.models / "nets.py").write_text(
        "from shutil import rmtree\n"
        "from torch import nn\n\n"
        "SCALE = 3\n\n\n"
        "def build(width=4):\n"
        "    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, 10))\n\n\n"
        "build.input_shape = (1, 8, 8)\n\n\n"
        "def broken(width=4):\n"
        "    raise RuntimeError('the user\\'s builder fails')\n\n\n"
        "def not_a_model(width=4):\n"
        "    return 'a string'\n\n\n"
        "class TwoHeads(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n\n"
        "    def forward(self, x):\n"
        "        return self.head(x), self.head(x).sum(1)\n\n\n"
        "def two_heads():\n"
        "    return TwoHeads()\n\n\n"
        "def regressor():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))\n")
    (world.models / "fails_on_import.py").write_text("raise ValueError('the module itself is broken')\n")


def _folders(world: World) -> None:
    good = world.recipe()
    home = world.home
    world.add("folders", "--out the decoy (a non-empty folder of the user's)", ["run", good, "--out", home], "error",
              "did not create")
    world.add("folders", "demo --out the decoy", ["demo", "--out", home], "error", "did not create")
    world.add("folders", "--out the decoy's .thesis.old folder", ["run", good, "--out", home / ".thesis.old"], "error",
              "did not create")
    world.add("folders", "--out a file", ["run", good, "--out", home / ".notes.tmp"], "error", "is a file")
    world.add("folders", "--out under a file", ["run", good, "--out", home / ".notes.tmp" / "run"], "error", "a file")
    world.add("folders", "--out /dev/null", ["run", good, "--out", "/dev/null"], "error", "a file")
    world.add("folders", "--out a symlink to the decoy", ["run", good, "--out", world.inputs / "link-to-home"],
              "error", "did not create")
    (world.inputs / "link-to-home").symlink_to(home)
    world.add("folders", "--out '' (the working folder)", ["run", good, "--out", ""], "error", "did not create")
    world.add("folders", "--out a name too long for the file system", ["run", good, "--out", home / ("x" * 300)],
              "error", "too long")
    world.add("folders", "--adopt the decoy, whose 00-model/ would be replaced", ["run", good, "--out", home, "--adopt"],
              "error", "00-model")
    world.add("folders", "--out a read-only folder", ["run", good, "--out", world.folder / "readonly" / "out"], "error",
              "cannot write")
    world.add("folders", "--out a read-only run folder", ["run", good, "--out", world.folder / "readonly-run"], "error",
              "cannot write")
    world.add("folders", "--from a stage the recipe lacks", ["run", good, "--out", home / "fresh", "--from", "ptqq"],
              "error", "did you mean 'ptq'")
    world.add("folders", "a run into a new subfolder of the decoy", ["run", good, "--out", home / "edgepress-run"], "ok",
              timeout_s=RUN_TIMEOUT_S)
    world.add("folders", "the same run again (kept stages)", ["run", good, "--out", home / "edgepress-run"], "ok",
              timeout_s=RUN_TIMEOUT_S)
    world.add("folders", "--adopt a folder of the user's (their files beside the run's)",
              ["run", good, "--out", home / "adopted", "--adopt"], "ok", timeout_s=RUN_TIMEOUT_S)
    world.add("folders", "the adopted folder again, without --adopt (it is a run folder now)",
              ["run", good, "--out", home / "adopted"], "ok", timeout_s=RUN_TIMEOUT_S)


def _names(world: World) -> None:
    names = {
        "empty": '""', "parent path": '"../escaped"', "absolute path": '"/tmp/edgepress-escaped"',
        "slash": '"a/b"', "backslash": '"a\\\\b"', "leading dot": '".hidden"', "dot dot": '".."',
        "101 characters": '"' + "n" * 101 + '"', "tab": '"tab\\there"', "newline": '"new\\nline"',
        "NUL": '"nul\\u0000"', "not a string": "5", "an array": '["x"]', "a dot": '"."',
    }
    for label, value in names.items():
        world.run_refused("names", f"name = {label}", {'name = "campaign"': f"name = {value}"}, "name",
                          default_out=True)
    world.add("names", "no name, and a file name with a leading dot",
              ["run", world.recipe({'name = "campaign"\n': ""}, name=".hidden.toml")], "error", "file name")
    world.run_refused("names", "a stage name with a slash", {'kind = "ptq"': 'kind = "ptq"\nname = "../ptq"'}, "name")
    world.run_refused("names", "a stage name of 65 characters", {'kind = "ptq"': f'kind = "ptq"\nname = "{"p" * 65}"'},
                      "name")


def _entry_points(world: World) -> None:
    pwned = world.folder / "PWNED"
    hostile = {
        "os:system": f'entry = "os:system"\nkwargs = {{ command = "touch {pwned}" }}',
        "posix:system": f'entry = "posix:system"\nkwargs = {{ command = "touch {pwned}" }}',
        "subprocess:run": f'entry = "subprocess:run"\nkwargs = {{ args = ["touch", "{pwned}"] }}',
        "shutil:rmtree on the decoy": f'entry = "shutil:rmtree"\nkwargs = {{ path = "{world.home}" }}',
        "builtins:exec": f'entry = "builtins:exec"\nkwargs = {{ source = "open(\'{pwned}\', \'w\')" }}',
        "a user module's imported rmtree": f'entry = "user_models.nets:rmtree"\nkwargs = {{ path = "{world.home}" }}',
        "torch.nn:Linear (defined elsewhere)": 'entry = "torch.nn:Linear"\nkwargs = { in_features = 1, out_features = 10 }',
        "torch.serialization:load (unpickles)": f'entry = "torch.serialization:load"\nkwargs = {{ f = "{pwned}.pt", '
                                                'weights_only = false }',
        "torch.hub:load (downloads)": 'entry = "torch.hub:load"\nkwargs = { repo_or_dir = "x/y", model = "z" }',
        "edgepress.core.atomic:remove_leftovers": f'entry = "edgepress.core.atomic:remove_leftovers"\nkwargs = {{ folder = '
                                             f'"{world.home}" }}',
        "a module constant": 'entry = "user_models.nets:SCALE"\nkwargs = {}',
    }
    for label, model in hostile.items():
        world.check("entry points", f"entry {label}", {'name = "small_cnn_8"\nkwargs = { width = 4 }': model})
    plain = {
        "a missing module": ('entry = "user_models.absent:build"', "error", "cannot import"),
        "a module that fails on import": ('entry = "user_models.fails_on_import:build"', "error", "failed"),
        "a missing function": ('entry = "user_models.nets:biuld"', "error", "did you mean 'build'"),
        "no colon": ('entry = "user_models.nets.build"', "error", "package.module:function"),
        "a builder that raises": ('entry = "user_models.nets:broken"\ninput_shape = [1, 8, 8]', "error",
                                  "RuntimeError"),
        "a builder that returns no model": ('entry = "user_models.nets:not_a_model"\ninput_shape = [1, 8, 8]', "error",
                                            "not a torch.nn.Module"),
        "the user's own builder": ('entry = "user_models.nets:build"', "ok", ""),
    }
    for label, (model, expect, fragment) in plain.items():
        world.check("entry points", f"entry {label}", {'name = "small_cnn_8"': model}, expect, fragment)


def _models(world: World) -> None:
    """Models whose output top-1 cannot score: judged by fidelity (metric auto), and a recipe that trains them on
    class labels is refused at check and before any stage, not an internal error or a meaningless pass."""
    for label, builder in (("two outputs (a tuple)", "two_heads"), ("one value per sample (a regressor)", "regressor")):
        world.check("models", f"a model with {label}", {'name = "small_cnn_8"\nkwargs = { width = 4 }':
                    f'entry = "user_models.nets:{builder}"\ninput_shape = [1, 8, 8]'}, fragment="class scores")
        world.run_refused("models", f"run: a model with {label}", {'name = "small_cnn_8"\nkwargs = { width = 4 }':
                          f'entry = "user_models.nets:{builder}"\ninput_shape = [1, 8, 8]'}, "class scores")


def _labels(world: World) -> None:
    inputs, images = world.inputs, _images(40)
    bad = {
        "past the model's 10 classes": np.arange(40, dtype=np.uint8) % 11,
        "negative": np.full(40, -1, dtype=np.int8),
        "floats": np.linspace(0, 9, 40),
        "uint64 past int64": np.full(40, 2**63 + 5, dtype=np.uint64),
        "two-dimensional": np.zeros((40, 2), dtype=np.int64),
        "huge int64": np.full(40, 2**40, dtype=np.int64),
    }
    for number, (label, labels) in enumerate(bad.items()):
        path = _npz(inputs / f"labels-{number}.npz", images=images, labels=labels)
        world.check("labels", f"evaluation labels {label}",
                    {'evaluation = [{ dataset = "digits:test", limit = 32 }]': f'evaluation = [{{ path = "{path}" }}]'})
    past = _npz(inputs / "labels-past.npz", images=images, labels=np.arange(40, dtype=np.uint8) % 12)
    for role in ("training", "calibration"):
        old = f'{role} = {{ dataset = "digits:train", limit = {64 if role == "training" else 40} }}'
        world.check("labels", f"{role} labels past the model's classes", {old: f'{role} = {{ path = "{past}" }}'},
                    fragment="class")
        world.run_refused("labels", f"run: {role} labels past the model's classes",
                          {old: f'{role} = {{ path = "{past}" }}'}, "class")


def _sets(world: World) -> None:
    inputs = world.inputs
    evaluation = 'evaluation = [{ dataset = "digits:test", limit = 32 }]'
    files = {
        "no samples": _npz(inputs / "empty.npz", images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.uint8)),
        "more images than labels": _npz(inputs / "uneven.npz", images=_images(10), labels=np.zeros(9, np.uint8)),
        "no labels array": _npz(inputs / "nolabels.npz", images=_images(10)),
        "a pickled object array": str(inputs / "pickled.npz"),
        "a file that is no npz": str(inputs / "text.npz"),
        "a truncated npz": str(inputs / "truncated.npz"),
        "a folder": str(inputs),
        "images of another size": _npz(inputs / "big.npz", images=_images(10, size=16), labels=np.zeros(10, np.uint8)),
        "a missing file": str(inputs / "absent.npz"),
    }
    np.savez(inputs / "pickled.npz", images=np.array([object()] * 3, dtype=object), labels=np.zeros(3, np.uint8))
    (inputs / "text.npz").write_text("images,labels\n1,2\n")
    (inputs / "truncated.npz").write_bytes(Path(files["more images than labels"]).read_bytes()[:300])
    for label, path in files.items():
        world.check("sets", f"evaluation set: {label}", {evaluation: f'evaluation = [{{ path = "{path}" }}]'})
    empty = files["no samples"]
    world.check("sets", "training set: no samples",
                {'training = { dataset = "digits:train", limit = 64 }': f'training = {{ path = "{empty}" }}'})
    world.check("sets", "calibration set: no samples",
                {'calibration = { dataset = "digits:train", limit = 40 }': f'calibration = {{ path = "{empty}" }}'})
    idx_images = _idx(inputs / "empty-images.idx", np.zeros((0, 8, 8), np.uint8))
    idx_labels = _idx(inputs / "empty-labels.idx", np.zeros(0, np.uint8))
    world.check("sets", "evaluation set: empty IDX files",
                {evaluation: f'evaluation = [{{ images = "{idx_images}", labels = "{idx_labels}" }}]'})
    world.check("sets", "limit = 0", {"limit = 32": "limit = 0"}, fragment="limit")
    world.check("sets", "limit = -3", {"limit = 32": "limit = -3"}, fragment="limit")
    world.check("sets", "no evaluation set", {evaluation: "evaluation = []"}, fragment="evaluation")
    world.check("sets", "an unknown built-in set", {'"digits:test"': '"digits:tset"'}, fragment="digits")


def _settings(world: World) -> None:
    refused = {
        "[bench] runs = 10**12": ("runs = 200", "runs = 1000000000000"),
        "[bench] runs = 0": ("runs = 200", "runs = 0"),
        "[bench] warmup_runs = -1": ("warmup_runs = 1", "warmup_runs = -1"),
        "[bench] batch = 0": ("runs = 200", "runs = 200\nbatch = 0"),
        "[target] threads = 0": ("threads = 1", "threads = 0"),
        "[target] threads = 100000": ("threads = 1", "threads = 100000"),
        "epochs = 0": ("epochs = 1", "epochs = 0"),
        "epochs = 10**9": ("epochs = 1", "epochs = 1000000000"),
        "batch_size = 0": ("batch_size = 32", "batch_size = 0"),
        "learning_rate = -1": ("batch_size = 32", "batch_size = 32\nlearning_rate = -1.0"),
        "size_bytes = -1": ("size_bytes = 1000000", "size_bytes = -1"),
        "size_bytes = 10**30": ("size_bytes = 1000000", "size_bytes = 1000000000000000000000000000000"),
        "latency_p90_ms = -1": ("size_bytes = 1000000", "latency_p90_ms = -1.0"),
        "latency_p90_ms = 0": ("size_bytes = 1000000", "latency_p90_ms = 0"),
        "latency_p90_ms = nan": ("size_bytes = 1000000", "latency_p90_ms = nan"),
        "latency_p90_ms = inf": ("size_bytes = 1000000", "latency_p90_ms = inf"),
        "accuracy_drop_points = -5": ("size_bytes = 1000000", "accuracy_drop_points = -5.0"),
        "agreement_min = 1.5": ("size_bytes = 1000000", "agreement_min = 1.5"),
        "evaluate_samples = 0": ("threads = 1", "threads = 1\nevaluate_samples = 0"),
        "calibration_samples = 0": ('kind = "ptq"', 'kind = "ptq"\ncalibration_samples = 0'),
        "data batch_size = 0": ('preprocess = {', 'batch_size = 0\npreprocess = {'),
        "a misspelt key": ("runs = 200", "rnus = 200"),
        "a string for a number": ("runs = 200", 'runs = "many"'),
    }
    for label, (old, new) in refused.items():
        world.check("settings", label, {old: new})
    world.run_refused("settings", "run: [bench] runs = 10**12", {"runs = 200": "runs = 1000000000000"}, "runs")
    # Ordinary inputs that used to crash: a calibration set of any size, with every method.
    for method, size in (("percentile", 40), ("entropy", 33), ("minmax", 1)):
        recipe = world.recipe({'kind = "ptq"': f'kind = "ptq"\ncalibration_method = "{method}"',
                               "limit = 40": f"limit = {size}", 'name = "campaign"': f'name = "calibration-{method}"'})
        world.add("settings", f"ptq: {size} calibration images, {method}", ["run", recipe], "ok",
                  timeout_s=RUN_TIMEOUT_S)


def _commands(world: World) -> None:
    world.add("commands", "--version", ["--version"], "ok")
    world.add("commands", "an unknown command", ["compres"], "error", "")
    world.add("commands", "a recipe that does not exist", ["check", world.inputs / "absent.toml"], "error",
              "does not exist")
    world.add("commands", "a folder as the recipe", ["check", world.inputs], "error", "not a file")
    (world.inputs / "broken.toml").write_text("name = \n[model\n")
    world.add("commands", "a recipe that is not TOML", ["check", world.inputs / "broken.toml"], "error", "TOML")
    world.add("commands", "bench: a model that does not exist", ["bench", world.inputs / "absent.onnx"], "error",
              "does not exist")
    world.add("commands", "bench: a data file as the model", ["bench", world.inputs / "uneven.npz"], "error", "")
    world.add("commands", "gate: a report that does not exist", ["gate", world.inputs / "absent.json"], "error", "")
    from tests.test_signals import relu_model

    model = relu_model(world.inputs)
    outputs = {"a folder": (world.home, "is a folder"), "under a file": (world.home / ".notes.tmp" / "x", "folder"),
               "a read-only folder": (world.folder / "readonly" / "bench.json", "Read-only"),
               "under /proc": (Path("/proc/bench.json"), "--json"), "a name too long": (world.inputs / ("j" * 300), "long")}
    for label, (path, fragment) in outputs.items():
        world.add("commands", f"bench --json {label}", ["bench", model, "--runs", "200", "--json", path], "error",
                  fragment)
    report = world.folder / "runs" / "calibration-minmax" / "report.json"  # written by an earlier case
    world.add("commands", "bench --json over the model it times", ["bench", model, "--runs", "200", "--json", model],
              "error", "also an input")
    world.add("commands", "gate --junit over the report it reads", ["gate", report, "--junit", report], "error",
              "also an input")
    world.add("commands", "gate --markdown over its baseline",
              ["gate", report, "--baseline", report, "--markdown", report], "error", "also an input")
    world.add("commands", "gate --junit in a read-only folder", ["gate", report, "--junit",
                                                                   world.folder / "readonly" / "gate.xml"], "error",
              "--junit")
    for flags in (["--runs", "1000000000000"], ["--duration", "1e9"], ["--threads", "0"], ["--warmup", "-5"],
                  ["--timeout", "-1"]):
        world.add("commands", f"bench {' '.join(flags)}", ["bench", model, *flags], "error", flags[0])
    world.add("commands", "bench, plain", ["bench", model, "--runs", "200", "--json", world.inputs / "bench.json"],
              "ok")
    world.add("commands", "the base recipe, checked", ["check", world.recipe(name="plain.toml")], "ok")


def build(folder: Path) -> tuple[list[Case], dict[int, Plan], World]:
    """The world under `folder`, and the cases in a fixed order (class by class)."""
    world = World(folder)
    _lay_out(world)
    for add in (_folders, _names, _entry_points, _models, _labels, _sets, _settings, _commands):
        add(world)
    cases = [Case(id=index, kind=plan.kind, label=plan.label, argv=plan.argv, timeout_s=plan.timeout_s)
             for index, plan in enumerate(world.plans)]
    return cases, {case.id: plan for case, plan in zip(cases, world.plans)}, world


def tree_digest(root: Path, relatives) -> dict[str, str]:
    """{relative path: mode and content digest, or 'missing'} of the files a user owns."""
    import hashlib

    found = {}
    for relative in relatives:
        path = root / relative
        try:
            found[relative] = f"{os.stat(path).st_mode:o}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        except OSError as exc:
            found[relative] = f"missing ({exc.strerror})"
    return found
