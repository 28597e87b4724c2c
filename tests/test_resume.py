"""Reruns keep finished stages: keyed by input, settings and code; `--force` and `--from`; SIGKILL at many moments."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgepress.running.folder import MARKER, RunFolder
from tests.conftest import ONE_THREAD, TINY_RECIPE, assert_one_line_error, run_main_on_one_thread, write_recipe

KEPT = re.compile(r"\[\d+/\d+\] \S+ -> (\d\d-\S+): kept")
STARTED = re.compile(r"\[\d+/\d+\] \S+ -> (\d\d-\S+)$")

# Every kind of stage that writes a different artifact: torch weights trained, pruned, distilled; ONNX
# exported and quantized. Few timed runs: the latency numbers are not what these tests compare.
# Training takes most epochs: with one thread an epoch of this CNN takes a few milliseconds, and a kill
# should also land between epochs.
FIVE_STAGES = TINY_RECIPE.format(epochs=40, budgets="").replace(
    '[[stages]]\nkind = "export"\n',
    '[[stages]]\nkind = "prune"\nchannel_ratio = 0.5\n\n'
    '[[stages]]\nkind = "distill"\nteacher = "train"\nepochs = 2\nbatch_size = 32\n\n'
    # TorchScript: 0.2 s an export where dynamo takes 4, in each of the file's 40-odd runs; what is
    # exported does not matter here, only that the stage is redone or kept.
    '[[stages]]\nkind = "export"\nexporter = "torchscript"\n').replace("warmup_runs = 5\nruns = 200", "warmup_runs = 2\nruns = 200")
STAGES = ["00-model", "01-train", "02-prune", "03-distill", "04-export", "05-ptq"]


# Two runs at once on two cores: torch's second thread would spin against the other run and slow both
# a hundredfold. One thread everywhere in this file (ONE_THREAD), so every run computes the same floats.
def edgepress_run(*args: str):
    return run_main_on_one_thread("run", *args)


class Rerunner:
    """A process of its own (tests/fuzz_worker.py) that runs `edgepress run` in process, rerun after rerun, on
    one thread: reruns go on two at a time, in threads, and each then costs its own work, not a fresh
    interpreter importing torch."""

    def __init__(self, folder: Path) -> None:
        from tests.fuzz_harness import _Worker

        env = {**{k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}, **ONE_THREAD}
        self.worker = _Worker(env=env, cwd=folder, log=folder / "worker.log")
        self.count = 0

    def run(self, *args: str) -> subprocess.CompletedProcess:
        from tests.fuzz_harness import Case

        self.count += 1
        self.worker.send(Case(id=self.count, kind="recipes/run", label="rerun", argv=["run", *args], timeout_s=300))
        while True:
            answers = self.worker.lines()
            assert answers is not None, (self.worker.log.name, "the rerun worker died")
            for answer in answers:
                if answer.get("id") == self.count:
                    assert answer["escaped"] is None, answer["escaped"]
                    return subprocess.CompletedProcess(args, answer["code"], answer["stdout"], answer["stderr"])


def kept(stderr: str) -> list[str]:
    return KEPT.findall(stderr)


def deterministic(report: dict) -> dict:
    """What must not depend on when or whether a run was interrupted: everything but timings."""
    stages = []
    for stage in report["stages"]:
        metrics = {k: v for k, v in stage["metrics"].items()
                   if k not in ("latency_ms", "latency_ratio", "peak_memory_bytes", "targets", "warnings")}
        stages.append({**{k: v for k, v in stage.items() if k != "seconds"}, "metrics": metrics})
    # a warning of a slower model quotes its timing: whether there is one is kept, not its numbers
    return {**report, "stages": stages, "warnings": [w.split(":")[0] for w in report.get("warnings", [])]}


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One uninterrupted run of FIVE_STAGES, and how long each stage's announcement came before the next
    one (the last: before its metrics line), and "report" from then to the exit, in seconds."""
    folder = tmp_path_factory.mktemp("clean")
    recipe = write_recipe(folder, text=FIVE_STAGES)
    began = time.monotonic()
    lines, returncode = _run_until(recipe, folder / "out", stage=None, delay_s=0)
    ended = time.monotonic() - began
    assert returncode == 0, lines
    starts = [(m.group(1), at) for at, line in lines if (m := STARTED.search(line))]
    ends = [at for _, at in starts[1:]] + [next(at for at, line in reversed(lines) if "KiB" in line)]
    windows = {name: end - at for (name, at), end in zip(starts, ends)}
    return recipe, folder / "out", {**windows, "report": ended - ends[-1]}


