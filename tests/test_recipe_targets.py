"""Recipes with several targets: every ONNX stage timed by the device runner on each, evaluated where asked,
and gated per target."""

from __future__ import annotations

import pytest

import edgepress
from tests.conftest import TINY_RECIPE, assert_user_error, write_recipe

LOCAL_EVALUATED = """
[[targets]]
name = "local"
threads = 1
evaluate = true
evaluate_samples = 120
budgets = {{ agreement_min = {agreement_min} }}
"""


def recipe_text(targets: str, *, budgets: str = "") -> str:
    return TINY_RECIPE.format(epochs=2, budgets=budgets) + targets


def test_a_target_that_evaluates_reports_and_gates_its_own_numbers(tmp_path):
    recipe = write_recipe(tmp_path, text=recipe_text(LOCAL_EVALUATED.format(agreement_min=0.9)))
    report = edgepress.run(recipe, out=tmp_path / "out").to_json_dict()
    assert report["gate"]["passed"], report["gate"]
    assert report["targets"] == [{"name": "local", "threads": 1, "emulated": False, "evaluate": True,
                                  "budgets": {"agreement_min": 0.9}}]
    for stage in report["stages"]:
        m = stage["metrics"]
        if stage["format"] != "onnx":
            assert "targets" not in m
            continue
        local = m["targets"]["local"]
        assert local["emulated"] is False and local["runs"] == 200
        low, high = local["p50_ci95_ms"]
        assert low <= local["latency_ms"]["p50"] <= high
        assert len(local["samples_ms"]) == 200
        assert m["latency_ms"]["p50"] == local["latency_ms"]["p50"]  # the primary target's timing is the headline
        # Evaluated by the runner on the first 120 test images: the same ONNX Runtime, so the same answers as
        # the host's evaluation on those images.
        assert local["evaluation"]["digits:test"]["samples"] == 120
        assert 0.0 <= local["accuracy"] <= 1.0 and local["agreement"] >= 0.9
        assert local["same_as_host"] == 1.0  # the runner's ONNX Runtime is the host's: the same answers
    checks = [c for c in report["gate"]["checks"] if c.get("target") == "local"]
    assert [c["budget"] for c in checks] == ["agreement_min"] and checks[0]["passed"]


def test_a_violated_target_budget_fails_the_gate_and_names_the_target(tmp_path):
    targets = LOCAL_EVALUATED.format(agreement_min=0.5).replace("agreement_min = 0.5", "agreement_min = 0.5, size_bytes = 100")
    recipe = write_recipe(tmp_path, text=recipe_text(targets))
    ran = edgepress.run(recipe, out=tmp_path / "out")
    assert ran.gate.passed is False, ran.gate.violations
    report = ran.to_json_dict()
    size = report["stages"][-1]["metrics"]["size_bytes"]
    assert report["gate"]["passed"] is False
    assert report["gate"]["violations"] == [{"budget": "size_bytes", "limit": 100, "value": size, "target": "local"}]


@pytest.mark.parametrize("targets,fragments", [
    ('[target]\nname = "local"\n[[targets]]\nname = "local"\n', ["both [target] and [[targets]]"]),
    ('[[targets]]\nname = "telnet://board"\n', ["unknown target", "qemu-aarch64"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64:cortex-a53"\nbudgets = { latency_p90_ms = 5.0 }\n',
     ["emulated", "latency_p90_ms"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64"\nbudgets = { latency_ratio_max = 0.8 }\n',
     ["emulated", "latency_ratio_max"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64"\nbudgets = { peak_memory_bytes = 90000000 }\n',
     ["emulated", "memory", "peak_memory_bytes"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "local"\n', ["listed twice"]),
    ('[[targets]]\nname = "local"\nevaluate_sample = 10\n', ["targets[0].evaluate_sample", "evaluate_samples"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64"\nstages = ["ptg"]\n', ["'ptg'", "did you mean 'ptq'"]),
    ('[[targets]]\nname = "local"\nstages = ["ptq"]\n', ["primary target measures every ONNX stage"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64"\nstages = ["export"]\nevaluate = true\n'
     'budgets = { agreement_min = 0.9 }\n', ["does not measure the final stage 'ptq'"]),
    ('[[targets]]\nname = "local"\n[[targets]]\nname = "qemu-aarch64"\nbudgets = { agreement_min = 0.99 }\n',
     ["does not evaluate there", "evaluate = true"]),
])
def test_bad_target_tables_are_refused_before_any_work(tmp_path, targets, fragments):
    recipe = write_recipe(tmp_path, text=recipe_text(targets))
    assert_user_error(lambda: edgepress.check(recipe), *fragments)


def test_an_unreachable_device_fails_check_and_run_in_one_line_before_any_stage(tmp_path):
    targets = '[[targets]]\nname = "local"\n[[targets]]\nname = "ssh://root@127.0.0.1:1"\n'
    recipe = write_recipe(tmp_path, text=recipe_text(targets))
    assert_user_error(lambda: edgepress.check(recipe), "127.0.0.1", "1")
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "127.0.0.1")
    assert not (tmp_path / "out" / "00-model").exists(), "a stage ran before the device was found unreachable"


def test_a_targets_session_settings_reach_the_runner_and_the_report(tmp_path):
    targets = ('[[targets]]\nname = "local"\nthreads = 1\ndenormals = "zero"\n'
               'disabled_optimizers = ["SkipLayerNormFusion"]\n')
    recipe = write_recipe(tmp_path, text=recipe_text(targets))
    report = edgepress.run(recipe, out=tmp_path / "out").to_json_dict()
    assert report["gate"]["passed"], report["gate"]
    wanted = {"denormals": "zero", "disabled_optimizers": ["SkipLayerNormFusion"]}
    assert report["targets"][0]["session"] == wanted
    timed = [stage["metrics"]["targets"]["local"] for stage in report["stages"] if stage["format"] == "onnx"]
    assert timed and all(entry["session_settings"] == wanted for entry in timed)  # what the runner itself applied


@pytest.mark.parametrize("line,fragments", [
    ('denormals = "flush"', ["denormals", "keep", "zero"]),
    ('disabled_optimizers = ["Skip Layer Norm"]', ["disabled_optimizers", "SkipLayerNormFusion"]),
])
def test_bad_session_settings_are_refused_before_any_work(tmp_path, line, fragments):
    recipe = write_recipe(tmp_path, text=recipe_text(f'[[targets]]\nname = "local"\n{line}\n'))
    assert_user_error(lambda: edgepress.check(recipe), *fragments)
