"""Issue 17: every bad input is a user error before any work. `check` and `run` refuse, in one line with exit 2,
entry points that are not the user's own code, labels the model cannot predict, empty sets and absurd settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepress.compress.prune import PruneSettings
from edgepress.compress.ptq import PtqSettings
from edgepress.compress.train import TrainSettings
from edgepress.cli.main import main
from edgepress.core.errors import UserError
from edgepress.models.zoo import build_model
from edgepress.recipe import BenchSpec, Budgets
from tests.conftest import TINY_RECIPE, main_one_line_error, write_recipe
from tests.test_models import _entry_module  # a uniquely named module of the user's own code

ENTRY_RECIPE = """
name = "entry"

[model]
entry = "{entry}"
kwargs = {kwargs}
input_shape = [1, 8, 8]

[data]
evaluation = [{{ dataset = "digits:test", limit = 8 }}]
"""


USER_SOURCE = """
    import os
    from os import system
    from shutil import rmtree
    from torch import nn
    from torch.nn import Linear
    from edgepress.models.small_cnn import small_cnn

    def build(width=4):
        return small_cnn(width=width)

    class Net(nn.Sequential):
        def __init__(self, classes=10):
            super().__init__(nn.Flatten(), nn.Linear(64, classes))
"""


@pytest.mark.parametrize("entry, kwargs, expected", [
    ("os:system", {"command": "rm -r {marker}"}, "names the standard library module 'os'"),
    ("subprocess:run", {"args": ["rm", "-r", "{marker}"]}, "names the standard library module 'subprocess'"),
    ("builtins:eval", {"source": "__import__('shutil').rmtree('{marker}')"}, "names the standard library module 'builtins'"),
    ("shutil:rmtree", {"path": "{marker}"}, "names the standard library module 'shutil'"),
    ("os.path:join", {}, "names the standard library module 'os.path'"),
    ("_io:open", {"file": "{marker}/keep", "mode": "w"}, "names the standard library module '_io'"),
    ("torch.nn:Linear", {"in_features": 2, "out_features": 2}, "part of the tools edgepress runs on"),
    ("torch.serialization:load", {"f": "{marker}/x.pt"}, "part of the tools edgepress runs on"),
    ("edgepress.core.atomic:remove_leftovers", {"folder": "{marker}"}, "part of the tools edgepress runs on"),
    ("{user}:system", {"command": "rm -r {marker}"}, "is a builtin_function_or_method, not a function"),
    ("{user}:rmtree", {"path": "{marker}"}, "is defined in 'shutil'"),
    ("{user}:Linear", {"in_features": 2, "out_features": 2}, "is defined in 'torch.nn.modules.linear'"),
    ("{user}:small_cnn", {}, "is defined in 'edgepress.models.small_cnn'"),
    ("{user}:os", {}, "is a module, not a function"),
])
def test_check_refuses_an_entry_that_is_not_the_users_own_code_before_calling_it(
        tmp_path, monkeypatch, capsys, entry, kwargs, expected):
    marker = tmp_path / "marker"
    user = _entry_module(tmp_path, monkeypatch, USER_SOURCE)
    marker.mkdir()
    (marker / "keep").write_text("mine")  # each entry, called, would remove or empty it
    entry = entry.format(user=user)
    toml_kwargs = "{ " + ", ".join(f"{k} = {_toml(v, marker)}" for k, v in kwargs.items()) + " }"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(ENTRY_RECIPE.format(entry=entry, kwargs=toml_kwargs))
    line = main_one_line_error(capsys, ["check", str(recipe)], f"model entry {entry!r}", expected)
    assert "fix: point entry at" in line
    assert (marker / "keep").read_text() == "mine"


def _toml(value, marker: Path) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v, marker) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.format(marker=marker) + '"'
    return str(value)


@pytest.mark.parametrize("entry, kwargs, classes", [
    ("{user}:build", {"width": 4}, 10),
    ("{user}:Net", {"classes": 3}, 3),
    ("edgepress.models.small_cnn:small_cnn", {"num_classes": 5}, 5),
    ("edgepress.models.small_cnn:SmallCNN", {"num_classes": 4}, 4),
])
def test_an_entry_defined_in_the_module_it_names_is_built(tmp_path, monkeypatch, entry, kwargs, classes):
    import torch

    user = _entry_module(tmp_path, monkeypatch, USER_SOURCE)
    model = build_model(name=None, entry=entry.format(user=user), kwargs=kwargs).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, classes)


def test_a_standard_library_entry_is_refused_without_importing_it(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "antigravity", raising=False)  # importing it opens a web browser
    with pytest.raises(UserError, match="standard library module 'antigravity'"):
        build_model(name=None, entry="antigravity:geohash", kwargs={})
    assert "antigravity" not in sys.modules


def tiny_recipe(tmp_path: Path, **replace: str) -> Path:
    """TINY_RECIPE (3 epochs, no budgets) with each `old` text replaced by `new`."""
    text = TINY_RECIPE.format(epochs=3, budgets="")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return write_recipe(tmp_path, text=text)


BENCH = "[bench]\nwarmup_runs = 5\nruns = 200"
BUDGETS = "[budgets]\n"
EPOCHS = "epochs = 3"
LIMIT = "limit = 64"


@pytest.mark.parametrize("old, new, key, allowed", [
    (BENCH, "[bench]\nruns = 1_000_000_000_000", "bench.runs", "[200, 100_000]"),
    (BENCH, "[bench]\nruns = 199", "bench.runs", "[200, 100_000]"),
    (BENCH, "[bench]\nwarmup_runs = 0", "bench.warmup_runs", "[1, 10000]"),
    (BENCH, "[bench]\nwarmup_runs = 1_000_000", "bench.warmup_runs", "[1, 10000]"),
    (BENCH, "[bench]\nbatch = 0", "bench.batch", "[1, 4096]"),
    (BUDGETS, "[budgets]\nsize_bytes = -1", "budgets.size_bytes", "[1, 1_099_511_627_776]"),
    (BUDGETS, "[budgets]\nsize_bytes = 0", "budgets.size_bytes", "[1, 1_099_511_627_776]"),
    (BUDGETS, "[budgets]\nlatency_p90_ms = 0", "budgets.latency_p90_ms", "(0, 3_600_000]"),
    (BUDGETS, "[budgets]\nlatency_p90_ms = -2.5", "budgets.latency_p90_ms", "(0, 3_600_000]"),
    (BUDGETS, "[budgets]\naccuracy_drop_points = -1", "budgets.accuracy_drop_points", "[0, 100]"),
    (BUDGETS, "[target]\nthreads = 0\n\n[budgets]", "target.threads", "[1, 256]"),
    (BUDGETS, "[target]\nthreads = 100000\n\n[budgets]", "target.threads", "[1, 256]"),
    (BUDGETS, "[target]\nevaluate_samples = 0\n\n[budgets]", "target.evaluate_samples", "[1, 1_000_000_000]"),
    (LIMIT, "limit = 0", "data.calibration.limit", "[1, 1_000_000_000]"),
    (LIMIT, "limit = -5", "data.calibration.limit", "[1, 1_000_000_000]"),
    (LIMIT, "limit = 10_000_000_000", "data.calibration.limit", "[1, 1_000_000_000]"),
    ('std = [0.5] }', 'std = [0.5] }\nbatch_size = 0', "data.batch_size", "[1, 65536]"),
    ("kwargs = { width = 8 }", "kwargs = { width = 8 }\nseed = -1", "model.seed", "[0, 4_294_967_295]"),
    ("kwargs = { width = 8 }", "kwargs = { width = 8 }\ninput_shape = [1, 0, 8]", "model.input_shape[1]", "[1, 65536]"),
    (EPOCHS, "epochs = 0", "stages[0].epochs", "[1, 10000]"),
    (EPOCHS, "epochs = 1_000_000", "stages[0].epochs", "[1, 10000]"),
    ("batch_size = 32", "batch_size = 10_000_000", "stages[0].batch_size", "[1, 65536]"),
    (EPOCHS, "epochs = 3\nlearning_rate = 0", "stages[0].learning_rate", "(0, 10]"),
    (EPOCHS, "epochs = 3\nseed = 4_294_967_296", "stages[0].seed", "[0, 4_294_967_295]"),
    ('kind = "ptq"', 'kind = "ptq"\ncalibration_samples = 0', "stages[2].calibration_samples", "[1, 1_000_000_000]"),
    ('kind = "ptq"', 'kind = "ptq"\ncalibration_batch = -32', "stages[2].calibration_batch", "[1, 65536]"),
])
def test_check_refuses_absurd_settings_naming_the_key_and_its_range(tmp_path, capsys, old, new, key, allowed):
    recipe = tiny_recipe(tmp_path, **{old: new})
    line = main_one_line_error(capsys, ["check", str(recipe)], f"'{key}' = ", f"is outside the sensible range {allowed}")
    assert line.endswith(f"fix: set {key.rsplit('.', 1)[-1].split('[')[0]} to a value in {allowed}")


@pytest.mark.parametrize("stage, setting, key", [
    ('kind = "prune"\nchannel_ratio = 0.5', "steps = 0", "steps"),
    ('kind = "prune"\nchannel_ratio = 0.5', "step_batch_size = 0", "step_batch_size"),
    ('kind = "prune"\nlatency_target_ms = -1.0', "", "latency_target_ms"),
    ('kind = "prune_depth"\nblocks = 0', "", "blocks"),
    ('kind = "distill"', "temperature = 0", "temperature"),
    ('kind = "distill"', "epochs = 100_000", "epochs"),
])
def test_each_stage_settings_are_bounded(tmp_path, capsys, stage, setting, key):
    recipe = tiny_recipe(tmp_path, **{'[[stages]]\nkind = "export"': f'[[stages]]\n{stage}\n{setting}\n\n[[stages]]\nkind = "export"'})
    main_one_line_error(capsys, ["check", str(recipe)], f"'stages[1].{key}' = ", "is outside the sensible range")


def test_run_refuses_absurd_settings_before_making_its_folder(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, **{BENCH: "[bench]\nruns = 1_000_000_000_000"})
    main_one_line_error(capsys, ["run", str(recipe), "--out", str(tmp_path / "out")], "'bench.runs'")
    assert not (tmp_path / "out").exists()


def _npz(path: Path, labels, *, count: int | None = None) -> Path:
    labels = np.asarray(labels)
    images = np.zeros((len(labels) if count is None else count, 8, 8), dtype=np.uint8)
    np.savez(path, images=images, labels=labels)
    return path


ROLES = {
    "evaluation": ('evaluation = [{ dataset = "digits:test" }]', 'evaluation = [{ path = "bad.npz" }]'),
    "training": ('training = { dataset = "digits:train", limit = 400 }', 'training = { path = "bad.npz" }'),
    "calibration": ('calibration = { dataset = "digits:train", limit = 64 }', 'calibration = { path = "bad.npz" }'),
}


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("labels, expected", [
    ([0, 3, 10], "has label 10, but the model scores 10 classes (0..9)"),
    ([0, 1, 250], "has label 250, but the model scores 10 classes (0..9)"),
])
@pytest.mark.parametrize("command", ["check", "run"])
def test_labels_past_the_models_classes_are_refused_before_any_stage(tmp_path, capsys, role, labels, expected, command):
    _npz(tmp_path / "bad.npz", labels)
    recipe = tiny_recipe(tmp_path, **{ROLES[role][0]: ROLES[role][1]})
    argv = [command, str(recipe)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    main_one_line_error(capsys, argv, f"{role} set 'bad.npz' {expected}", "fix: use data labelled 0..9")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels, expected", [
    ([0, -1, 2], "has label -1; labels are class indices 0..1000000"),
    ([0, 2**63 + 5], "has label 9223372036854775813; labels are class indices"),  # uint64: int64 would wrap it
    ([0, 2**40], "has label 1099511627776; labels are class indices"),
    ([0.0, 1.5], "labels are float64 with shape [2]"),
    ([True, False], "labels are bool with shape [2]"),
    ([[0, 1], [1, 0]], "labels are int64 with shape [2, 2]"),
])
@pytest.mark.parametrize("role", sorted(ROLES))
def test_labels_that_are_not_small_non_negative_integers_are_refused(tmp_path, capsys, labels, expected, role):
    import numpy as np

    values = np.array(labels, dtype=np.uint64) if labels[-1] == 2**63 + 5 else np.array(labels)
    _npz(tmp_path / "bad.npz", values)
    recipe = tiny_recipe(tmp_path, **{ROLES[role][0]: ROLES[role][1]})
    main_one_line_error(capsys, ["check", str(recipe)], "dataset 'bad.npz'", expected)


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("source", ["npz", "idx", "idx-gz"])
def test_sets_with_no_samples_are_refused(tmp_path, capsys, role, source):
    from tests.test_data import write_idx
    import numpy as np

    if source == "npz":
        _npz(tmp_path / "bad.npz", np.zeros(0, dtype=np.int64))
        given = ROLES[role][1]
    else:
        gz = source == "idx-gz"
        write_idx(tmp_path / "img", np.zeros((0, 8, 8), dtype=np.uint8), gz=gz)
        write_idx(tmp_path / "lbl", np.zeros(0, dtype=np.uint8), gz=gz)
        given = ROLES[role][1].replace('path = "bad.npz"', 'images = "img", labels = "lbl", label = "bad.npz"')
    recipe = tiny_recipe(tmp_path, **{ROLES[role][0]: given})
    main_one_line_error(capsys, ["check", str(recipe)], "dataset 'bad.npz' holds no samples")


@pytest.mark.parametrize("declared", [[None, 5], ["N", "K"]])
def test_an_onnx_models_class_count_is_read_or_run_for(tmp_path, capsys, declared):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [d or "N" for d in declared]
    weights = numpy_helper.from_array(np.ones((64, 5), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])],
                              "five", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "five.onnx"))
    recipe = write_recipe(tmp_path, text='name = "m"\n[model]\nonnx = "five.onnx"\n[data]\n'
                          'evaluation = [{ dataset = "digits:test", limit = 20 }]\n')
    main_one_line_error(capsys, ["check", str(recipe)], "evaluation set 'digits:test' has label",
                        "but the model scores 5 classes (0..4)")
    assert onnx.load(str(tmp_path / "five.onnx"))  # untouched


_RETURNS = [
    ("y", "top1 reads class scores N x K (K >= 2), and output 'output' is float of shape [1, 1]"),  # a regressor
    ("(y, y)", "the model has 2 outputs (output_0, output_1); set data.output"),
    ("{'logits': y, 'aux': y}", "the model has 2 outputs (logits, aux); set data.output"),
    ("y[:, :, None, None].expand(-1, -1, 2, 2)", "is float of shape [1, 1, 2, 2]"),
]


def _returning(tmp_path, monkeypatch, returns: str, *, metric: str) -> Path:
    source = ("from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))\n\n"
              f"    def forward(self, x):\n        y = self.head(x)\n        return {returns}\n\n\n"
              "def build():\n    return Net()\n\n\nbuild.input_shape = (1, 8, 8)\n")
    module = _entry_module(tmp_path, monkeypatch, source)
    return write_recipe(tmp_path, text=f'name = "m"\n[model]\nentry = "{module}:build"\n[data]\nmetric = "{metric}"\n'
                        'evaluation = [{ dataset = "digits:test", limit = 20 }]\n')


@pytest.mark.parametrize("returns, expected", _RETURNS)
def test_a_model_whose_output_top1_cannot_score_is_refused_at_check(tmp_path, monkeypatch, capsys, returns, expected):
    recipe = _returning(tmp_path, monkeypatch, returns, metric="top1")
    line = main_one_line_error(capsys, ["check", str(recipe)], expected)
    assert "data.metric = 'top1' does not fit this model" in line and "'fidelity'" in line.partition("fix:")[2]


@pytest.mark.parametrize("returns", [r for r, _ in _RETURNS])
def test_such_a_model_is_judged_by_fidelity_when_the_metric_is_auto(tmp_path, monkeypatch, capsys, returns):
    recipe = _returning(tmp_path, monkeypatch, returns, metric="auto")
    assert main(["check", str(recipe)]) == 0
    assert "judged by fidelity" in capsys.readouterr().out


@pytest.mark.parametrize("labels, inputs_count, expected", [
    ([0, 1, 10, 2], 4, "the training labels span 0..10, but the model scores 10 classes (0..9)"),
    ([0, 1, 99, 2], 4, "the training labels span 0..99"),
    ([0, -1, 3, 2], 4, "the training labels span -1..3"),
    ([], 0, "0 samples leave none to train on"),
])
@pytest.mark.parametrize("stage", ["train", "distill"])
def test_the_training_loop_refuses_what_it_cannot_train_on_in_one_line(labels, inputs_count, expected, stage):
    # Caught before a stage runs by check_label_range and the data readers; the loop holds its own line for callers.
    import torch

    from edgepress.compress.distill import DistillSettings, teacher_loss_fn
    from edgepress.compress.training.loop import fit
    from edgepress.compress.train import TrainSettings, cross_entropy_loss_fn
    from edgepress.models.small_cnn import small_cnn

    model = small_cnn(width=4)
    if stage == "train":
        settings, loss_fn = TrainSettings(epochs=1, batch_size=2), cross_entropy_loss_fn()
    else:
        settings = DistillSettings(epochs=1, batch_size=2, alpha=0.5)
        loss_fn = teacher_loss_fn(small_cnn(width=4).eval(), alpha=0.5, temperature=2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as caught:
        fit(model, inputs=torch.zeros(inputs_count, 1, 8, 8), labels=torch.tensor(labels, dtype=torch.int64),
            settings=settings, loss_fn=loss_fn, resume_dir=None, key="k", log=lambda _: None, label=stage)
    assert expected in caught.value.one_line() and caught.value.one_line().startswith(f"{stage}: ")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not one step taken


@pytest.mark.parametrize("settings, values", [(BenchSpec, {"runs": 10**12}), (Budgets, {"size_bytes": -1}),
                                              (PruneSettings, {"channel_ratio": 0.5, "steps": 0}),
                                              (TrainSettings, {"epochs": 0}), (PtqSettings, {"calibration_samples": 0})],
                         ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_settings_built_in_code_hold_the_same_ranges(settings, values):
    with pytest.raises(ValueError, match="outside the sensible range"):
        settings(**values)
