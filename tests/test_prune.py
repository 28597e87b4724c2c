"""Structural pruning removes channels for real, keeps coupled layers consistent, and reloads safely."""

from __future__ import annotations


import pytest
import torch

import edgepress
from edgepress.io import torch_artifact
from edgepress.compress.prune import PruneSettings, prune_copy
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.zoo import build_model
from edgepress.io.onnx_stats import count_params_and_macs
from tests.conftest import run_and_read_stages, tiny_recipe_with


def built(name: str, **kwargs):
    torch.manual_seed(0)
    model = build_model(name=name, entry=None, kwargs=kwargs).eval()
    # Random BN statistics so that pruned channels matter and outputs are not trivially equal.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.1, 1.0)
    return model


@pytest.mark.parametrize(("name", "shape"), [("small_cnn_8", (1, 8, 8)), ("mobilenetv2_cifar", (3, 32, 32)),
                                             ("cifar_resnet20", (3, 32, 32))])
@pytest.mark.slow
def test_pruned_model_is_smaller_reloads_and_exports_smaller(tmp_path, name, shape):
    model = built(name)
    example = torch.zeros(1, *shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_copy(model, example=example, ratio=0.5, settings=PruneSettings(channel_ratio=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    assert torch_artifact.count_params(pruned) < 0.7 * torch_artifact.count_params(model)
    assert torch_artifact.count_macs(pruned, shape) < 0.7 * torch_artifact.count_macs(model, shape)

    path = tmp_path / "model.pt"
    torch_artifact.save(path, model=pruned, builder={"name": name, "kwargs": {}}, input_shape=shape)
    reloaded, reloaded_shape, _ = torch_artifact.load(path)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.allclose(pruned(x), reloaded(x), atol=1e-5)
    assert reloaded_shape == shape

    full, small = tmp_path / "full.onnx", tmp_path / "small.onnx"
    for module, out in ((model, full), (reloaded, small)):
        export_onnx(model=module, input_shape=shape, path=out, settings=ExportSettings(), log=lambda _: None)
    (full_params, full_macs), (small_params, small_macs) = count_params_and_macs(full), count_params_and_macs(small)
    assert small_params < 0.7 * full_params and small_macs < 0.7 * full_macs
    assert small.stat().st_size < 0.8 * full.stat().st_size


def test_resnet_keeps_its_residual_stream_and_classifier():
    model = built("cifar_resnet20")
    pruned = prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=0.5, settings=PruneSettings(channel_ratio=0.5))
    for stage, planes in ((pruned.layer1, 16), (pruned.layer2, 32), (pruned.layer3, 64)):
        for block in stage:
            assert block.conv2.out_channels == planes  # the zero-padded shortcut fixes these
            assert block.conv1.out_channels == planes // 2  # the block-inner channels are cut
    assert pruned.linear.out_features == 10 and pruned.linear.in_features == 64


def test_round_to_and_global_ranking():
    model = built("mobilenetv2_cifar")
    pruned = prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=0.4,
                        settings=PruneSettings(channel_ratio=0.4, round_to=8, global_ranking=True))
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.out_channels != o.out_channels for c, o in
               zip(convs, [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]))
    prunable = [c for c in convs if c.groups == 1 and c is not convs[-1]]
    assert all(c.out_channels % 8 == 0 for c in prunable)


def test_taylor_importance_uses_data():
    model = built("small_cnn_8")
    data = (torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    pruned = prune_copy(model, example=torch.zeros(1, 1, 8, 8), ratio=0.5,
                        settings=PruneSettings(channel_ratio=0.5, importance="taylor"), calibration=data)
    assert torch_artifact.count_params(pruned) < torch_artifact.count_params(model)
    with pytest.raises(UserError, match="taylor importance needs data"):
        prune_copy(model, example=torch.zeros(1, 1, 8, 8), ratio=0.5,
                   settings=PruneSettings(channel_ratio=0.5, importance="taylor"))


def test_ignored_layer_that_matches_nothing_names_the_closest():
    model = built("cifar_resnet20")
    with pytest.raises(UserError, match="layer1.0.conv9.*did you mean 'layer1.0.conv[12]'"):
        prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=0.5,
                   settings=PruneSettings(channel_ratio=0.5, ignored_layers=("layer1.0.conv9",)))


