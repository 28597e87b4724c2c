"""The fuzz test's cases: the seed recipes, the special recipe files, and `build_cases`, which makes them all.

The seeds are valid recipes (tests/conftest.py's tiny recipe and variants around an ONNX file, a checkpoint,
an npz file and more stages, the built-in demo and every file under recipes/); `build_cases` mutates each a
fixed number of times, adds the special recipe files, the run-phase mutants and the corrupted files of
fuzz_files (each wrapped in the smallest recipe that reads it), and returns them as `Case`s for the harness.
Everything comes from one random.Random(SEED) drawn in a fixed order, so the campaign is the same every time.
"""

from __future__ import annotations

import os
import random
import tomllib
from pathlib import Path

from tests.conftest import ROOT, TINY_RECIPE
from tests.fuzz_files import Assets, checkpoint_files, npz_files, onnx_files
from tests.fuzz_harness import CHECK_TIMEOUT_S, Case
from tests.fuzz_mutations import NUMBERS, RUN_NUMBERS, mutate_recipe

SEED = 20260306

RUN_MUTANTS = 160  # checked, to find the passing ones
BENCH_SAMPLE = 60  # mutated ONNX files that also go through `bench` (each may start the device runner)

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


def recipe_seeds(assets: Assets) -> dict[str, str]:
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