@pytest.mark.slow
def test_a_rerun_keeps_every_finished_stage_and_reports_the_same(clean):
    recipe, out, _ = clean
    before = {name: (out / name / "stage.json").stat().st_mtime_ns for name in STAGES}
    first_report = report_of(out)
    again = edgepress_run(str(recipe), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert kept(again.stderr) == STAGES
    assert {name: (out / name / "stage.json").stat().st_mtime_ns for name in STAGES} == before  # not rewritten
    assert deterministic(report_of(out)) == deterministic(first_report)


@pytest.mark.slow
def test_changed_settings_budgets_force_from_and_a_damaged_artifact(clean, tmp_path):
    recipe, clean_out, _ = clean
    out = tmp_path / "out"
    first = edgepress_run(str(recipe), "--out", str(out))
    assert first.returncode == 0 and kept(first.stderr) == []

    # A budget is not an input of any stage: the run re-gates without redoing one.
    budgeted = write_recipe(tmp_path, text=FIVE_STAGES.replace("[budgets]\n", "[budgets]\nsize_bytes = 10\n"),
                            name="budgeted.toml")
    proc = edgepress_run(str(budgeted), "--out", str(out))
    assert proc.returncode == 1 and kept(proc.stderr) == STAGES, proc.stderr
    assert not report_of(out)["gate"]["passed"]

    # A changed setting redoes that stage; the next stages have a new input, so they are redone too.
    changed = write_recipe(tmp_path, text=FIVE_STAGES.replace('kind = "distill"\nteacher = "train"\nepochs = 2',
                                                              'kind = "distill"\nteacher = "train"\nepochs = 1'),
                           name="changed.toml")
    proc = edgepress_run(str(changed), "--out", str(out))
    assert proc.returncode == 0 and kept(proc.stderr) == STAGES[:3], proc.stderr
    assert report_of(out)["stages"][3]["metrics"]["distill"]["epochs_run"] == 1

    # Back to the first recipe: distill is redone with 2 epochs, and the stages after it, whose folders hold
    # what was made from the 1-epoch model. Training is seeded: the report is the clean run's.
    proc = edgepress_run(str(recipe), "--out", str(out))
    assert proc.returncode == 0 and kept(proc.stderr) == STAGES[:3], proc.stderr
    assert deterministic(report_of(out)) == deterministic(report_of(clean_out))

    proc = edgepress_run(str(recipe), "--out", str(out), "--from", "export")
    assert proc.returncode == 0 and kept(proc.stderr) == STAGES[:4], proc.stderr
    proc = edgepress_run(str(recipe), "--out", str(out), "--force")
    assert proc.returncode == 0 and kept(proc.stderr) == [], proc.stderr
    assert deterministic(report_of(out)) == deterministic(report_of(clean_out))

    # An artifact changed after the fact is not trusted: that stage is redone (to the same bytes: training
    # is seeded), and the stages after it, whose input is then what it was, are kept.
    weights = out / "01-train" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    proc = edgepress_run(str(recipe), "--out", str(out))
    assert proc.returncode == 0 and kept(proc.stderr) == ["00-model"] + STAGES[2:], proc.stderr
    assert deterministic(report_of(out)) == deterministic(report_of(clean_out))

    assert_one_line_error(edgepress_run(str(recipe), "--out", str(out), "--from", "exprot"),
                          "'exprot' names no stage", "did you mean 'export'")
    assert_one_line_error(edgepress_run(str(recipe), "--out", str(out), "--from", "export", "--force"))


def _run_until(recipe: Path, out: Path, *, stage: str | None, delay_s: float,
               checkpoint_in: Path | None = None) -> tuple[list[tuple[float, str]], int]:
    """Start `edgepress run`, SIGKILL it `delay_s` after it announces `stage` (or after it finished its
    stages, for "report"; never, for None), or after that `delay_s` after a first epoch checkpoint appears in
    `checkpoint_in`; the lines it printed, each with the second it came, and the exit code."""
    started = time.monotonic()
    victim = subprocess.Popen([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**{k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}, **ONE_THREAD})
    lines: list[tuple[float, str]] = []
    armed = threading.Event()

    def read() -> None:
        last_started = False
        for line in victim.stderr:
            lines.append((time.monotonic() - started, line.rstrip()))
            last_started = last_started or line.rstrip().endswith(f"-> {STAGES[-1]}")
            finished_last = last_started and "KiB" in line  # the last stage's metrics line
            if line.rstrip().endswith(f"-> {stage}") or (stage == "report" and finished_last):
                armed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if stage is not None:
        assert armed.wait(timeout=300), f"{stage} never started: {lines[-5:]}"
        deadline = time.monotonic() + 300
        while (checkpoint_in is not None and not list(checkpoint_in.rglob("last.pt")) and victim.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.005)
        time.sleep(delay_s)
        victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=300)
    reader.join(timeout=10)
    return lines, victim.returncode


def _complete(out: Path) -> list[str]:
    return [name for name in STAGES if (out / name / "stage.json").is_file()]