def test_ignored_layer_keeps_its_channels():
    model = built("cifar_resnet20")
    pruned = prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=0.5,
                        settings=PruneSettings(channel_ratio=0.5, ignored_layers=("layer2.1.conv1",)))
    assert pruned.layer2[1].conv1.out_channels == 32
    assert pruned.layer2[2].conv1.out_channels == 16


@pytest.mark.parametrize("bad", [{"channel_ratio": 1.0}, {"channel_ratio": 0.0}, {"macs_target": 1.5},
                                 {}, {"channel_ratio": 0.5, "macs_target": 0.5}, {"latency_ratio": 1.2},
                                 {"channel_ratio": 0.5, "latency_ratio": 0.5}, {"latency_target_ms": -1.0},
                                 {"channel_ratio": 0.5, "steps": 0}])
def test_ratio_outside_open_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError):
        PruneSettings(**bad)


def test_macs_target_is_met_with_the_smallest_ratio():
    from edgepress.compress.prune import prune_to_macs

    model = built("cifar_resnet20")
    macs = torch_artifact.count_macs(model, (3, 32, 32))
    pruned, ratio = prune_to_macs(model, input_shape=(3, 32, 32), settings=PruneSettings(macs_target=0.6))
    assert torch_artifact.count_macs(pruned, (3, 32, 32)) <= 0.6 * macs
    assert 0.2 < ratio < 0.6
    lighter = prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=ratio - 0.1,
                         settings=PruneSettings(channel_ratio=ratio - 0.1))
    assert torch_artifact.count_macs(lighter, (3, 32, 32)) > 0.6 * macs  # a clearly smaller ratio misses it
    with pytest.raises(UserError, match="no pruning ratio up to 0.95 meets"):
        prune_to_macs(model, input_shape=(3, 32, 32), settings=PruneSettings(macs_target=0.05))


@pytest.mark.slow
def test_latency_target_is_measured_under_onnx_runtime_and_the_smallest_passing_ratio_wins(tmp_path):
    from edgepress.compress.pruning.prune_search import Targets, open_probe, search_ratio

    model = built("cifar_resnet20")
    probe = open_probe(model, input_shape=(3, 32, 32), threads=1, scratch=tmp_path)
    assert probe.exporter == "torchscript"  # 0.2 s a candidate, where dynamo takes 4 s
    settings = PruneSettings(channel_ratio=0.5, round_to=8)
    pruned, ratio, trials = search_ratio(
        cut=lambda r: prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=r, settings=settings),
        count_macs=lambda m: torch_artifact.count_macs(m, (3, 32, 32)), targets=Targets(latency_ratio=0.85),
        probe=probe, log=lambda _: None)
    assert all("p50_ratio" in t for t in trials), "every candidate was exported and timed"
    chosen = next(t for t in trials if t["ratio"] == round(ratio, 4))
    assert chosen["meets"] and chosen["p50_ratio"] <= 0.85
    # Trials record ratios rounded to 4 places; bisection midpoints such as 0.28125 round down, so compare
    # rounded with rounded or the chosen trial would count as a smaller one.
    assert not any(t["meets"] for t in trials if t["ratio"] < chosen["ratio"])
    assert torch_artifact.count_macs(pruned, (3, 32, 32)) < torch_artifact.count_macs(model, (3, 32, 32))


