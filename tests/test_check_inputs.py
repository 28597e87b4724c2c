"""Issue 17: every bad input is a user error before any work. `check` and `run` refuse, in one line with exit 2,
entry points that are not the user's own code, labels the model cannot predict, empty sets and absurd settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepress.errors import UserError
from edgepress.models.zoo import build_model
from tests.conftest import main_one_line_error
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
    ("torch.nn:Linear", {"in_features": 2, "out_features": 2}, "is defined in 'torch.nn.modules.linear', not in 'torch.nn'"),
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
