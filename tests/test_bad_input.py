"""Bad input: edgepress.UserError, one line naming the problem and the fix (the command line's exit 2), nothing
half-written."""

from __future__ import annotations

import shutil

import numpy as np

import edgepress
from edgepress.running.folder import MARKER

from tests.conftest import TINY_RECIPE, assert_user_error, requires_shared_data, shared_data, write_recipe


def recipe_with(tmp_path, *, epochs: int = 1, **replace: str):
    text = TINY_RECIPE.format(epochs=epochs, budgets="")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return write_recipe(tmp_path, text=text)


def test_misspelt_key(tmp_path):
    recipe = recipe_with(tmp_path, **{"batch_size = 32": "batchsize = 32"})
    assert_user_error(lambda: edgepress.check(recipe), "batchsize", "did you mean 'batch_size'")


def test_wrong_type(tmp_path):
    recipe = recipe_with(tmp_path, **{"limit = 64": "limit = 'many'"})
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "limit", "must be int")
    assert not (tmp_path / "out").exists()


def test_missing_recipe(tmp_path):
    assert_user_error(lambda: edgepress.check(tmp_path / "nope.toml"), "does not exist")


def test_missing_data_file(tmp_path):
    recipe = recipe_with(tmp_path, **{'evaluation = [{ dataset = "digits:test" }]': 'evaluation = [{ path = "absent.npz" }]'})
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "absent.npz")
    assert not (tmp_path / "out").exists()


def test_input_shape_that_does_not_fit(tmp_path):
    recipe = recipe_with(tmp_path, **{'name = "small_cnn_8"': 'name = "small_cnn_28"'})
    assert_user_error(lambda: edgepress.check(recipe), "[1, 8, 8]", "[1, 28, 28]")


def test_file_that_is_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"this is not a protobuf" * 10)
    recipe = write_recipe(tmp_path, text=f"""
        [model]
        onnx = "{fake}"
        [data]
        evaluation = [{{ dataset = "digits:test" }}]
    """)
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "not a valid ONNX model")


def test_onnx_with_fixed_input_that_does_not_fit_the_data(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 4, 4),), str(path), dynamo=False, input_names=["x"])
    recipe = write_recipe(tmp_path, text=f"""
        [model]
        onnx = "{path}"
        [data]
        evaluation = [{{ dataset = "digits:test" }}]
    """)
    assert_user_error(lambda: edgepress.check(recipe), "[1, 8, 8]", "[3, 4, 4]")


@requires_shared_data
def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    recipe = write_recipe(tmp_path, text=f"""
        [model]
        name = "cifar_resnet20"
        checkpoint = "{shared_data() / 'weights' / 'resnet56-4bfd9763.th'}"
        [data]
        evaluation = [{{ dataset = "cifar10:test_raw_1017", limit = 8 }}]
    """)
    line = assert_user_error(lambda: edgepress.check(recipe), "layer1.3")
    assert "resnet" in line.lower()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "ck.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    recipe = recipe_with(tmp_path, **{'name = "small_cnn_8"': f'name = "small_cnn_8"\ncheckpoint = "{bad}"'})
    assert_user_error(lambda: edgepress.check(recipe), "ck.pt")


def test_failing_stage_leaves_no_half_written_folder_and_keeps_earlier_ones(tmp_path):
    good = recipe_with(tmp_path)
    out = tmp_path / "out"
    assert edgepress.run(good, out=out).gate.passed
    before = (out / "03-ptq" / "model.onnx").read_bytes()
    export_before = (out / "02-export" / "model.onnx").read_bytes()

    # Same output folder, a ptq stage that fails mid-run: the finished ptq artifact must survive.
    bad = recipe_with(tmp_path, **{'kind = "ptq"': 'kind = "ptq"\nnodes_to_exclude = ["no_such_node"]'})
    assert_user_error(lambda: edgepress.run(bad, out=out), "no_such_node", "matches no node")
    assert (out / "03-ptq" / "model.onnx").read_bytes() == before
    assert (out / "02-export" / "model.onnx").is_file()
    assert len((out / "02-export" / "model.onnx").read_bytes()) == len(export_before)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER], "temporary folders left behind"


def test_failing_stage_in_fresh_folder_leaves_nothing_for_it(tmp_path):
    bad = recipe_with(tmp_path, **{'kind = "ptq"': 'kind = "ptq"\nnodes_to_exclude = ["no_such_node"]'})
    out = tmp_path / "out"
    assert_user_error(lambda: edgepress.run(bad, out=out), "no_such_node")
    assert (out / "02-export" / "model.onnx").is_file()
    assert not (out / "03-ptq").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER]
    assert shutil.disk_usage(out)  # the folder itself is intact and readable