class _Expm1Net(torch.nn.Module):
    """TorchScript's ONNX exporter has no expm1 (torch 2.13); dynamo has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.expm1(self.conv(x)).mean(dim=(2, 3))


def test_latency_probe_falls_back_to_dynamo_for_models_torchscript_cannot_export(tmp_path):
    from edgepress.compress.pruning.prune_search import open_probe

    model = _Expm1Net().eval()
    with pytest.raises(UserError, match="torchscript"):  # the premise: TorchScript really fails on it
        export_onnx(model=model, input_shape=(3, 16, 16), path=tmp_path / "ts.onnx",
                    settings=ExportSettings(exporter="torchscript", parity_samples=2), log=lambda _: None)
    probe = open_probe(model, input_shape=(3, 16, 16), threads=1, scratch=tmp_path)
    assert probe.exporter == "dynamo"
    assert probe.reference_onnx.is_file()
    candidate_ms, reference_ms = probe.p50_ms(model)  # candidates are exported the same way
    assert candidate_ms > 0 and reference_ms > 0


ITERATIVE = tiny_recipe_with('''
[[stages]]
kind = "prune"
macs_target = 0.5
steps = 2
step_epochs = 1
''')


def test_iterative_schedule_prunes_in_steps_with_fine_tuning_between(tmp_path):
    stages = run_and_read_stages(tmp_path, text=ITERATIVE.format(epochs=2, budgets=""))
    pruning = stages["prune"]["pruning"]
    assert [s["step"] for s in pruning["steps"]] == [1, 2]
    assert 0.5 < pruning["steps"][0]["macs_kept"] <= 0.75 + 1e-9, "step 1 heads halfway"
    assert pruning["macs_kept"] <= 0.5
    assert pruning["steps"][0]["fine_tune"]["epochs"] == 1 and "fine_tune" not in pruning["steps"][1]


class HardCodedReshape(torch.nn.Module):
    """Flattens with a fixed width, which torch-pruning's autograd trace cannot adjust."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 64, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.reshape(x.shape[0], 16 * 64))


def test_a_model_torch_pruning_cannot_follow_names_the_operation():
    with pytest.raises(UserError, match=r"cannot trace this model.*fails at or after 'b' \(Conv2d\).*fix: list 'b'"):
        prune_copy(HardCodedReshape().eval(), example=torch.zeros(1, 3, 8, 8), ratio=0.5,
                   settings=PruneSettings(channel_ratio=0.5))


SENSITIVITY = tiny_recipe_with('''
[[stages]]
kind = "prune"
macs_target = 0.6
sensitivity = "allocate"
sensitivity_samples = 64
''')


@pytest.mark.slow
def test_sensitivity_allocation_meets_the_target_and_lands_in_the_report(tmp_path):
    stages = run_and_read_stages(tmp_path, text=SENSITIVITY.format(epochs=2, budgets=""))
    assert stages["prune"]["pruning"]["macs_kept"] <= 0.6
    table = stages["prune"]["sensitivity"]
    assert set(table["layers"]) and all(len(points) == 3 for points in table["layers"].values())
    ratios = {name: ch for name, ch in stages["prune"]["pruning"]["conv_out_channels"].items()}
    assert len(set(ratios.values())) > 1
    assert "sensitivity" in (tmp_path / "out" / "report.md").read_text().lower()
    assert "<svg" in (tmp_path / "out" / "report.html").read_text()


def test_round_to_rounds_to_the_nearest_multiple_so_macs_fall_with_the_ratio():
    # torch-pruning's own round_to floors, and where that reaches 0 prunes nothing: MACs jumped back up.
    model = built("cifar_resnet56")
    macs = []
    for ratio in (0.3, 0.5, 0.6, 0.7, 0.9):
        pruned = prune_copy(model, example=torch.zeros(1, 3, 32, 32), ratio=ratio,
                            settings=PruneSettings(channel_ratio=ratio, round_to=8))
        inner = [b.conv1.out_channels for stage in (pruned.layer1, pruned.layer2, pruned.layer3) for b in stage]
        assert all(c % 8 == 0 and c >= 8 for c in inner), inner
        macs.append(torch_artifact.count_macs(pruned, (3, 32, 32)))
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


def test_a_misnamed_layer_fails_check_and_run_before_any_stage_runs(tmp_path):
    from tests.conftest import assert_user_error, write_recipe

    text = tiny_recipe_with('''
[[stages]]
kind = "prune"
channel_ratio = 0.5
ignored_layers = ["features.4x"]
''')
    recipe = write_recipe(tmp_path, text=text.format(epochs=1, budgets=""))
    assert_user_error(lambda: edgepress.check(recipe), "stage 'prune'", "'features.4x'", "did you mean")
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "'features.4x'")
    assert not [p for p in (tmp_path / "out").glob("*") if not p.name.startswith(".")], "no stage ran"
