"""Pruning sensitivity on the real pretrained ResNet-20: the table, the per-layer ratios it chooses
for a MAC target (against a uniform ratio at the same target), and the report's plot."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from edgepress.report import writer as report
from edgepress.report.model import Gate, Report, Stage, StageMetrics, TargetInfo
from edgepress.io import torch_artifact
from edgepress.compress.pruning import sensitivity
from edgepress.compress.prune import PruneSettings, prune_to_macs
from edgepress.compress.pruning.sensitivity import (SensitivityPoint, SensitivityTable, layer_sensitivity, prunable_layers,
                                            prune_to_macs_by_sensitivity, prune_with_layer_ratios, ratios_for_macs_target)
from edgepress.core.errors import UserError
from edgepress.models.zoo import build_model
from tests.conftest import requires_shared_data, shared_data

SHAPE = (3, 32, 32)
RATIOS = (0.25, 0.5, 0.75)
SUBSET = 256  # images of test_raw_1017 the table is measured on; the other 761 are held out
MACS_TARGET = 0.6
BLOCK_CONV1 = [f"layer{stage}.{block}.conv1" for stage in (1, 2, 3) for block in range(3)]


def accuracy(model, inputs, labels) -> float:
    with torch.no_grad():
        return float((model.eval()(inputs).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def real():
    """The pretrained ResNet-20, test_raw_1017 split into the sensitivity subset and a held-out rest,
    and the table (measured once: it is most of this file's time)."""
    from edgepress.models.checkpoint import load_checkpoint
    from edgepress.models.data import load_dataset, preprocess
    from edgepress.core.data_spec import DatasetSpec, PreprocessSpec

    # One thread: the machine is shared, and two threads under contention made each forward ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    raw = load_dataset(DatasetSpec(dataset="cifar10:test_raw_1017"))
    inputs = torch.from_numpy(preprocess(images=raw.images, spec=PreprocessSpec(mean=(0.485, 0.456, 0.406),
                                                                                 std=(0.229, 0.224, 0.225))))
    labels = torch.from_numpy(raw.labels.astype(np.int64))
    model = build_model(name="cifar_resnet20", entry=None, kwargs={})
    load_checkpoint(path=shared_data() / "weights" / "resnet20-12fca82f.th", model=model)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    settings = PruneSettings(channel_ratio=0.5)
    layers = prunable_layers(model, input_shape=SHAPE, settings=settings)
    table = layer_sensitivity(model, input_shape=SHAPE, layers=layers, ratios=RATIOS, settings=settings,
                              evaluate=lambda m: accuracy(m, inputs[:SUBSET], labels[:SUBSET]))
    yield {"model": model, "before": before, "table": table, "settings": settings, "layers": layers,
           "subset": (inputs[:SUBSET], labels[:SUBSET]), "held_out": (inputs[SUBSET:], labels[SUBSET:])}
    torch.set_num_threads(threads)


@pytest.mark.slow
@requires_shared_data
def test_table_has_every_prunable_layer_and_ratio(real):
    table = real["table"]
    assert real["layers"] == BLOCK_CONV1  # conv2 and the stem carry the zero-padded residual stream
    assert list(table.layers) == BLOCK_CONV1
    assert table.baseline_accuracy == accuracy(real["model"], *real["subset"]) > 0.85
    assert table.baseline_macs == torch_artifact.count_macs(real["model"], SHAPE)
    for name, points in table.layers.items():
        assert [p.ratio for p in points] == list(RATIOS), name
        macs = [table.baseline_macs] + [p.macs for p in points]
        assert all(a > b for a, b in zip(macs, macs[1:])), (name, macs)
    assert SensitivityTable.from_json(table.to_json()) == table


@pytest.mark.slow
@requires_shared_data
def test_accuracy_falls_as_more_channels_go(real):
    table = real["table"]
    at_most = [points[-1].accuracy for points in table.layers.values()]
    assert sum(a < table.baseline_accuracy for a in at_most) >= 7, at_most
    mean = [np.mean([points[k].accuracy for points in table.layers.values()]) for k in range(len(RATIOS))]
    # A quarter of one layer costs about nothing (on this subset the mean even rose 0.13 points: noise);
    # beyond that, the more channels go, the lower the accuracy.
    assert abs(mean[0] - table.baseline_accuracy) < 0.02 and mean[0] > mean[1] > mean[2], mean
    # The layers really differ: that is what per-layer ratios can exploit.
    assert max(at_most) - min(at_most) > 0.3, at_most


@pytest.mark.slow
@requires_shared_data
def test_input_model_is_unchanged(real):
    prune_to_macs_by_sensitivity(real["model"], input_shape=SHAPE, table=real["table"], macs_target=MACS_TARGET,
                                 settings=real["settings"])
    state = real["model"].state_dict()
    assert state.keys() == real["before"].keys()
    assert all(torch.equal(real["before"][k], v) for k, v in state.items())


@pytest.mark.slow
@requires_shared_data
def test_automatic_ratios_meet_the_target_and_beat_the_uniform_ratio(real):
    model, table = real["model"], real["table"]
    automatic, layer_ratios = prune_to_macs_by_sensitivity(model, input_shape=SHAPE, table=table,
                                                           macs_target=MACS_TARGET, settings=real["settings"])
    uniform, uniform_ratio = prune_to_macs(model, input_shape=SHAPE, settings=PruneSettings(macs_target=MACS_TARGET))
    limit = MACS_TARGET * table.baseline_macs
    assert torch_artifact.count_macs(automatic, SHAPE) <= limit
    assert torch_artifact.count_macs(uniform, SHAPE) <= limit
    assert set(layer_ratios) == set(BLOCK_CONV1) and all(0.0 <= r <= max(RATIOS) for r in layer_ratios.values())
    # The most sensitive layer at the largest ratio is cut less than the least sensitive one.
    by_damage = sorted(table.layers, key=lambda name: table.layers[name][-1].accuracy)
    assert layer_ratios[by_damage[0]] < layer_ratios[by_damage[-1]], layer_ratios
    scores = {name: {part: accuracy(net, *real[part]) for part in ("subset", "held_out")}
              for name, net in (("automatic", automatic), ("uniform", uniform))}
    print(f"\nuniform ratio {uniform_ratio:.3f}; per-layer {layer_ratios}; accuracy before fine-tuning {scores}")
    assert scores["automatic"]["subset"] > scores["uniform"]["subset"], scores
    # On images the table never saw, so the gain is not the subset's noise fitted.
    assert scores["automatic"]["held_out"] > scores["uniform"]["held_out"] + 0.05, scores


@pytest.mark.slow
@requires_shared_data
def test_plot_has_one_line_per_layer_and_the_report_shows_it(real, tmp_path):
    table = real["table"]
    svg = report.sensitivity_plot_svg(table)
    groups = {g.get("id"): g for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")
              if (g.get("id") or "").startswith("sensitivity-")}
    assert sorted(groups) == sorted(f"sensitivity-{name}" for name in BLOCK_CONV1)
    assert all(len(list(g.iter("{http://www.w3.org/2000/svg}path"))) >= 1 for g in groups.values())

    metrics = StageMetrics(values={"accuracy": 0.9}, size_bytes=1000, params=10, macs=1_000_000,
                           own={"sensitivity": table.to_json()})
    stage = Stage(name="prune", kind="prune", artifact="01-prune/model.pt", format="torch", sha256="0" * 64,
                  seconds=1.0, metrics=metrics)
    run = Report(recipe="r.toml", name="r", reference_stage="model", onnx_reference_stage=None, metric="top1",
                 metric_values=(), targets=(TargetInfo(name="local", threads=1, emulated=False, evaluate=False,
                                                       budgets={}),),
                 budgets={}, stages=(stage,), gate=Gate(stage="prune", checks=()))
    report.write_all(run, out_dir=tmp_path)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "## Pruning sensitivity: stage `prune`" in md and "| layer3.2.conv1 |" in md
    assert f"({report.sensitivity_svg_name('prune')})" in md
    assert (tmp_path / report.sensitivity_svg_name("prune")).read_text().startswith("<svg")
    assert 'id="sensitivity-layer3.2.conv1"' in page and "<td>layer3.2.conv1</td>" in page


def synthetic(curves: dict[str, list[float]], *, baseline: float = 0.9) -> SensitivityTable:
    """Each layer saves 10 of 100 MACs per 0.25 of ratio; curves are accuracies at 0.25, 0.5, 0.75."""
    return SensitivityTable(baseline_accuracy=baseline, baseline_macs=100, layers={
        name: tuple(SensitivityPoint(ratio=r, accuracy=a, macs=100 - 10 * k)
                    for k, (r, a) in enumerate(zip(RATIOS, accuracies), start=1))
        for name, accuracies in curves.items()})


def test_greedy_takes_the_cheapest_accuracy_per_mac_first():
    # b's gain at 0.25 is noise (clamped to no loss); after that b is far more sensitive than a.
    table = synthetic({"a": [0.9, 0.89, 0.85], "b": [0.91, 0.6, 0.3]})
    assert ratios_for_macs_target(table, macs_target=0.8) == {"a": 0.25, "b": 0.25}
    assert ratios_for_macs_target(table, macs_target=0.6) == {"a": 0.75, "b": 0.25}
    assert ratios_for_macs_target(table, macs_target=0.55) == {"a": 0.75, "b": 0.375}  # part-way through the last step
    with pytest.raises(UserError, match="beyond the measured ratios"):
        ratios_for_macs_target(table, macs_target=0.3)


def test_greedy_looks_past_a_costly_first_step():
    # c loses 5 points at once and nothing more; d loses 3 then 8. For 20 MACs, c to 0.5 loses least.
    table = synthetic({"c": [0.85, 0.85, 0.5], "d": [0.87, 0.82, 0.5]})
    assert ratios_for_macs_target(table, macs_target=0.8) == {"c": 0.5, "d": 0.0}


def test_layer_ratios_cut_exactly_the_named_groups_and_names_are_checked():
    torch.manual_seed(0)
    model = build_model(name="cifar_resnet20", entry=None, kwargs={}).eval()
    settings = PruneSettings(channel_ratio=0.5)
    pruned = prune_with_layer_ratios(model, example=torch.zeros(1, *SHAPE), settings=settings,
                                     layer_ratios={"layer1.0.conv1": 0.5, "layer3.2.conv1": 0.25})
    out = {name: m.out_channels for name, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    full = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert out == {**full, "layer1.0.conv1": 8, "layer3.2.conv1": 48}
    assert pruned.layer1[0].conv2.in_channels == 8  # the coupled layer follows its root
    with pytest.raises(UserError, match="did you mean 'layer1.0.conv1'"):
        prune_with_layer_ratios(model, example=torch.zeros(1, *SHAPE), settings=settings,
                                layer_ratios={"layer1.0.cnov1": 0.5})
    with pytest.raises(UserError, match="not a prunable layer"):  # conv2 carries the residual stream
        layer_sensitivity(model, input_shape=SHAPE, layers=["layer1.0.conv2"], settings=settings, evaluate=lambda m: 0.0)


def test_coupled_layers_are_measured_and_replanned(monkeypatch):
    # A chain of convs: pruning one's outputs also shrinks the next one's inputs, so single-layer
    # savings add up to more than the real saving, and the first plan misses the target.
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10)).eval()
    shape, settings = (3, 8, 8), PruneSettings(channel_ratio=0.5)
    layers = prunable_layers(model, input_shape=shape, settings=settings)
    assert layers == ["0", "2", "4"]
    table = layer_sensitivity(model, input_shape=shape, layers=layers, settings=settings, evaluate=lambda m: 1.0)
    aims = []

    def planner(t, *, macs_target):
        aims.append(macs_target)
        return ratios_for_macs_target(t, macs_target=macs_target)

    monkeypatch.setattr(sensitivity, "ratios_for_macs_target", planner)
    pruned, _ = prune_to_macs_by_sensitivity(model, input_shape=shape, table=table, macs_target=0.5, settings=settings)
    first = prune_with_layer_ratios(model, example=torch.zeros(1, *shape), settings=settings,
                                    layer_ratios=ratios_for_macs_target(table, macs_target=0.5))
    assert torch_artifact.count_macs(first, shape) > 0.5 * table.baseline_macs  # the estimate alone misses
    assert len(aims) > 1 and aims[-1] < 0.5
    assert torch_artifact.count_macs(pruned, shape) <= 0.5 * table.baseline_macs
