"""Any model, any task (issue 18): regressors, two-input and multi-output models, data of any kind, user metrics,
all judged through the one metric table, in-process through the Python API."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgepress
from edgepress.io.arrays import load_arrays
from edgepress.core.errors import UserError
from edgepress.models.tabular import diabetes
from edgepress.running.pipeline import Pipeline
from edgepress.report.model import read_report
from edgepress.core.data_spec import DatasetSpec
from edgepress.recipe import from_table
from edgepress.core.schema import SchemaError
from tests.conftest import ROOT
from tests.test_models import _entry_module


def _recipe(name: str, tmp_path: Path, *, epochs: int = 40, **changes):
    """A shipped recipe, shortened; `changes` replace top-level tables or [data]/[budgets] keys."""
    path = ROOT / "recipes" / f"{name}.toml"
    table = tomllib.loads(path.read_text())
    for stage in table["stages"]:
        if stage["kind"] == "train":
            stage["epochs"] = epochs
    table["target"] = {"name": "local", "latency": False}  # the models are what is checked here, not their timing
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            table.setdefault(section, {})[field] = value
        else:
            table[section] = value
    return from_table(table, path=tmp_path / f"{name}.toml")


def _run(recipe, tmp_path: Path) -> dict:
    return edgepress.run(recipe, out=tmp_path / "out").to_json_dict()


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)["metrics"]


@pytest.mark.slow
def test_a_regressor_is_judged_by_mae_and_its_int8_gated_on_the_mae_it_adds(tmp_path):
    report = _run(_recipe("diabetes-mlp-int8", tmp_path), tmp_path)
    assert report["metric"] == "regression"
    assert {v["key"]: v["higher_is_better"] for v in report["metric_values"]}["mae"] is False
    untrained, trained, int8 = _stage(report, "model"), _stage(report, "train"), _stage(report, "ptq")
    for metrics in (trained, int8):
        assert "accuracy" not in metrics and "agreement" not in metrics  # argmax of one value means nothing
    assert untrained["r2"] < 0.05 < trained["r2"]  # training learnt something a constant does not
    assert trained["mae"] < untrained["mae"]
    assert int8["snr_db"] > 20 and abs(int8["mae"] - trained["mae"]) < 2.0
    checks = {c["budget"]: c for c in report["gate"]["checks"]}
    assert set(checks) == {"mae_rise_max", "mae_max", "snr_db_min"}
    assert checks["mae_rise_max"]["value"] == pytest.approx(int8["mae"] - trained["mae"])
    assert report["gate"]["passed"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| MAE |" in md.replace("MAE | RMSE", "MAE |") and "SNR" in md


@pytest.mark.slow
def test_a_model_with_two_inputs_trains_exports_and_quantizes(tmp_path):
    report = _run(_recipe("diabetes-two-inputs-int8", tmp_path, epochs=30), tmp_path)
    int8 = _stage(report, "ptq")
    model = onnx.load(str(tmp_path / "out" / "03-ptq" / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["demographics", "blood"]
    assert int8["macs"] > 0 and int8["snr_db"] > 20
    assert _stage(report, "train")["r2"] > 0.05


def test_a_metric_that_does_not_fit_or_a_budget_of_another_metric_is_refused_before_any_work(tmp_path):
    with pytest.raises(SchemaError, match="budgets.accuracy_drop_points needs data.metric = 'top1'"):
        _recipe("diabetes-mlp-int8", tmp_path, budgets={"accuracy_drop_points": 1.0})
    recipe = _recipe("diabetes-mlp-int8", tmp_path, data__metric="top1", budgets={})
    with pytest.raises(UserError, match="top1 reads class scores N x K.*is float of shape \\[1, 1\\]") as caught:
        Pipeline(recipe, out_dir=tmp_path / "out").prepare(probe_targets=False)
    assert "'fidelity' or 'regression'" in caught.value.fix
    assert not (tmp_path / "out").exists()


MULTI_SOURCE = """
    import numpy as np
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
            self.score = nn.Linear(16, 3)
            self.box = nn.Linear(16, 4)

        def forward(self, x):
            h = self.body(x)
            return {"score": self.score(h), "box": torch.sigmoid(self.box(h))}

    def build():
        return Heads()
    build.input_shape = (10,)

    def as_dataset(part="train"):
        from edgepress.models.tabular import diabetes

        found = diabetes(part)

        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return len(found["input"])

            def __getitem__(self, i):
                return torch.from_numpy(found["input"][i]), torch.from_numpy(found["targets"][i])

        return Rows()

    def as_batches(part="train"):
        from edgepress.models.tabular import diabetes

        found = diabetes(part)
        return [(found["input"][i:i + 50], found["targets"][i:i + 50]) for i in range(0, len(found["input"]), 50)]

    def within_20(outputs, targets):
        predicted = outputs["score"][:, 0]  # every output comes, by name
        return float(np.mean(np.abs(predicted - targets["targets"].reshape(-1)) <= 20))
