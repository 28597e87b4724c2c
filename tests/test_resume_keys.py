"""Resume tells the truth (issue 17, point 6): a rerun redoes a stage when anything that can change its output
changed (the user's model code, the data, its settings, edgepress's code) and nothing else; timing settings
re-time the kept ONNX stages alone. Each case changes one thing and checks which stage folders were rebuilt
(atomic_dir replaces a rebuilt folder, so its inode changes) and which were re-timed (their stage.json changed
in place). In process, through `edgepress.cli.main.main`, for speed."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgepress.running import resume
from edgepress.cli.main import main

STAGES = ("00-model", "01-train", "02-export", "03-ptq")
ONNX_STAGES = ("02-export", "03-ptq")

MODEL_CODE = '''
from torch import nn

from {module}_layers import SCALE  # a module of the user's beside their package


def build(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.{activation}(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 10))


build.input_shape = (1, 8, 8)
'''

RECIPE = '''
name = "keys"
reference_stage = "train"

[model]
entry = "{entry}:build"

[data]
training = {{ path = "{data}", limit = 120 }}
calibration = {{ dataset = "digits:train", limit = 64 }}
evaluation = [{{ dataset = "digits:test", limit = 60 }}]
preprocess = {{ mean = [0.5], std = [0.5] }}

[[stages]]
kind = "train"
epochs = 1
batch_size = 32

[[stages]]
kind = "export"

[[stages]]
kind = "ptq"
calibration_samples = {calibration_samples}

[target]
threads = {threads}

[bench]
warmup_runs = 5
runs = {runs}

[budgets]
size_bytes = {size_bytes}
'''


class Project:
    """A user's folder: their model package, their data file, their recipe, and the run folder."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.module = root, name
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
        self.settings = {"module": name, "scale": 1, "activation": "ReLU", "calibration_samples": 64, "threads": 1, "runs": 200, "size_bytes": 10**6,
                         "data_seed": 0}
        self.out = root / "out"

    def write(self) -> Path:
        (self.root / self.module / "net.py").write_text(MODEL_CODE.format(**self.settings))
        (self.root / f"{self.module}_layers.py").write_text(f"SCALE = {self.settings['scale']}\n")
        from sklearn.datasets import load_digits  # the user's own file of real images

        digits = load_digits()
        order = np.random.default_rng(self.settings["data_seed"]).permutation(len(digits.target))[:200]
        np.savez(self.root / "train.npz", images=(digits.images[order] * 16).clip(0, 255).astype(np.uint8),
                 labels=digits.target[order].astype(np.uint8))
        recipe = self.root / "recipe.toml"
        recipe.write_text(textwrap.dedent(RECIPE.format(entry=f"{self.module}.net", data=self.root / "train.npz",
                                                        **self.settings)))
        for name in [m for m in sys.modules if m.startswith(self.module)]:
            del sys.modules[name]  # each CLI run is a fresh process: so is each run here
        importlib.invalidate_caches()
        return recipe

    def run(self) -> dict[str, str]:
        """Run; {stage folder: 'rebuilt' | 're-timed' | 'kept'}."""
        before = {s: ((self.out / s).stat().st_ino, (self.out / s / "stage.json").read_bytes())
                  for s in STAGES if (self.out / s).exists()}
        assert main(["run", str(self.write()), "--out", str(self.out)]) == 0
        found = {}
        for stage in STAGES:
            inode, saved = (self.out / stage).stat().st_ino, (self.out / stage / "stage.json").read_bytes()
            if stage not in before or before[stage][0] != inode:
                found[stage] = "rebuilt"
            else:
                found[stage] = "re-timed" if before[stage][1] != saved else "kept"
        return found


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    sys.path.insert(0, str(root))
    made = Project(root, "user_models_for_keys")
    assert set(made.run().values()) == {"rebuilt"}
    yield made
    sys.path.remove(str(root))


def everything(state: str) -> dict[str, str]:
    return {stage: state for stage in STAGES}


def test_a_rerun_with_nothing_changed_keeps_every_stage(project):
    assert project.run() == everything("kept")


def test_budgets_re_gate_only(project):
    project.settings["size_bytes"] = 10**7
    assert project.run() == everything("kept")


@pytest.mark.parametrize("setting, value", [("runs", 300), ("threads", 2)])
def test_timing_settings_re_time_the_onnx_stages_and_redo_nothing(project, setting, value):
    project.settings[setting] = value
    found = project.run()
    assert found == {"00-model": "kept", "01-train": "kept", "02-export": "re-timed", "03-ptq": "re-timed"}
    report = json.loads((project.out / "report.json").read_text())
    ptq = report["stages"][-1]["metrics"]
    assert ptq["targets"]["local"]["threads"] == project.settings["threads"]
    assert ptq["latency_ms"]["runs"] == project.settings["runs"]
    assert project.run() == everything("kept")  # the new numbers are recorded under the new key


def test_a_stage_setting_redoes_that_stage_and_those_after(project):
    project.settings["calibration_samples"] = 48
    assert project.run() == {"00-model": "kept", "01-train": "kept", "02-export": "kept", "03-ptq": "rebuilt"}


def test_the_users_model_code_redoes_everything(project):
    project.settings["activation"] = "Sigmoid"  # same parameters, another model
    assert project.run() == everything("rebuilt")
    assert project.run() == everything("kept")


def test_another_file_in_the_users_package_counts_too(project):
    (project.root / project.module / "helpers.py").write_text("SCALE = 2\n")
    assert project.run() == everything("rebuilt")


def test_a_module_the_model_imports_from_beside_its_package_counts_too(project):
    project.settings["scale"] = 2
    assert project.run() == everything("rebuilt")


def test_a_file_beside_the_package_that_the_model_does_not_import_does_not(project):
    (project.root / "notes.py").write_text("TODO = 'write the paper'\n")
    assert project.run() == everything("kept")


def test_the_users_data_redoes_everything(project):
    project.settings["data_seed"] = 1  # the same file, other images in it
    assert project.run() == everything("rebuilt")  # stages read sets beyond the ones they train on: all count


def test_edgepress_code_redoes_everything(project, monkeypatch):
    monkeypatch.setattr(resume, "code_version", lambda: "another edgepress")
    assert project.run() == everything("rebuilt")


def test_timings_against_the_onnx_reference_are_keyed_by_its_file():
    """A stage timed against the ONNX reference is re-timed when the reference's file changed, even when the stage
    itself did not (its ratio is to that file)."""
    from edgepress.running import resume
    from edgepress.recipe import BenchSpec, TargetSpec

    def key(reference):
        return resume.target_key("stage-key", target=TargetSpec(), bench=BenchSpec(), reference_sha256=reference)

    assert key("a" * 64) == key("a" * 64)
    assert len({key(None), key("a" * 64), key("b" * 64)}) == 3
