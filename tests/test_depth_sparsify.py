"""Depth pruning removes whole blocks (fewer ONNX nodes, reloads safely); unstructured sparsity is
reported honestly (zeros, smaller gzip, the same dense graph)."""

from __future__ import annotations

import onnx
import pytest
import torch

import edgepress
from edgepress.io import torch_artifact
from edgepress.compress.prune_depth import DepthSettings, remove_blocks
from edgepress.compress.sparsify import SparsifySettings, sparsify
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.models.zoo import build_model
from tests.conftest import assert_user_error, run_and_read_stages, tiny_recipe_with, write_recipe
from tests.test_prune import built


def test_removing_a_block_is_exactly_dropping_its_branch():
    model = built("cifar_resnet20")
    x = torch.randn(8, 3, 32, 32)
    pruned, removed = remove_blocks(model, inputs=x, settings=DepthSettings(blocks=1), input_shape=(3, 32, 32))
    name = removed[0]["block"]
    stage, index = name.split(".")
    # Reference by hand: the removed block replaced by its shortcut (identity, since its input is post-ReLU).
    by_hand = built("cifar_resnet20")
    getattr(by_hand, stage)[int(index)] = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(pruned(x), by_hand(x), atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)
    assert isinstance(dict(model.named_modules())[name], torch.nn.Module)
    assert not isinstance(dict(model.named_modules())[name], torch.nn.Identity), "the input model changed"


def test_greedy_ranking_removes_the_least_harmful_block_first():
    model = built("cifar_resnet20")
    x = torch.randn(16, 3, 32, 32)
    _, removed = remove_blocks(model, inputs=x, settings=DepthSettings(blocks=1, ranking="one_shot"),
                               input_shape=(3, 32, 32))
    chosen_kl = removed[0]["score_kl"]
    with torch.no_grad():
        reference = torch.log_softmax(model(x), 1)
    for name in model.removable_blocks():
        candidate = built("cifar_resnet20")
        torch_artifact.replace_with_identity(candidate, [name])
        with torch.no_grad():
            kl = float((reference.exp() * (reference - torch.log_softmax(candidate(x), 1))).sum() / len(x))
        assert chosen_kl <= kl + 1e-6, (name, kl, chosen_kl)


@pytest.mark.slow
def test_depth_pruned_model_has_fewer_nodes_reloads_and_meets_a_macs_target(tmp_path):
    model = built("cifar_resnet20")
    pruned, removed = remove_blocks(model, inputs=torch.randn(8, 3, 32, 32), settings=DepthSettings(macs_target=0.7),
                                    input_shape=(3, 32, 32))
    assert torch_artifact.count_macs(pruned, (3, 32, 32)) <= 0.7 * torch_artifact.count_macs(model, (3, 32, 32))
    assert all(r["block"] in model.removable_blocks() for r in removed)
    path = tmp_path / "model.pt"
    torch_artifact.save(path, model=pruned, builder={"name": "cifar_resnet20", "kwargs": {},
                                                    "removed_blocks": [r["block"] for r in removed]},
                        input_shape=(3, 32, 32))
    reloaded, _, _ = torch_artifact.load(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), pruned(x), atol=1e-5)
    full, small = tmp_path / "full.onnx", tmp_path / "small.onnx"
    for module, out in ((model, full), (reloaded, small)):
        export_onnx(model=module, input_shape=(3, 32, 32), path=out, settings=ExportSettings(), log=lambda _: None)
    convs = [sum(n.op_type == "Conv" for n in onnx.load(p).graph.node) for p in (full, small)]
    assert convs[1] == convs[0] - 2 * len(removed)


def test_depth_settings_and_names_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        DepthSettings()
    with pytest.raises(ValueError, match="macs_target"):
        DepthSettings(macs_target=1.5)
    model = built("cifar_resnet20")
    with pytest.raises(UserError, match="did you mean 'layer1.1'"):
        remove_blocks(model, inputs=torch.randn(2, 3, 32, 32), settings=DepthSettings(blocks=1, keep=("layer1.1x",)),
                      input_shape=(3, 32, 32))
    with pytest.raises(UserError, match="at most"):
        remove_blocks(model, inputs=torch.randn(2, 3, 32, 32), settings=DepthSettings(blocks=99),
                      input_shape=(3, 32, 32))
    with pytest.raises(UserError, match="does not say which blocks"):
        remove_blocks(build_model(name="small_cnn_8", entry=None, kwargs={}), inputs=torch.randn(2, 1, 8, 8),
                      settings=DepthSettings(blocks=1), input_shape=(1, 8, 8))


def test_sparsify_zeroes_the_smallest_weights_globally_and_leaves_the_input_alone():
    model = built("cifar_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparse, achieved = sparsify(model, settings=SparsifySettings(sparsity=0.5))
    assert achieved == pytest.approx(0.5, abs=0.01)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    convs = [(n, m) for n, m in sparse.named_modules() if isinstance(m, torch.nn.Conv2d)]
    first_name, first = convs[0]
    assert int((first.weight == 0).sum()) == 0, "the stem is skipped by default"
    kept = torch.cat([m.weight.abs().flatten() for _, m in convs[1:] if True])
    kept = kept[kept != 0]
    zeroed = torch.cat([dict(model.named_modules())[n].weight.abs().flatten()[(m.weight == 0).flatten()]
                        for n, m in convs[1:]])
    assert float(zeroed.max()) <= float(kept.min()), "a zeroed weight was larger than a kept one"
    with pytest.raises(UserError, match="did you mean"):
        sparsify(model, settings=SparsifySettings(ignored_layers=("layer1.0.conv",)))


SPARSE = tiny_recipe_with('''
[[stages]]
kind = "sparsify"
sparsity = 0.6
''')


def test_sparsify_stage_reports_sparsity_and_a_smaller_gzip_but_the_same_dense_graph(tmp_path):
    stages = run_and_read_stages(tmp_path, text=SPARSE.format(epochs=2, budgets=""))
    sparsity = stages["sparsify"]["sparsity"]
    assert sparsity["sparsity_prunable"] >= 0.59
    assert sparsity["size_gzip_bytes_after"] < sparsity["size_gzip_bytes_before"]
    assert stages["sparsify"]["params"] == stages["train"]["params"], "zeros are still stored"


def test_prune_depth_on_a_model_without_blocks_is_a_one_line_error(tmp_path):
    text = tiny_recipe_with('''
[[stages]]
kind = "prune_depth"
blocks = 1
''')
    recipe = write_recipe(tmp_path, text=text.format(epochs=1, budgets=""))
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "removable_blocks")
