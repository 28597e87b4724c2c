"""Untrusted input, fuzzed (issue 6, point 3).

Over a thousand mutated recipes go through `check` (and a bounded sample through `run`), a few hundred
corrupted ONNX files through a recipe's `[model] onnx` (every hand-made one and a seeded sample of the byte-level
mutants also through `bench`), a few hundred corrupted checkpoints and some corrupted dataset npz files through
`check`. Every case must end with success (exit 0; 1 for a budget violated by `run`) or with exactly one line
"edgepress: error: ...; fix: ..." and exit 2. An internal error, a traceback, a hang, a crash (a signal) or any
other ending fails the test, whose message is a table of how the cases ended and the first failures.

Everything is generated from a fixed seed. Speed: a worker process per core (tests/fuzz_worker.py) imports
edgepress once and runs case after case in process through `edgepress.cli.main.main`; a case that answers nothing
within its time-out is a hang (the worker is killed and replaced), a worker that dies by a signal is a crash.
Every file the cases read or write lies under the test's tmp_path (the workers' cwd and TMPDIR are there).

`python tests/test_fuzz.py --table` runs the same cases and prints the Markdown table.
The pieces live beside this file: tests/fuzz_harness.py (the referee), tests/fuzz_mutations.py (how inputs are
mutated), tests/fuzz_files.py (the corrupted files) and tests/fuzz_cases.py (the seeds and every case).
"""

from __future__ import annotations

import pytest

import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # script mode: the tests package is found from the repository root, as under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz_cases import build_cases  # noqa: E402 - after the path, in script mode
from tests.fuzz_harness import ENDINGS, FAILURES, RUN_TIMEOUT_S, Case, Ending, classify, run_cases  # noqa: E402

RUN_SAMPLE_PASSING = 15  # mutated run recipes that pass `check` and then go through `run`
RUN_SAMPLE_FAILING = 15

KINDS = ("recipes/check", "recipes/run", "onnx/bench", "onnx/recipe", "checkpoint/check", "npz/check")


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


@pytest.mark.slow
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


@pytest.mark.slow
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
