"""examples/release-gate.yml: every `edgepress` command in it uses flags its command has, and its data step
stops a fresh runner with a clear message until it is adapted."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, requires_shared_data, run_cli, shared_data

try:
    import yaml
except ImportError:  # not a dependency of edgepress: the text reader below serves alone then
    yaml = None

WORKFLOW = ROOT / "examples" / "release-gate.yml"
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
ARRAY = re.compile(r"^(\w+)\+?=\((.*)\)$")  # a bash array, e.g. args=(--junit gate.xml)
EXPANSION = re.compile(r"^\$\{(\w+)\[@\]\}$")  # "${args[@]}"
FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9-]*")


def run_scripts(text: str) -> dict[str, str]:
    """{step name: its `run:` script} of every job, read by PyYAML where installed, else by run_scripts_by_text."""
    if yaml is None:
        return run_scripts_by_text(text)
    scripts = {}
    for job in yaml.safe_load(text)["jobs"].values():
        for index, step in enumerate(job["steps"]):
            if "run" in step:
                scripts[step.get("name", f"step {index}")] = step["run"]
    return scripts


STEP = re.compile(r"^(\s*)- (?:name: (.*)|\w+:.*)$")
RUN = re.compile(r"^(\s*)run: ?(.*)$")


def run_scripts_by_text(text: str) -> dict[str, str]:
    """The same as run_scripts for a workflow written as this one is: `run: command` on one line, or `run: |`
    and a block indented deeper than `run:`; a step named by `- name:` (else `step N`)."""
    scripts, name, count = {}, None, 0
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        step, run = STEP.match(lines[index]), RUN.match(lines[index])
        if step:
            name, count = step[2] or f"step {count}", count + 1
        elif run and run[2] != "|":
            scripts[name] = run[2]
        elif run:
            block = []
            while index + 1 < len(lines) and (not lines[index + 1].strip()
                                               or len(lines[index + 1]) - len(lines[index + 1].lstrip()) > len(run[1])):
                index += 1
                block.append(lines[index])
            indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
            scripts[name] = "\n".join(line[indent:] for line in block).strip("\n") + "\n"
        index += 1
    return {key.strip("'\""): value for key, value in scripts.items()}


def edgepress_commands(script: str) -> list[tuple[str, list[str]]]:
    """(command, words) of every `edgepress COMMAND ...` in a bash script; bash arrays the script builds
    (NAME=(...), NAME+=(...)) are expanded where "${NAME[@]}" is passed. Comment lines are not commands."""
    arrays: dict[str, list[str]] = {}
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assigned = ARRAY.match(line)
        if assigned:
            arrays.setdefault(assigned[1], []).extend(shlex.split(assigned[2]))
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        words = list(lexer)
        for start, word in enumerate(words):
            if word != "edgepress" or start + 1 >= len(words):
                continue
            args = []
            for arg in words[start + 2:]:
                if arg in SEPARATORS:
                    break
                expanded = EXPANSION.match(arg)
                args.extend(arrays.get(expanded[1], []) if expanded else [arg])
            found.append((words[start + 1], args))
    return found


def unknown_flags(command: str, args: list[str], helps: dict[str, set[str]]) -> list[str]:
    if command not in helps:
        proc = run_cli(command, "--help")
        assert proc.returncode == 0, f"`edgepress {command} --help` failed: {proc.stderr}"
        helps[command] = set(FLAG.findall(proc.stdout))
    return [arg.split("=", 1)[0] for arg in args
            if arg.startswith("--") and arg.split("=", 1)[0] not in helps[command]]


def test_every_edgepress_command_in_the_workflow_uses_flags_its_help_lists():
    scripts = run_scripts(WORKFLOW.read_text())
    helps: dict[str, set[str]] = {}
    used: dict[str, set[str]] = {}
    for step, script in scripts.items():
        for command, args in edgepress_commands(script):
            unknown = unknown_flags(command, args, helps)
            assert not unknown, f"step {step!r}: `edgepress {command}` has no {unknown} (its --help lists " \
                                f"{sorted(helps[command])})"
            used.setdefault(command, set()).update(arg for arg in args if arg.startswith("--"))
    # the commands the workflow is about were found, with the flags that reach gate through its bash array
    assert {"check", "run", "gate"} <= used.keys(), used
    assert {"--out"} <= used["run"]
    assert {"--junit", "--markdown", "--baseline", "--max-p50-growth-percent"} <= used["gate"], used["gate"]


@pytest.mark.skipif(yaml is None, reason="compares the text reader with PyYAML")
def test_the_text_reader_reads_the_run_scripts_as_pyyaml_does():
    text = WORKFLOW.read_text()
    assert run_scripts_by_text(text) == run_scripts(text)


def test_the_check_catches_a_flag_that_does_not_exist():
    script = 'args=(--junit gate.xml --jnuit typo.xml)\nedgepress gate "r.json" "${args[@]}" || [ $? -eq 1 ]\n'
    [(command, args)] = edgepress_commands(script)
    assert command == "gate" and args == ["r.json", "--junit", "gate.xml", "--jnuit", "typo.xml"]
    assert unknown_flags(command, args, {}) == ["--jnuit"]


def _data_step(tmp_path: Path, data: Path) -> subprocess.CompletedProcess:
    """The workflow's data step as GitHub runs it (bash -e), `edgepress` being this checkout."""
    scripts = run_scripts(WORKFLOW.read_text())
    [script] = [text for text in scripts.values() if "EDGEPRESS_DATA" in text]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgepress").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgepress "$@"\n')
    (bin_dir / "edgepress").chmod(0o755)
    env = {**os.environ, "EDGEPRESS_DATA": str(data), "RECIPE": "recipes/cifar10-resnet20-int8.toml",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_data_step_stops_a_fresh_runner_saying_what_to_adapt(tmp_path):
    proc = _data_step(tmp_path, tmp_path / "data")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("::error::") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is empty: adapt the step 'Provide the recipe's data'" in proc.stderr


@requires_shared_data
def test_the_data_step_passes_once_the_data_is_there(tmp_path):
    proc = _data_step(tmp_path, shared_data())
    assert proc.returncode == 0, proc.stderr
    assert "recipe cifar10-resnet20-int8 is valid" in proc.stdout
