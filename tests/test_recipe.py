"""Recipes are validated before any work: unknown keys name the closest valid one, types are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepress import recipe as recipe_mod
from edgepress.core.errors import UserError
from tests.conftest import TINY_RECIPE, write_recipe


def load_text(tmp_path: Path, text: str):
    return recipe_mod.load(write_recipe(tmp_path, text=text))


def tiny(tmp_path: Path, **replace: str) -> str:
    text = TINY_RECIPE.format(epochs=1, budgets="")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_tiny_recipe_parses_into_typed_settings(tmp_path):
    recipe = recipe_mod.load(write_recipe(tmp_path))
    assert [s.kind for s in recipe.stages] == ["train", "export", "ptq"]
    assert recipe.stages[0].settings.epochs == 3
    assert recipe.stages[2].settings.scheme in {"u8s8", "s8s8", "u8u8"}
    assert recipe.data.preprocess.mean == (0.5,)
    assert recipe.model.kwargs == {"width": 8}


def test_misspelt_top_level_key_names_closest(tmp_path):
    with pytest.raises(UserError, match="unknown key 'budget'.*did you mean 'budgets'"):
        load_text(tmp_path, "[budget]\nsize_bytes = 1\n" + tiny(tmp_path))


def test_misspelt_stage_setting_names_closest(tmp_path):
    text = tiny(tmp_path, **{'kind = "ptq"': 'kind = "ptq"\ncalibration_metod = "entropy"'})
    with pytest.raises(UserError, match=r"stages\[2\]\.calibration_metod.*did you mean 'calibration_method'"):
        load_text(tmp_path, text)


def test_misspelt_nested_key_names_closest(tmp_path):
    text = tiny(tmp_path, **{"preprocess = {": "preprocss = {"})
    with pytest.raises(UserError, match=r"data\.preprocss.*did you mean 'preprocess'"):
        load_text(tmp_path, text)


def test_wrong_type_is_named(tmp_path):
    text = tiny(tmp_path, **{"epochs = 1": 'epochs = "ten"'})
    with pytest.raises(UserError, match=r"stages\[0\]\.epochs' must be int"):
        load_text(tmp_path, text)


def test_bad_literal_suggests_closest(tmp_path):
    text = tiny(tmp_path, **{'kind = "ptq"': 'kind = "ptq"\nscheme = "u8s9"'})
    with pytest.raises(UserError, match="did you mean 'u8s8'"):
        load_text(tmp_path, text)


def test_unknown_stage_kind_suggests_closest(tmp_path):
    text = tiny(tmp_path, **{'kind = "export"': 'kind = "exprt"'})
    with pytest.raises(UserError, match="unknown stage kind 'exprt'.*did you mean 'export'"):
        load_text(tmp_path, text)


def test_stages_must_chain_formats(tmp_path):
    text = tiny(tmp_path, **{'kind = "export"': 'kind = "ptq"\nname = "early"'})
    with pytest.raises(UserError, match="takes an ONNX model but gets a torch model"):
        load_text(tmp_path, text)


def test_out_of_range_value_is_rejected(tmp_path):
    text = tiny(tmp_path, **{'kind = "export"': 'kind = "export"\nopset = 11'})
    with pytest.raises(UserError, match="opset must be 17 or later"):
        load_text(tmp_path, text)


def test_invalid_toml_is_one_error(tmp_path):
    with pytest.raises(UserError, match="not valid TOML"):
        load_text(tmp_path, "[model\nname = 1")


def test_relative_paths_resolve_against_recipe_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    text = tiny(tmp_path, **{'name = "small_cnn_8"': 'name = "small_cnn_8"\ncheckpoint = "weights/ck.pt"'})
    recipe = recipe_mod.load(write_recipe(tmp_path / "sub", text=text))
    assert recipe.model.checkpoint == (tmp_path / "sub" / "weights" / "ck.pt").resolve()


def test_data_placeholder_uses_edgepress_data(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRESS_DATA", str(tmp_path / "elsewhere"))
    text = tiny(tmp_path, **{'name = "small_cnn_8"': 'name = "small_cnn_8"\ncheckpoint = "{data}/weights/x.th"'})
    recipe = load_text(tmp_path, text)
    assert recipe.model.checkpoint == (tmp_path / "elsewhere" / "weights" / "x.th").resolve()


def test_latency_budget_needs_an_onnx_final_stage(tmp_path):
    text = tiny(tmp_path, **{'[[stages]]\nkind = "export"\n\n[[stages]]\nkind = "ptq"\n': "",
                             "[budgets]\n": "[budgets]\nlatency_p90_ms = 1.0\n"})
    with pytest.raises(UserError, match="latency_p90_ms needs the last stage to produce an ONNX model"):
        load_text(tmp_path, text)


@pytest.mark.parametrize("budget", ["latency_ratio_max = 0.7", "size_ratio_max = 0.3"])
def test_relative_budgets_need_an_onnx_reference_before_the_last_stage(tmp_path, budget):
    """The ONNX reference is the reference stage's ONNX model, or the first after it; the tiny recipe's reference
    stage is train (torch), so its export is the reference and ptq is gated against it."""
    fine = load_text(tmp_path, tiny(tmp_path, **{"[budgets]\n": f"[budgets]\n{budget}\n"}))
    assert fine.onnx_reference_stage == "export"
    for reference in ("ptq", "export"):  # the reference is the last stage, or the ONNX model after it is
        text = tiny(tmp_path, **{"[budgets]\n": f"[budgets]\n{budget}\n",
                                 'reference_stage = "train"': f'reference_stage = "{reference}"'})
        if reference == "export":
            text = text.replace('[[stages]]\nkind = "ptq"\n', "")
        with pytest.raises(UserError, match=f"{budget.split()[0]} compares the last stage with the ONNX reference"):
            load_text(tmp_path, text)


def test_repo_recipes_are_valid():
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "recipes").glob("*.toml")) + [root / "edgepress" / "builtin" / "demo.toml"]:
        recipe = recipe_mod.load(path)
        assert recipe.stages, path
