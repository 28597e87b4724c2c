"""The distill stage's feature (hint) loss: hooks, 1x1 adapters, their training and resume, and the recipe keys."""

from __future__ import annotations

import copy

import pytest
import torch

import edgepress
from edgepress.io import torch_artifact
from edgepress.compress.distill import DistillSettings, distillation_loss
from edgepress.compress.training.hints import FeatureHints
from edgepress.compress.training.loop import fit
from edgepress.core.errors import UserError
from edgepress.models.small_cnn import small_cnn
from tests.conftest import assert_user_error, tiny_recipe_with, write_recipe

PROBE = torch.zeros(2, 1, 8, 8)


def _net(*, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_cnn(width=width).eval()


def _hints(student, teacher, student_layers, teacher_layers=None) -> FeatureHints:
    return FeatureHints(student=student, teacher=teacher, student_layers=student_layers,
                        teacher_layers=teacher_layers or student_layers, probe=PROBE, teacher_role="", seed=0)


def _hint_loss(hints: FeatureHints, student, teacher, batch) -> torch.Tensor:
    hints.reset()
    with torch.no_grad():
        teacher(batch)
    student(batch)
    return hints.loss()


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def test_hint_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = _net(width=8, seed=0)
    student = copy.deepcopy(teacher)
    batch = torch.randn(16, 1, 8, 8)
    same = _hints(student, teacher, ("features.4", "features.6", "classifier"))
    assert [p.adapter for p in same.pairs] == ["none", "none", "none"]
    assert _value(_hint_loss(same, student, teacher, batch)) == 0.0
    same.close()

    # Same shapes, different layers: no adapter, yet the features differ.
    shifted = _hints(student, teacher, ("features.6",), ("features.4",))
    assert shifted.pairs[0].adapter == "none"
    assert _value(_hint_loss(shifted, student, teacher, batch)) > 1e-3
    shifted.close()

    other = _net(width=8, seed=1)
    hints = _hints(other, teacher, ("features.4",))
    loss = _hint_loss(hints, other, teacher, batch)
    assert _value(loss) > 1e-3
    loss.backward()
    assert other.features[4].weight.grad is not None and float(other.features[4].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher only teaches
    hints.close()
    assert not other.features[4]._forward_hooks and not teacher.features[4]._forward_hooks


def test_layer_errors_name_the_closest_layer_and_the_shapes():
    student, teacher = _net(width=4, seed=0), _net(width=8, seed=0)
    with pytest.raises(UserError, match=r"hint_layers names 'features.44'.*student.*did you mean 'features.4'"):
        _hints(student, teacher, ("features.44",))
    with pytest.raises(UserError, match=r"hint_teacher_layers names 'feature.4'.*teacher.*'features.4'"):
        _hints(student, teacher, ("features.4",), ("feature.4",))
    with pytest.raises(UserError, match=r"'features.0' \(student, \[4, 8, 8\]\).*'features.4' \(teacher, \[16, 4, 4\]\)"
                                        r".*spatial size"):
        _hints(student, teacher, ("features.0",), ("features.4",))
    assert not student.features[0]._forward_hooks  # a refused setup leaves no hooks behind
    with pytest.raises(ValueError, match="hint_teacher_layers"):
        DistillSettings(hint_layers=("a", "b"), hint_teacher_layers=("a",))
    with pytest.raises(ValueError, match="hint_weight"):
        DistillSettings(hint_layers=("a",), hint_weight=-1.0)


class _Crash(Exception):
    pass


def _distill(resume_dir, *, crash_at_step: int | None = None):
    """Width-4 student after a width-8 teacher, hints through a 1x1 adapter, with fit()'s checkpoints."""
    teacher, student = _net(width=8, seed=0), _net(width=4, seed=1)
    hints = _hints(student, teacher, ("features.4", "classifier"))
    initial = copy.deepcopy(hints.adapters.state_dict())
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(96, 1, 8, 8, generator=generator), torch.randint(0, 10, (96,), generator=generator)
    settings = DistillSettings(epochs=3, batch_size=32, learning_rate=0.05, device="cpu", hint_layers=("features.4",))
    steps = 0

    def loss_fn(net, batch, target):
        nonlocal steps
        steps += 1
        if steps == crash_at_step:
            raise _Crash
        loss = _hint_loss(hints, net, teacher, batch)
        logits = net(batch)  # second forward: the hooks' captures are dropped by the next reset
        return distillation_loss(logits, teacher(batch).detach(), target, alpha=0.5, temperature=2.0) + loss, logits

    fit(student, inputs=inputs, labels=labels, settings=settings, loss_fn=loss_fn, resume_dir=resume_dir, key="k",
        log=lambda _: None, label="distill", extra_modules=hints.adapters)
    hints.close()
    return hints, initial, student


def test_width_mismatch_trains_a_1x1_adapter_that_resumes_exactly(tmp_path):
    clean, initial, clean_student = _distill(tmp_path / "clean")
    assert [p.adapter for p in clean.pairs] == ["conv1x1", "none"]
    assert clean.pairs[0].as_metrics()["student_width"] == 8 and clean.pairs[0].as_metrics()["teacher_width"] == 16
    conv = clean.adapters[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv.weight.shape == (16, 8, 1, 1)
    assert not torch.equal(conv.weight, initial["0.weight"])  # trained with the student

    with pytest.raises(_Crash):
        _distill(tmp_path / "killed", crash_at_step=5)  # 3 steps per epoch: dies in epoch 2
    assert "extra" in torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    resumed, _, resumed_student = _distill(tmp_path / "killed")
    assert torch.equal(resumed.adapters[0].weight, conv.weight)
    for key, value in clean_student.state_dict().items():
        assert torch.equal(resumed_student.state_dict()[key], value), key


HINT_RECIPE = tiny_recipe_with('''
[[stages]]
kind = "prune"
channel_ratio = 0.5

[[stages]]
kind = "distill"
teacher = "train"
epochs = 2
hint_layers = [{layers}]
hint_weight = 0.5
''').replace('[[stages]]\nkind = "ptq"\n', "")


def test_unknown_hint_layer_is_a_one_line_error(tmp_path):
    recipe = write_recipe(tmp_path, text=HINT_RECIPE.format(epochs=1, budgets="", layers='"features.44"'))
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"),
                      "'features.44'", "did you mean 'features.4'?")


def test_prune_then_distill_with_hints_runs_and_saves_the_student_only(tmp_path):
    recipe = write_recipe(tmp_path, text=HINT_RECIPE.format(epochs=2, budgets="",
                                                            layers='"features.5", "classifier"'))
    out = tmp_path / "out"
    report = edgepress.run(recipe, out=out)
    assert report.gate.passed, report.gate.violations
    stages = {s["name"]: s for s in report.to_json_dict()["stages"]}
    hints = stages["distill"]["metrics"]["distill"]["hints"]
    assert hints["weight"] == 0.5
    assert [(p["student_layer"], p["student_width"], p["teacher_width"], p["adapter"]) for p in hints["pairs"]] == [
        ("features.5", 8, 16, "conv1x1"), ("classifier", 10, 10, "none")]

    pruned, _, _ = torch_artifact.load(out / stages["prune"]["artifact"])
    student, _, _ = torch_artifact.load(out / stages["distill"]["artifact"])
    expected = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in student.state_dict().items()} == expected  # no adapter came along
    assert not any(m._forward_hooks for m in student.modules())
    assert stages["distill"]["metrics"]["params"] == stages["prune"]["metrics"]["params"]
    assert stages["export"]["format"] == "onnx"
