"""The metric table (edgepress/measure/metrics.py) and its scoring functions, on arrays whose answers are known by hand."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edgepress.measure import metrics
from edgepress.cli.main import main
from edgepress.measure.metrics import METRICS, OutputInfo
from edgepress.recipe import Budgets, usable_budgets
from edgepress.measure.scores.classification import accuracy, agreement
from edgepress.measure.scores.fidelity import output_fidelity, worst_fidelity
from edgepress.measure.scores.regression import regression_errors
from edgepress.measure.scores.segmentation import IGNORE_LABEL, segmentation_scores
from edgepress.measure.task import Task


def test_every_budget_reads_a_value_of_its_metric_and_is_a_recipe_key():
    fields = {f.name for f in dataclasses.fields(Budgets) if f.init}
    for metric in METRICS.values():
        keys = [v.key for v in metric.values]
        assert len(keys) == len(set(keys)), metric.key
        for value in metric.values:
            for budget in value.budgets:
                assert budget.value == value.key and budget.name in fields
                assert budget.name in usable_budgets(metric)
    assert {"size_bytes", "latency_p90_ms"} <= fields
    # the budgets the shipped recipes and older reports use keep their names
    assert {"accuracy_drop_points", "agreement_min", "cosine_min", "top5_agreement_min"} <= fields


@pytest.mark.parametrize("rule, value, reference, limit, passes", [
    ("min", 0.9, None, 0.95, False), ("max", 3.0, None, 5.0, True),
    ("drop", 0.90, 0.92, 1.0, False),  # a share falling 2 points
    ("rise", 40.0, 39.5, 1.0, True),
])
def test_a_budget_measures_against_the_reference_only_when_it_is_relative(rule, value, reference, limit, passes):
    budget = next(b for b in metrics.BUILTIN_BUDGETS.values() if b.rule == rule)
    measured = budget.measured(value, reference)
    assert budget.passes(measured, limit) is passes
    if rule == "drop":
        assert measured == pytest.approx(budget.scale * (reference - value))


def test_classification_scores_by_hand():
    scores = np.array([[0.1, 0.9, 0, 0, 0, 0, 0], [0.8, 0.1, 0.05, 0.01, 0.01, 0.01, 0.02]], dtype=np.float32)
    found = accuracy(scores, np.array([1, 6]))
    assert found == {"accuracy": 0.5, "top5_accuracy": 1.0}  # class 6 is the second sample's 2nd best
    assert "top5_accuracy" not in accuracy(scores[:, :5], np.array([1, 0]))  # 5 classes: top-5 says nothing
    assert agreement(scores, scores[:, ::-1])["agreement"] == 0.0


def test_fidelity_regression_and_segmentation_by_hand():
    reference = np.array([[3.0, 4.0], [1.0, 0.0]])
    same = output_fidelity(reference, reference)
    assert same == {"cosine": 1.0, "snr_db": 200.0, "max_abs_error": 0.0}
    noisy = output_fidelity(reference + np.array([[0.3, 0.4], [0.0, 0.0]]), reference)
    # error power 0.25 / 4 per element against signal power 26 / 4: 10 log10(104)
    assert noisy["snr_db"] == pytest.approx(10 * np.log10(104)) and noisy["max_abs_error"] == pytest.approx(0.4)
    assert worst_fidelity({"a": same, "b": noisy})["snr_db"] == noisy["snr_db"]
    errors = regression_errors(np.array([[2.0], [4.0]]), np.array([[1.0], [5.0]]))
    assert errors["mae"] == 1.0 and errors["rmse"] == 1.0 and errors["r2"] == pytest.approx(1 - 2 / 8)
    masks = np.array([[[0, 1], [1, IGNORE_LABEL]]])
    scores = np.zeros((1, 2, 2, 2))
    scores[0, 1] = [[1, 1], [1, 1]]  # predicts class 1 everywhere
    found = segmentation_scores(scores, masks)
    assert found["pixel_accuracy"] == pytest.approx(2 / 3)  # the ignored pixel counts nowhere
    assert found["miou"] == pytest.approx((0 / 1 + 2 / 3) / 2)


def test_auto_judges_class_scores_by_top1_and_anything_else_by_fidelity():
    from types import SimpleNamespace

    def recipe(metric="auto"):
        return SimpleNamespace(data=SimpleNamespace(metric=metric, output=None, decode=None, higher_is_better=None))

    from edgepress.measure.task import resolve

    labels = {"labels": np.array([0, 1])}
    assert resolve(recipe(), [OutputInfo("output", (1, 10), True)], labels).metric.key == "top1"
    assert resolve(recipe(), [OutputInfo("output", (1, 1), True)], labels).metric.key == "fidelity"
    assert resolve(recipe(), [OutputInfo("a", (1, 10), True), OutputInfo("b", (1, 4), True)], labels).metric.key \
        == "fidelity"
    assert resolve(recipe(), [OutputInfo("output", (1, 10), True)], None).metric.key == "fidelity"
    with pytest.raises(Exception, match="outputs are all integers"):
        resolve(recipe("fidelity"), [OutputInfo("ids", (1, 4), False)], None)
    task = Task(METRICS["fidelity"])
    out = {"a": np.ones((3, 2), np.float32), "b": np.zeros((3, 4), np.float32)}
    scored = task.score(SimpleNamespace(targets=None), out, {"a": np.ones((3, 2)), "b": np.full((3, 4), 0.5)})
    assert set(scored["outputs"]) == {"a", "b"} and scored["snr_db"] == scored["outputs"]["b"]["snr_db"]


def test_the_metrics_command_lists_every_metric_and_its_budgets(capsys):
    assert main(["metrics", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {b["name"] for row in rows for v in row["values"] for b in v["budgets"]}
    assert {row["metric"] for row in rows} >= set(METRICS)
    assert listed == set(metrics.BUILTIN_BUDGETS)
    assert main(["metrics"]) == 0
    assert "`map50_drop_points`" in capsys.readouterr().out
