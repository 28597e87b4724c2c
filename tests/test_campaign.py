"""The campaign (issue 17, point 8): a new user's inputs, by class, each ending in exit 0 or exactly one
`edgepress: error: ...; fix: ...` line with exit 2, and the decoy user folder unchanged after every case.

The cases and the world they run in are in tests/campaign_cases.py; a worker process (tests/fuzz_worker.py,
through tests/fuzz_harness.py) runs them one after another in process, so that the decoy's checksum is taken
after each case and before the next. Two folders are read-only for real: a bind mount where the test may
mount (root in CI), else permission bits (which stop any user but root). The signal cases kill real
processes: each of SIGTERM, SIGINT and SIGHUP sent to `edgepress bench` and to `edgepress run` must end it and
every process it started.

`python tests/test_campaign.py` runs the campaign and prints the table.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepress.running.folder import RunFolder  # noqa: E402 - after the path, in script mode
from tests import campaign_cases  # noqa: E402
from tests.fuzz_harness import Case, Ending, classify, run_cases  # noqa: E402
from tests.test_signals import relu_model, signal_once_timing, slow_run_recipe, start  # noqa: E402

MIN_CASES = 60
# What may appear at the campaign's root besides the world: the workers' scratch and logs. Anything else is a
# file some case wrote outside the folders it was given (a recipe name that escaped runs/).
ROOT_ENTRIES = {"home", "inputs", "runs", "readonly", "readonly-run", "tmp", "matplotlib", "PWNED"}


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made read-only for this process too: a read-only bind mount as root, permission bits otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if mounted:
        mounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)
    if not mounted:
        if os.geteuid() == 0:
            raise AssertionError(f"cannot make {folder} read-only: root here, and mount --bind is refused")
        folder.chmod(0o555)
    try:
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def judge(case: Case, plan: campaign_cases.Plan, ending: Ending) -> str:
    """'ok', 'one-line error' or what went wrong: the fuzz referee's verdict, then what this case expects of it
    (its fragment named, 'edgepress:' said once, '; fix: ')."""
    verdict = classify(case, ending)
    if verdict == "one-line error, exit 2":
        error = next(line for line in ending.stderr.splitlines() if line.startswith("edgepress: error:"))
        if error.count("edgepress:") != 1 or "; fix: " not in error:
            return "error line malformed (prefix repeated, or no '; fix: ')"
        if plan.fragment not in error:
            return f"error without {plan.fragment!r}"
        verdict = "one-line error"
    wanted = {"ok": ("ok",), "error": ("one-line error",), "ok or error": ("ok", "one-line error")}[plan.expect]
    return verdict if verdict in wanted else f"{verdict}, expected {plan.expect}"


def campaign(folder: Path) -> tuple[list[tuple[campaign_cases.Plan, str, Ending, bool]], dict]:
    """Every case, run in order; [(plan, verdict, ending, decoy intact after it)] and facts."""
    cases, plans, world = campaign_cases.build(folder)
    user_files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                        if p.is_file() and p.parts[len(folder.parts)] in ("home", "runs"))
    before = campaign_cases.tree_digest(folder, user_files)
    RunFolder(folder / "readonly-run", adopt=False).make()
    RunFolder(folder / "readonly-run").claim("00-model")
    intact: dict[int, bool] = {}

    def after(case: Case, _ending: Ending) -> None:
        intact[case.id] = campaign_cases.tree_digest(folder, user_files) == before

    started = time.monotonic()
    with read_only(folder / "readonly"), read_only(folder / "readonly-run"):
        endings = run_cases(cases, folder=folder, workers=1, python_path=world.inputs, after_each=after)
    results = [(plans[c.id], judge(c, plans[c.id], endings[c.id]), endings[c.id], intact[c.id]) for c in cases]
    facts = {"seconds": time.monotonic() - started, "user_files": len(user_files), "before": before,
             "after": campaign_cases.tree_digest(folder, user_files),
             "root": sorted(p.name for p in folder.iterdir() if p.name not in ROOT_ENTRIES
                            and not p.name.startswith("worker-")),
             "pwned": (folder / "PWNED").exists()}
    return results, facts


def table(results) -> str:
    counts = collections.Counter((plan.kind, verdict) for plan, verdict, _, _ in results)
    verdicts = ["ok", "one-line error"] + sorted({v for _, v, _, _ in results} - {"ok", "one-line error"})
    lines = ["| class | cases | " + " | ".join(verdicts) + " | decoy intact |",
             "|---|---:|" + "---:|" * (len(verdicts) + 1)]
    for kind in campaign_cases.CLASSES:
        mine = [r for r in results if r[0].kind == kind]
        lines.append(f"| {kind} | {len(mine)} | " + " | ".join(str(counts[(kind, v)]) for v in verdicts)
                     + f" | {sum(r[3] for r in mine)}/{len(mine)} |")
    return "\n".join(lines)


@pytest.mark.slow
def test_campaign_every_case_ends_in_success_or_one_line_and_the_decoy_is_untouched(tmp_path):
    results, facts = campaign(tmp_path)
    assert len(results) >= MIN_CASES
    failures = [f"{plan.kind}: {plan.label}: {verdict}: {ending.stderr.strip()[-400:]!r}"
                for plan, verdict, ending, _ in results if verdict not in ("ok", "one-line error")]
    damaged = [f"{plan.kind}: {plan.label}" for plan, _, _, intact in results if not intact]
    summary = table(results)
    assert not failures, summary + "\n" + "\n".join(failures[:20])
    assert not damaged, f"the decoy changed after: {damaged[:5]}\n{summary}"
    assert facts["before"] == facts["after"]
    assert facts["root"] == [], f"written outside the folders the cases gave: {facts['root']}"
    assert not facts["pwned"], "an entry point ran a standard-library function"
    # The runs the campaign expects to succeed wrote where they were told, beside the user's files.
    adopted = tmp_path / "home" / "adopted"
    assert (adopted / "report.json").is_file() and (adopted / "notes.txt").read_text() == "keep me\n"


# ---------------------------------------------------------------- signals

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("command", ["bench", "run"])
def test_campaign_signals_end_every_child_before_edgepress_exits(tmp_path, command, signum):
    if command == "bench":
        argv = ["bench", str(relu_model(tmp_path)), "--duration", "60"]
    else:
        argv = ["run", str(slow_run_recipe(tmp_path)), "--out", str(tmp_path / "out")]
    stdout, _ = signal_once_timing(start(*argv, cwd=tmp_path), signum)
    assert "p50" not in stdout  # nothing measured is printed as if it were a result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        found, facts = campaign(Path(scratch))
        print(table(found))
        import hashlib
        import json

        before, after = (hashlib.sha256(json.dumps(facts[k], sort_keys=True).encode()).hexdigest()[:16]
                         for k in ("before", "after"))
        print(f"\n{len(found)} cases in {facts['seconds']:.0f} s; decoy: {facts['user_files']} user files, "
              f"checksum before {before}, after {after}")
        for plan, verdict, ending, _ in found:
            if verdict not in ("ok", "one-line error"):
                print(f"FAILED {plan.kind}: {plan.label}: {verdict}: {ending.stderr.strip()[-300:]}")
