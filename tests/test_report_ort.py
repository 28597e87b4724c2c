"""The report's "ORT format (ONNX Runtime Mobile)" section, from a real run (train, export, ptq, ort_format, on a
local target that evaluates): each .ort beside its source ONNX model, in report.md and report.html, with the numbers
report.json holds; absent from a run without an ORT-format stage."""

from __future__ import annotations

import html

import onnxruntime
import pytest

from edgepress.report import writer
from edgepress.report.model import read_report
from tests.test_report_model import _report

TITLE = "## ORT format (ONNX Runtime Mobile)"


@pytest.fixture
def ran(ort_tiny_run):
    folder, report = ort_tiny_run  # tests/conftest.py: train, export, ptq, ort_format; local evaluates too
    return folder / "out", report


def _section(markdown: str) -> list[list[str]]:
    """The section's table rows (header and separator rows left out), as cells."""
    text = markdown.split(TITLE, 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] not in ("stage", "---")]


def _ratio(entry) -> str:
    ratio = entry.latency_ratio
    return f"{ratio.p50:.2f}x [{ratio.ci95[0]:.2f}–{ratio.ci95[1]:.2f}]"


def test_the_section_shows_each_ort_beside_its_source(ran):
    out, report = ran
    ort, ptq = report.stage_named("ort_format"), report.stage_named("ptq")
    own = ort.metrics.own["ort_format"]
    markdown = (out / "report.md").read_text()
    files, host, local = _section(markdown)
    assert files == ["ort_format", "ptq", f"{ptq.metrics.size_bytes / 1024:.1f} KiB",
                     f"{ort.metrics.size_bytes / 1024:.1f} KiB", str(ptq.metrics.operator_count),
                     str(ort.metrics.operator_count), "all", "any", "04-ort_format/required_operators.config",
                     f"onnxruntime {onnxruntime.__version__}"]
    assert (out / files[8]).is_file()  # the config, named from the run folder
    checked = own["evaluation"]["digits:test"]
    assert host == ["ort_format", "host", "digits:test", "360", f"{100 * checked['same_as_source']:.2f}%",
                    f"{checked['max_abs_error_vs_source']:.3g}", "–", "–"]
    on_local = ort.metrics.targets["local"]
    same = on_local.evaluation["digits:test"].values["same_as_source"]
    assert 0.99 <= same <= 1.0  # the same ONNX Runtime on the same machine: the conversion alone differs
    assert local == ["ort_format", "local", "digits:test", "120", f"{100 * same:.2f}%", "–",
                     _ratio(ptq.metrics.targets["local"]), _ratio(on_local)]


def test_html_has_the_same_section_and_a_stored_report_renders_the_same(ran):
    out, _ = ran
    stored = read_report(out / "report.json")
    assert writer.markdown(stored) == (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "<h2>ORT format (ONNX Runtime Mobile)</h2>" in page and "<code>--include_ops_by_config</code>" in page
    for row in _section(writer.markdown(stored)):
        assert "".join(f"<td>{html.escape(cell)}</td>" for cell in row) in page


def test_a_run_without_an_ort_stage_has_no_section():
    report = _report()
    assert TITLE not in writer.markdown(report)
    assert "ORT format" not in writer.html_page(report)


def test_an_ort_of_the_reference_on_an_emulated_target_shows_no_latency():
    """Converted from the ONNX reference itself (its ratio is 1 by definition), and evaluated under emulation:
    same_as_source is shown there, a timing under emulation never is."""
    import dataclasses

    from edgepress.report.model import EvaluationSet, Stage, StageMetrics
    from tests.test_report_model import QEMU

    report = _report()
    ptq = report.stage_named("ptq")
    qemu = dataclasses.replace(ptq.metrics.targets[QEMU], evaluation={"digits:test": EvaluationSet(
        samples=100, values={"accuracy": 0.9, "same_as_source": 0.99})})
    own = {"source_stage": "export", "source_size_bytes": 20_000, "optimization_level": "basic",
           "target_platform": "arm", "onnxruntime": "1.2.3", "config": "required_operators_and_types.config",
           "operators": ["ai.onnx;17;Relu"], "evaluation": {"digits:test": {
               "samples": 360, "same_as_source": 1.0, "max_abs_error_vs_source": 2.5e-7}}}
    ort = Stage(name="mobile", kind="ort_format", artifact="03-mobile/model.ort", format="ort", sha256="d" * 64,
                seconds=0.2, metrics=StageMetrics(size_bytes=21_000, params=1_400, macs=23_000, operator_count=1,
                                                  own={"ort_format": own, "converted_from": "export"},
                                                  targets={"local": ptq.metrics.targets["local"], QEMU: qemu}))
    export = report.stage_named("export")
    export = dataclasses.replace(export, metrics=dataclasses.replace(export.metrics, operator_count=3))
    report = dataclasses.replace(report, stages=(report.stages[0], export, ptq, ort))
    files, host, local, emulated = _section(writer.markdown(read_report(report.to_json_dict())))
    assert files == ["mobile", "export", "19.5 KiB", "20.5 KiB", "3", "1", "basic", "arm",
                     "03-mobile/required_operators_and_types.config", "onnxruntime 1.2.3"]
    assert host == ["mobile", "host", "digits:test", "360", "100.00%", "2.5e-07", "–", "–"]
    assert local == ["mobile", "local", "–", "–", "–", "–", "1.00x (the reference)", "0.50x [0.45–0.55]"]
    # export was not measured on QEMU here: nothing to show for it there
    assert emulated == ["mobile", QEMU, "digits:test", "100", "99.00%", "–", "–", "emulated"]