"""


def test_data_entries_give_the_same_arrays_whether_arrays_batches_or_a_dataset(tmp_path, monkeypatch):
    module = _entry_module(tmp_path, monkeypatch, MULTI_SOURCE)
    truth = diabetes("test")
    np.savez(tmp_path / "named.npz", input=truth["input"], targets=truth["targets"])
    forms = {"arrays": DatasetSpec(entry="edgepress.models.tabular:diabetes", kwargs={"part": "test"}),
             "dataset": DatasetSpec(entry=f"{module}:as_dataset", kwargs={"part": "test"}),
             "batches": DatasetSpec(entry=f"{module}:as_batches", kwargs={"part": "test"}),
             "npz": DatasetSpec(path=tmp_path / "named.npz")}
    for form, spec in forms.items():
        found = load_arrays(spec, input_names=("input",))
        np.testing.assert_array_equal(found.feeds["input"], truth["input"], err_msg=form)
        np.testing.assert_array_equal(found.targets["targets"], truth["targets"], err_msg=form)
    limited = load_arrays(DatasetSpec(path=tmp_path / "named.npz", limit=7), input_names=("input",))
    assert len(limited) == 7 and len(limited.targets["targets"]) == 7
    np.savez(tmp_path / "nan.npz", input=truth["input"], targets=np.full_like(truth["targets"], np.nan))
    with pytest.raises(UserError, match="array 'targets' holds NaN or infinite values"):
        load_arrays(DatasetSpec(path=tmp_path / "nan.npz"), input_names=("input",))
    np.savez(tmp_path / "wrong.npz", features=truth["input"])
    with pytest.raises(UserError, match="has arrays \\['features'\\] but the model's inputs are \\['audio', 'meta'\\]"):
        load_arrays(DatasetSpec(path=tmp_path / "wrong.npz"), input_names=("audio", "meta"))


def test_a_multi_output_model_is_judged_per_output_and_a_user_metric_gates_by_name(tmp_path, monkeypatch):
    module = _entry_module(tmp_path, monkeypatch, MULTI_SOURCE)
    table = {"name": "heads", "reference_stage": "model",
             "model": {"entry": f"{module}:build"},
             "data": {"calibration": {"entry": f"{module}:as_batches"},
                      "evaluation": [{"entry": f"{module}:as_dataset", "kwargs": {"part": "test"}}]},
             "stages": [{"kind": "export"}, {"kind": "ptq", "calibration_samples": 64}],
             "bench": {"warmup_runs": 2, "runs": 200}, "target": {"name": "local", "latency": False},
             "budgets": {"snr_db_min": 15.0, "max_abs_error_max": 5.0}}
    report = _run(from_table(table, path=tmp_path / "heads.toml"), tmp_path)
    assert report["metric"] == "fidelity"  # auto: no task metric fits a dict of heads with float targets
    int8 = _stage(report, "ptq")
    per_output = int8["evaluation"]["as_dataset"]["outputs"] if "as_dataset" in int8["evaluation"] else \
        next(iter(int8["evaluation"].values()))["outputs"]
    assert set(per_output) == {"score", "box"}
    assert int8["snr_db"] == pytest.approx(min(v["snr_db"] for v in per_output.values()))
    model = onnx.load(str(tmp_path / "out" / "02-ptq" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["score", "box"]
    assert {c["budget"] for c in report["gate"]["checks"]} == {"snr_db_min", "max_abs_error_max"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Every output" in md and "| ptq | " in md and "| box |" in md

    user = dict(table, name="user-metric", stages=[{"kind": "export"}],
                data=dict(table["data"], metric=f"{module}:within_20", higher_is_better=True, output="score"),
                budgets={"within_20_min": 0.0, "within_20_drop_max": 0.0})
    with pytest.raises(SchemaError, match="unknown key 'budgets.within_20_max'"):
        from_table(dict(user, budgets={"within_20_max": 1.0}), path=tmp_path / "u.toml")
    report = _run(from_table(user, path=tmp_path / "u.toml"), tmp_path / "user")
    checks = {c["budget"]: c for c in report["gate"]["checks"]}
    assert set(checks) == {"within_20_min", "within_20_drop_max"}
    assert 0.0 <= _stage(report, "export")["within_20"] <= 1.0
    assert checks["within_20_drop_max"]["value"] == pytest.approx(0.0, abs=1e-9)  # export keeps the answers
    typed = read_report(tmp_path / "user" / "out" / "report.json")
    for stage in typed.stages:  # the torch stage too: its one row holds the user metric's value, not a dash
        assert all("within_20" in entry.values for entry in typed.on_targets(stage).values()), stage.name


def test_pruning_keeps_every_output_layer_of_a_multi_head_model_whole():
    import torch

    from edgepress.compress.pruning.channels import output_layers, prune_copy
    from edgepress.compress.prune import PruneSettings
    from edgepress.models.tiny_detector import tiny_centernet
    from edgepress.io.torch_outputs import flatten

    model = tiny_centernet(classes=10).eval()
    example = torch.zeros(1, 1, 64, 64)
    heads = output_layers(model, example)
    assert sorted(h.out_channels for h in heads) == [2, 2, 10]  # size, offset, heatmap: not only the last layer
    pruned = prune_copy(model, example=example, ratio=0.5, settings=PruneSettings(channel_ratio=0.5))
    shapes = {k: tuple(v.shape) for k, v in flatten(pruned(example)).items()}
    assert shapes == {"heatmap": (1, 10, 16, 16), "size": (1, 2, 16, 16), "offset": (1, 2, 16, 16)}
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_depth_pruning_ranks_the_blocks_of_a_model_that_is_no_classifier_by_its_outputs():
    import torch
    from torch import nn

    from edgepress.compress.prune_depth import DepthSettings, remove_blocks

    class Residual(nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.branch = nn.Linear(8, 8)
            with torch.no_grad():
                self.branch.weight.mul_(scale)

        def forward(self, x):
            return x + self.branch(x)

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.blocks = nn.Sequential(Residual(1.0), Residual(0.01), Residual(1.0))
            self.value, self.extra = nn.Linear(8, 1), nn.Linear(8, 3)

        def removable_blocks(self):
            return ["blocks.0", "blocks.1", "blocks.2"]

        def forward(self, x):
            h = self.blocks(x)
            return {"value": self.value(h), "extra": self.extra(h)}

    inputs = torch.randn(64, 8)
    _, removed = remove_blocks(Heads(), inputs=inputs, settings=DepthSettings(blocks=1), input_shape=(8,),
                               classes=False)
    assert removed[0]["block"] == "blocks.1"  # the near-identity block moves the outputs least
    assert removed[0]["score_relative_error"] < 0.05 and "score_kl" not in removed[0]


def test_feature_hints_on_a_model_with_two_inputs_are_refused_in_one_line(tmp_path):
    recipe = _recipe("diabetes-two-inputs-int8", tmp_path, epochs=1)
    table = {"name": "hints", "reference_stage": "train", "model": {"entry": recipe.model.entry},
             "data": {"metric": "regression", "training": {"entry": recipe.data.evaluation[0].entry},
                      "evaluation": [{"entry": recipe.data.evaluation[0].entry, "kwargs": {"part": "test"}}]},
             "stages": [{"kind": "train", "epochs": 1}, {"kind": "distill", "epochs": 1, "hint_layers": ["head.0"]}],
             "target": {"name": "local", "latency": False}}
    with pytest.raises(UserError, match="hint_layers \\(feature distillation\\) probe one input, and this model takes 2"):
        Pipeline(from_table(table, path=tmp_path / "h.toml"), out_dir=tmp_path / "out").run()