@pytest.mark.slow
def test_sigkill_at_many_moments_then_the_rerun_finishes_keeps_what_was_done_and_matches(clean, tmp_path):
    recipe, clean_out, seconds = clean
    # Moments from each stage's announcement to about halfway to the next one's (one in the source model's,
    # which is done in a blink; four in training: two late enough to land after an epoch checkpoint but, as
    # runs vary, not so late that training is over, and one just after the first checkpoint, which lands
    # there however busy the machine is), and two after the last stage, while the report is written and the
    # process ends: 15 kills. A kill at an announcement lands in its stage.
    fractions = {"00-model": (0.0,), "01-train": (0.0, 0.75, 0.85), "report": (0.0, 0.3)}
    moments = [(stage, f * seconds[stage], False) for stage in STAGES + ["report"]
               for f in fractions.get(stage, (0.0, 0.45))]
    moments.insert(2, ("01-train", 0.0, True))  # a delay after the first epoch checkpoint, not the announcement
    expected = deterministic(report_of(clean_out))

    def kill_and_rerun(index: int) -> dict:
        stage, delay, after_checkpoint = moments[index]
        out = tmp_path / f"kill{index:02d}"
        printed, _ = _run_until(recipe, out, stage=stage, delay_s=delay,
                                checkpoint_in=out / f".resume-{stage}" if after_checkpoint else None)
        landed = ([m for _, line in printed if (m := STARTED.search(line))] or [None])[-1]
        complete = _complete(out)
        rerunner = rerunners.get()
        try:
            rerun = rerunner.run(str(recipe), "--out", str(out))
        finally:
            rerunners.put(rerunner)
        train_log = out / "01-train" / "stage.log"
        resumed = re.search(r"resuming train after epoch (\d+)", train_log.read_text()) if train_log.exists() else None
        return {"moment": (stage, "first checkpoint" if after_checkpoint else f"{delay:.2f} s"), "landed": landed.group(1) if landed else "startup",
                "complete": complete, "rc": rerun.returncode, "kept": kept(rerun.stderr), "stderr": rerun.stderr[-2000:],
                "same": rerun.returncode == 0 and deterministic(report_of(out)) == expected,
                "leftovers": sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER),
                "resumed_epoch": int(resumed.group(1)) if resumed else None}

    rerunners: queue.Queue[Rerunner] = queue.Queue()
    for index in range(2):
        (tmp_path / f"rerunner{index}").mkdir()
        rerunners.put(Rerunner(tmp_path / f"rerunner{index}"))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # two at once: 2 cores, and the kill moments need not be exact
            results = list(pool.map(kill_and_rerun, range(len(moments))))
    finally:
        while not rerunners.empty():
            rerunners.get().worker.stop(kill=True)

    table = "\n".join(f"{r['moment']} landed in {r['landed']}: complete {len(r['complete'])}, rerun rc {r['rc']}, "
                      f"kept {len(r['kept'])}, same {r['same']}" for r in results)
    (tmp_path / "kills.md").write_text(  # for the record: pytest keeps the last runs' tmp_path folders
        "| kill | after | landed in | stages complete | rerun exit | kept | training resumed after epoch | report as uninterrupted |\n"
        "|---|---|---|---|---|---|---|---|\n" + "".join(
            f"| {i + 1} | {r['moment'][0]} +{r['moment'][1]} | {r['landed']} | {len(r['complete'])} | {r['rc']} | "
            f"{len(r['kept'])} | {r['resumed_epoch'] or '-'} | {'yes' if r['same'] else 'NO'} |\n"
            for i, r in enumerate(results)))
    for result in results:
        assert result["rc"] == 0, (result["moment"], result["stderr"])
        assert result["kept"] == result["complete"], table  # all finished work is kept, nothing else
        assert result["same"], table
        assert result["leftovers"] == [], (result["moment"], result["leftovers"])
    # The kills were spread over every stage: each stage was killed at least once while it was running.
    assert {r["landed"] for r in results} >= set(STAGES), table
    assert sum(r["kept"] == STAGES for r in results) >= 1, table  # killed after the last stage, before the report
    assert any(r["resumed_epoch"] for r in results), table  # a killed training stage went on from its checkpoint


@pytest.mark.slow
def test_a_damaged_epoch_checkpoint_is_ignored_not_fatal(tmp_path):
    recipe = write_recipe(tmp_path, epochs=2)
    out = tmp_path / "out"
    out.mkdir()
    RunFolder(out).claim(".resume-01-train")  # a run folder whose run was killed while training
    for damaged in (b"PK\x03\x04 not a zip", b"\x80\x04junk"):
        (out / ".resume-01-train").mkdir(parents=True, exist_ok=True)
        (out / ".resume-01-train" / "last.pt").write_bytes(damaged)
        proc = edgepress_run(str(recipe), "--out", str(out), "--force")
        assert proc.returncode == 0, proc.stderr
        assert "ignoring" in (out / "01-train" / "stage.log").read_text() and "unreadable" in \
            (out / "01-train" / "stage.log").read_text()
        assert not (out / ".resume-01-train").exists()
