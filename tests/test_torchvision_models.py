"""torchvision classifiers as a user brings them (issue 18 d): `[model] entry` at torchvision's own builders.

recipes/cifar10-tv-{mobilenet_v3_small,resnet18,efficientnet_b0}.toml and the ResNet-18 QAT recipe run here
shortened (256 images, one epoch), in this process, through every stage they have; the checks are ones a broken stage fails: fewer parameters and MACs
after pruning, an INT8 ONNX file with integer kernels, and INT8 outputs that follow the FP32 model's
(an untrained or mis-calibrated quantization loses the per-image differences between logits).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, requires_shared_data

requires_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                          reason="torchvision is not installed (pip install 'edgepress[host]')")

ENTRIES = {
    "mobilenet_v3_small": "torchvision.models.mobilenetv3:mobilenet_v3_small",
    "resnet18": "torchvision.models.resnet:resnet18",
    "efficientnet_b0": "torchvision.models.efficientnet:efficientnet_b0",
}
# torchvision's own counts for these builders with num_classes=10.
PARAMS = {"mobilenet_v3_small": 1_528_106, "resnet18": 11_181_642, "efficientnet_b0": 4_020_358}


@pytest.mark.slow
@requires_torchvision
def test_entries_build_in_a_fresh_interpreter():
    """The entry mechanism alone makes torchvision importable (its CUDA-linked extension may not load
    beside the CPU torch), so nothing in this test process may have imported it first."""
    script = textwrap.dedent(f"""
        import sys, torch
        from edgepress.models.zoo import build_model
        assert "torchvision" not in sys.modules
        for name, entry in {ENTRIES!r}.items():
            model = build_model(name=None, entry=entry, kwargs={{"num_classes": 10}}).eval()
            with torch.no_grad():
                shape = tuple(model(torch.zeros(2, 3, 32, 32)).shape)
            print(name, sum(p.numel() for p in model.parameters()), shape)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = {line.split()[0]: line.split(maxsplit=1)[1] for line in proc.stdout.splitlines()}
    assert built == {name: f"{count} (2, 10)" for name, count in PARAMS.items()}


def test_compat_leaves_an_install_without_torchvision_alone(monkeypatch):
    from edgepress.models import torchvision_compat

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert torchvision_compat._extension_path() is None


def _short_recipe(recipe_name: str, *, stages_before: tuple[dict, ...] = ()):
    """The recipe file itself, with little data, one short epoch per training stage, a quick exporter,
    no budgets and no checkpoint (`stages_before` go first: a train stage in its place)."""
    from edgepress.recipe import from_table
    from edgepress.core.schema import read_toml

    path = ROOT / "recipes" / f"{recipe_name}.toml"
    table = read_toml(path, what="recipe")
    table["model"].pop("checkpoint", None)
    data = table["data"]
    data["training"] = {"dataset": "cifar10:train_raw_5085", "limit": 256}
    data["calibration"]["limit"] = 64
    data["evaluation"] = [{**data["evaluation"][0], "limit": 100}]
    if stages_before:
        table["stages"] = [*stages_before, *table["stages"]]
        table["reference_stage"] = stages_before[-1]["kind"]
    for stage in table["stages"]:
        if "epochs" in stage:
            stage.update(epochs=1, batch_size=8, warmup_epochs=0)
        if stage["kind"] in ("train", "distill"):
            # Batches of 8 (32 steps), gently: enough for BatchNorm's running statistics to leave their
            # initial values, with which these nets give the same logits for every image.
            stage["learning_rate"] = 0.01
        if stage["kind"] == "export":
            stage["exporter"] = "torchscript"  # 0.3 s where dynamo takes 5 (the full recipes use dynamo)
        if stage["kind"] == "qat":
            stage["parity_samples"] = 100
    table["bench"] = {"warmup_runs": 5, "runs": 200}
    table["target"] = {"name": "local", "latency": False}  # what is checked here is the models, not their timing
    table.pop("budgets", None)
    return from_table(table, path=path)


