"""The README's Python API snippet runs as written, in a fresh folder, and does what its comments say."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from tests.conftest import ROOT


def _snippet() -> str:
    api = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", api, re.S).group(1)


@pytest.mark.slow
def test_the_readme_snippet_stays_eleven_lines_of_code_and_runs(tmp_path, monkeypatch):
    code = _snippet()
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("import")]) <= 11
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("CheckResult(recipe='digits-int8', stages=('model', 'train', 'export', 'ptq')")
    passed, accuracy, ratio = lines[1].split()
    assert passed in ("True", "False") and 0.5 < float(accuracy) <= 1.0 and 0 < float(ratio) < 5
    assert lines[2] in ("True", "False") and float(lines[3]) > 0
    report = json.loads((tmp_path / "runs" / "digits-int8" / "report.json").read_text())
    assert report["schema"] == "edgepress.report/2" and report["gate"]["passed"] == (passed == "True")
