"""Distillation after pruning, and a training stage killed mid-run that resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import edgepress
from edgepress.running.folder import MARKER
from edgepress.compress.distill import DistillSettings, distillation_loss
from tests.conftest import (ONE_THREAD, TINY_RECIPE, assert_user_error, run_main_on_one_thread, tiny_recipe_with,
                            write_recipe)


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    temperature, alpha = 3.0, 0.7
    p_teacher = torch.softmax(teacher / temperature, 1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / temperature, 1))).sum(1).mean()
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * torch.nn.functional.cross_entropy(student, labels)
    got = distillation_loss(student, teacher, labels, alpha=alpha, temperature=temperature)
    assert torch.allclose(got, expected, atol=1e-6)
    assert float(distillation_loss(teacher, teacher, labels, alpha=1.0, temperature=temperature)) == pytest.approx(0, abs=1e-6)


def test_distill_settings_are_validated():
    with pytest.raises(ValueError, match="alpha"):
        DistillSettings(alpha=1.5)
    with pytest.raises(ValueError, match="validation_split"):
        DistillSettings(early_stopping_patience=2)
    # mixup blends images, not labels: only a loss on the teacher's outputs alone may use it
    with pytest.raises(ValueError, match="alpha = 1"):
        DistillSettings(mixup=1.0)
    with pytest.raises(ValueError, match="'mixup' = -0.5 is outside"):
        DistillSettings(alpha=1.0, mixup=-0.5)
    assert DistillSettings(alpha=1.0, mixup=0.4).mixup == 0.4
    from edgepress.compress.train import TrainSettings

    with pytest.raises(ValueError, match="distill or qat"):
        TrainSettings(mixup=1.0)


def test_mixup_blends_pairs_of_the_batch_reproducibly():
    from edgepress.compress.training.loop import _mix

    batch = torch.arange(8, dtype=torch.float32).reshape(8, 1, 1, 1) * torch.ones(8, 3, 2, 2)
    first = _mix(batch, alpha=1.0, generator=torch.Generator().manual_seed(5))
    again = _mix(batch, alpha=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert not torch.equal(first, batch)
    # Each sample is a convex blend of two of the batch's samples: constant per sample, inside [0, 7].
    per_sample = first.reshape(8, -1)
    assert torch.all(per_sample == per_sample[:, :1])
    assert float(per_sample.min()) >= 0.0 and float(per_sample.max()) <= 7.0
    # Sharpness follows alpha: at 0.05 almost every weight is near 0 or 1, so samples stay near themselves or their partner.
    sharp = _mix(batch, alpha=0.05, generator=torch.Generator().manual_seed(5)).reshape(8, -1)[:, 0]
    assert float(((sharp - sharp.round()).abs() < 0.05).float().mean()) >= 0.75


PRUNE_DISTILL = tiny_recipe_with('''
[[stages]]
kind = "prune"
channel_ratio = 0.5

[[stages]]
kind = "distill"
teacher = "train"
epochs = 3
augment = "crop_flip"
crop_padding = 1
validation_split = 0.1
early_stopping_patience = 2
''')


def test_prune_then_distill_runs_and_shrinks_the_exported_graph(tmp_path):
    recipe = write_recipe(tmp_path, text=PRUNE_DISTILL.format(epochs=4, budgets=""))
    report = edgepress.run(recipe, out=tmp_path / "out")
    assert report.gate.passed, report.gate.violations
    stages = {s["name"]: s["metrics"] for s in report.to_json_dict()["stages"]}
    assert stages["prune"]["params"] < 0.6 * stages["train"]["params"]
    assert stages["distill"]["distill"]["teacher"] == "train"
    assert "val_accuracy" in stages["distill"]["distill"]["history"][-1]
    assert stages["distill"]["accuracy"] > stages["prune"]["accuracy"] - 0.02
    assert stages["export"]["params"] < 0.6 * stages["train"]["params"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".") and p.name != MARKER]  # checkpoints cleaned up


def test_teacher_that_is_not_a_finished_stage(tmp_path):
    recipe = write_recipe(tmp_path, text=PRUNE_DISTILL.format(epochs=1, budgets="").replace('teacher = "train"',
                                                                                             'teacher = "export"'))
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "teacher 'export'")


@pytest.mark.slow
def test_training_killed_mid_run_resumes_to_identical_weights(tmp_path):
    text = TINY_RECIPE.format(epochs=12, budgets="").replace("limit = 400", "limit = 1400")
    text = text.replace('[[stages]]\nkind = "export"\n\n[[stages]]\nkind = "ptq"\n', "")
    recipe = write_recipe(tmp_path, text=text)
    clean = run_main_on_one_thread("run", str(recipe), "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ONE_THREAD})
    checkpoint = out / ".resume-01-train" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed: raise epochs"
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (out / "01-train").exists() and checkpoint.exists()

    resumed = run_main_on_one_thread("run", str(recipe), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    log = (out / "01-train" / "stage.log").read_text()
    assert "resuming train after epoch" in log
    first = json.loads((tmp_path / "clean" / "report.json").read_text())["stages"][1]
    second = json.loads((out / "report.json").read_text())["stages"][1]
    assert second["sha256"] == first["sha256"]  # bit-identical weights to the uninterrupted run
    assert second["metrics"]["train"]["history"] == first["metrics"]["train"]["history"]


def test_bf16_without_native_support_falls_back_to_fp32(tmp_path):
    from edgepress.compress.training.loop import LoopSettings, fit

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    messages = []

    def loss_fn(net, batch, target):
        logits = net(batch)
        return torch.nn.functional.cross_entropy(logits, target), logits

    fit(model, inputs=torch.randn(16, 1, 2, 2), labels=torch.randint(0, 3, (16,)),
        settings=LoopSettings(epochs=1, precision="bf16", device="cpu"), loss_fn=loss_fn, resume_dir=None, key="k",
        log=messages.append)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert any("no native bf16" in m for m in messages) == (not native)


def test_batchnorm_recalibration_replaces_the_running_statistics():
    """A few steps at torchvision MobileNetV3's BatchNorm momentum (0.01) leave the running mean near its
    initial 0; recalibration makes it the plain mean over the chosen training samples."""
    from edgepress.compress.training.loop import LoopSettings, fit
    from edgepress.compress.train import cross_entropy_loss_fn

    inputs = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 + 3
    labels = torch.arange(64) % 3

    def trained(samples: int):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        logs: list[str] = []
        fit(model, inputs=inputs, labels=labels, settings=LoopSettings(epochs=1, batch_size=16, batchnorm_recalibration=samples),
            loss_fn=cross_entropy_loss_fn(), resume_dir=None, key="k", log=logs.append)
        with torch.no_grad():
            batch_mean = model[0](inputs).mean(dim=(0, 2, 3))
        return model[1], batch_mean, logs

    norm, batch_mean, _ = trained(0)
    assert not torch.allclose(norm.running_mean, batch_mean, atol=0.1)
    norm, batch_mean, logs = trained(64)
    assert torch.allclose(norm.running_mean, batch_mean, atol=1e-4)
    assert norm.momentum == 0.01  # what the model trains with later is left as it was
    assert "running statistics of 1 BatchNorm layers recomputed on 64 training samples" in logs[-1]