def _logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    """An ONNX model's logits under ONNX Runtime, or a torch artifact's under torch."""
    if path.suffix == ".pt":
        import torch

        from edgepress.io import torch_artifact

        model = torch_artifact.load(path)[0]
        with torch.no_grad():
            return model(torch.from_numpy(inputs)).numpy()
    from edgepress.runtime.session import open_session, predict

    return predict(open_session(path, threads=1), inputs, batch_size=64)


def _assert_int8_follows(int8: np.ndarray, fp32: np.ndarray) -> None:
    """INT8's logit error, against how much FP32's logits vary from image to image, is well below 1: an INT8
    model that answers the same for every image scores 1, a mis-scaled one more. (Top-1 agreement is no
    test here: a net trained one short epoch has small gaps between its logits, and a constant answer agrees
    with its favourite class.)"""
    spread = fp32 - fp32.mean(axis=0)
    assert float(np.abs(spread).max()) > 1e-3, "the FP32 model gives every image the same logits"
    error = float(np.linalg.norm(int8 - fp32) / np.linalg.norm(spread))
    assert error < 0.6, error


def _evaluation_inputs(recipe, tmp_path: Path) -> np.ndarray:
    from edgepress.running.pipeline import Pipeline

    return Pipeline(recipe, out_dir=tmp_path / "data").prepare(probe_targets=False).evaluation[0].inputs


@pytest.mark.slow
@requires_shared_data
@requires_torchvision
@pytest.mark.parametrize("model", list(ENTRIES))
def test_recipe_runs_through_every_stage(model, tmp_path):
    from edgepress.running.pipeline import Pipeline

    recipe = _short_recipe(f"cifar10-tv-{model}")
    assert recipe.model.entry == ENTRIES[model]
    result = Pipeline(recipe, out_dir=tmp_path / "run").run()
    stages = {s["name"]: s for s in result.report.to_json_dict()["stages"]}
    assert list(stages) == ["model", "train", "prune", "distill", "export", "ptq"]

    trained, pruned = stages["train"]["metrics"], stages["prune"]["metrics"]
    assert pruned["params"] < 0.8 * trained["params"]
    assert pruned["macs"] <= 0.5 * trained["macs"] * 1.01  # macs_target = 0.5, within the search's step

    quantized = stages["ptq"]["metrics"]
    int8_path = result.out_dir / stages["ptq"]["artifact"]
    assert int8_path.is_file() and quantized["size_bytes"] < 0.4 * stages["export"]["metrics"]["size_bytes"]
    assert quantized["quantization"]["int8_nodes"] > 0 and quantized["quantization"]["float_nodes"] == 0

    inputs = _evaluation_inputs(recipe, tmp_path)
    _assert_int8_follows(_logits(int8_path, inputs), _logits(result.out_dir / stages["export"]["artifact"], inputs))


@pytest.mark.slow
@requires_shared_data
@requires_torchvision
def test_resnet18_qat_recipe(tmp_path):
    """The QAT recipe starts from the full recipe's trained model; here a short train stage stands in."""
    from edgepress.running.pipeline import Pipeline

    recipe = _short_recipe("cifar10-tv-resnet18-qat", stages_before=({"kind": "train", "epochs": 1},))
    result = Pipeline(recipe, out_dir=tmp_path / "run").run()
    stages = {s["name"]: s for s in result.report.to_json_dict()["stages"]}
    assert list(stages) == ["model", "train", "qat"]
    int8_path = result.out_dir / stages["qat"]["artifact"]
    assert stages["qat"]["metrics"]["size_bytes"] < 0.3 * stages["train"]["metrics"]["size_bytes"]
    inputs = _evaluation_inputs(recipe, tmp_path)
    _assert_int8_follows(_logits(int8_path, inputs), _logits(result.out_dir / stages["train"]["artifact"], inputs))
