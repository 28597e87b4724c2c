"""The run folder is edgepress's alone (edgepress/running/folder.py, edgepress/core/atomic.py): what it may claim,
replace and clean, and the modes of what it writes. In process, on real folders."""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager

import pytest

from edgepress.core import atomic
from edgepress.cli.main import main
from edgepress.core.errors import UserError
from edgepress.running.folder import MARKER, RunFolder
from tests.conftest import TINY_RECIPE, write_recipe


def test_a_new_folder_is_made_with_its_parents_and_marked_on_claim(tmp_path):
    folder = RunFolder(tmp_path / "a" / "b" / "run")
    folder.check()
    folder.make()
    folder.claim("00-model")
    assert json.loads((tmp_path / "a" / "b" / "run" / MARKER).read_text())["owned"] == ["00-model"]


def test_a_refused_run_removes_only_the_folders_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    folder = RunFolder(tmp_path / "a" / "b" / "run")
    folder.make()
    folder.remove_if_untouched()
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and not any((tmp_path / "a").iterdir())


@pytest.mark.parametrize("content", [[], [".hidden"], ["notes.txt"], ["sub/deep.txt"]])
def test_an_empty_folder_is_taken_and_any_other_refused_unless_adopted(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    for relative in content:
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text("mine")
    if content:
        with pytest.raises(UserError, match="did not create") as refused:
            RunFolder(out).check()
        assert "edgepress-run" in refused.value.fix
        assert "--adopt" in refused.value.fix and "adopt=True" in refused.value.fix  # the CLI's and the API's
    else:
        RunFolder(out).check()
    RunFolder(out, adopt=True).check()


@pytest.mark.parametrize("marker", ["not json", '{"schema": "other/1", "owned": []}', '{"schema": "edgepress.run-folder/1"}',
                                    '{"schema": "edgepress.run-folder/1", "owned": ["../escape", "/abs", "ok"]}'])
def test_a_marker_that_is_not_ours_or_names_paths_claims_nothing_beyond_names(tmp_path, marker):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(marker)
    (out / "user.txt").write_text("mine")
    folder = RunFolder(out, adopt=True)
    folder.check()
    assert folder.owned <= {"ok"}


def test_claiming_a_name_the_user_holds_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my report")
    folder = RunFolder(out, adopt=True)
    folder.check()
    with pytest.raises(UserError, match="report.md exists and is not edgepress's"):
        folder.claim("00-model", "report.md")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert (out / "report.md").read_text() == "my report"


def test_leftovers_are_only_edgepress_marked_names(tmp_path):
    keep = [".thesis.old", ".notes.tmp", ".x.tmp", "data.old", ".edgepress-lock-mine"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    with atomic.atomic_path(tmp_path / "report.json") as tmp:  # a killed write leaves its temporary name behind
        tmp.write_text("{}")
        os.link(tmp, tmp_path / f"{tmp.name}-copy")
    (tmp_path / f"{atomic.OLD_PREFIX}00-model.abc").mkdir()
    atomic.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["report.json"])


def test_replacing_a_stage_folder_never_touches_a_user_old_folder(tmp_path):
    (tmp_path / ".00-model.old").mkdir()
    (tmp_path / ".00-model.old" / "thesis.tex").write_text("mine")
    for content in ("first", "second"):
        with atomic.atomic_dir(tmp_path / "00-model") as work:
            (work / "model.pt").write_text(content)
    assert (tmp_path / "00-model" / "model.pt").read_text() == "second"
    assert (tmp_path / ".00-model.old" / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".00-model.old", "00-model"]


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                          (0o077, 0o600, 0o700)])
def test_written_files_and_folders_follow_the_umask(tmp_path, mask, file_mode, folder_mode):
    with umask(mask):
        atomic.write_text(tmp_path / "report.md", "# report")
        with atomic.atomic_dir(tmp_path / "00-model") as work:
            (work / "model.pt").write_text("weights")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "00-model").stat().st_mode) == folder_mode
    assert stat.S_IMODE((tmp_path / "00-model" / "model.pt").stat().st_mode) == file_mode


def test_a_run_writes_what_a_teammate_can_read(tmp_path, capsys):
    recipe = write_recipe(tmp_path, text=TINY_RECIPE.format(epochs=1, budgets="").replace("limit = 400", "limit = 64"))
    with umask(0o022):
        assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path, oct(mode))  # group and others read


def test_a_run_folder_of_an_edgepress_without_markers_is_taken_over_and_the_user_files_in_it_are_not(tmp_path, capsys):
    recipe = write_recipe(tmp_path, text=TINY_RECIPE.format(epochs=1, budgets="").replace("limit = 400", "limit = 64"))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    (out / MARKER).unlink()  # as an earlier edgepress left it
    (out / ".resume-01-train").mkdir()
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("kept, finished earlier") == 4
    assert not (out / ".resume-01-train").exists()
    owned = set(json.loads((out / MARKER).read_text())["owned"])
    assert {"00-model", "03-ptq", "report.json", "report.md", "report.html"} <= owned

    (out / MARKER).unlink()
    (out / "00-mine").mkdir()  # stage-like, but no stage record: the user's
    (out / "notes.md").write_text("mine")
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    assert "00-mine, notes.md" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", str(out), "--adopt"]) == 0
    assert (out / "notes.md").read_text() == "mine" and (out / "00-mine").is_dir()
    assert not {"00-mine", "notes.md"} & set(json.loads((out / MARKER).read_text())["owned"])
