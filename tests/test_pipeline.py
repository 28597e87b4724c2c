"""A whole recipe through the Python API: stage folders, report contract, the gate; and what `edgepress run` itself
prints and exits with."""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import onnx
import pytest

import edgepress
from edgepress.report import plots as report_plots
from edgepress.running.folder import MARKER
from tests.conftest import run_cli, run_main, write_recipe

STAGE_KEYS = {"name", "kind", "artifact", "format", "sha256", "seconds", "metrics"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny recipe run once through the Python API: its folder, and the run (its typed report, and what it
    printed on stderr)."""
    folder = tmp_path_factory.mktemp("tiny")
    # A 2.4 k-parameter model's INT8 file is mostly graph (Q/DQ nodes and their scales): about 0.90 of FP32's size.
    recipe = write_recipe(folder, budgets="size_bytes = 1000000\naccuracy_drop_points = 5.0\nagreement_min = 0.9\n"
                                          "latency_ratio_max = 20.0\nsize_ratio_max = 0.95\npeak_memory_bytes = 2000000000")
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        report = edgepress.run(recipe, out=folder / "out")
    return folder, SimpleNamespace(report=report, stderr=printed.getvalue())


def test_run_passes_gate_and_writes_every_stage(tiny_run):
    folder, ran = tiny_run
    assert ran.report.gate.passed, ran.report.gate.violations
    out = folder / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00-model", "01-train", "02-export", "03-ptq"]
    for stage_dir, artifact in (("00-model", "model.pt"), ("01-train", "model.pt"), ("02-export", "model.onnx"),
                                ("03-ptq", "model.onnx")):
        assert (out / stage_dir / artifact).is_file()
        assert (out / stage_dir / "stage.log").is_file()
        json.loads((out / stage_dir / "metrics.json").read_text())
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER], "temporary files left behind"
    assert "[edgepress]" in ran.stderr  # progress is shown


def test_report_follows_the_contract(tiny_run):
    folder, _ = tiny_run
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["schema"] == "edgepress.report/2"
    assert [s["kind"] for s in report["stages"]] == ["model", "train", "export", "ptq"]
    for stage in report["stages"]:
        assert STAGE_KEYS <= stage.keys()
        m = stage["metrics"]
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["size_bytes"] > 0 and m["params"] > 0 and m["macs"] > 0
        assert len(stage["sha256"]) == 64
        if stage["format"] == "onnx":
            assert m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]
            assert m["latency_ms"]["runs"] >= 200
        else:
            assert "latency_ms" not in m  # absent, not zero
    model, train, export, ptq = report["stages"]
    assert "agreement" not in model["metrics"]  # before the reference stage, agreement does not apply
    assert train["metrics"]["agreement"] == 1.0
    assert export["metrics"]["agreement"] >= 0.99
    assert export["metrics"]["parity"]["max_abs_diff"] < 1e-3
    assert ptq["metrics"]["size_bytes"] < export["metrics"]["size_bytes"]
    assert ptq["metrics"]["quantization"]["int8_nodes"] > 0
    assert report["gate"] == {**report["gate"], "passed": True, "violations": []}
    assert {c["budget"] for c in report["gate"]["checks"]} == {
        "size_bytes", "accuracy_drop_points", "agreement_min", "latency_ratio_max", "size_ratio_max",
        "peak_memory_bytes"}


def test_every_onnx_stage_after_the_reference_is_timed_against_it(tiny_run):
    """reference_stage = train (torch): its export is the ONNX reference; ptq is timed interleaved with it in one
    runner, and its ratio, interval and size ratio are gated, the ratio at its interval's upper end."""
    folder, _ = tiny_run
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["onnx_reference_stage"] == "export"
    stages = {s["name"]: s["metrics"] for s in report["stages"]}
    assert "latency_ratio" not in stages["export"] and "size_ratio" not in stages["export"]
    ratio = stages["ptq"]["latency_ratio"]
    assert ratio["reference_stage"] == "export" and ratio["epochs"] == 12
    low, high = ratio["ci95"]
    assert 0 < low <= ratio["p50"] <= high
    # the reference's p50 as timed beside ptq agrees with its own stage's timing, alone, within a factor 2
    assert 0.5 < ratio["reference_p50_ms"] / stages["export"]["latency_ms"]["p50"] < 2.0
    assert stages["ptq"]["size_ratio"] == pytest.approx(stages["ptq"]["size_bytes"] / stages["export"]["size_bytes"])
    checks = {c["budget"]: c for c in report["gate"]["checks"]}
    assert checks["latency_ratio_max"]["value"] == high
    assert checks["size_ratio_max"]["value"] == stages["ptq"]["size_ratio"]
    assert checks["peak_memory_bytes"]["value"] == stages["ptq"]["peak_memory_bytes"]


def test_a_stage_surely_slower_than_its_reference_warns_in_every_report(tiny_run):
    """The tiny CNN's INT8 model (8 channels on 8x8 images) is all quantize/dequantize overhead: slower than FP32.
    Whichever way it measures, the warning is there exactly when the ratio's interval lies above 1."""
    from edgepress.running.pipeline import slower_than_reference

    folder, ran = tiny_run
    report = json.loads((folder / "out" / "report.json").read_text())
    ptq = next(s for s in report["stages"] if s["name"] == "ptq")["metrics"]
    slower = ptq["targets"]["local"]["latency_ratio"]["ci95"][0] > 1.0
    assert bool(ptq.get("warnings")) is slower and bool(report["warnings"]) is slower
    assert list(ran.report.warnings) == report["warnings"]  # the typed report's too
    if slower:
        assert report["warnings"][0].startswith("stage ptq: on local this model is slower than export's: p50 ")
        # `edgepress run` printing each as "edgepress: warning: ...": test_violated_budget_exits_1_and_lists_it
        assert "**Warnings:**" in (folder / "out" / "report.md").read_text()
    entry = {"latency_ratio": {"p50": 1.4, "ci95": [1.37, 1.41], "reference_stage": "export"}, "emulated": False}
    assert len(slower_than_reference({"local": entry, "qemu-aarch64": dict(entry, emulated=True)})) == 1
    unsure = dict(entry, latency_ratio=dict(entry["latency_ratio"], ci95=[0.99, 1.41]))
    assert slower_than_reference({"local": unsure, "other": {"latency_ms": {}}}) == []
    assert "float_where_faster" in slower_than_reference({"local": entry})[0]  # what ptq can change
    assert "optimization_level" in slower_than_reference({"local": entry}, kind="ort_format")[0]  # what an .ort can


def test_every_timed_stage_has_a_per_operator_profile_and_its_plot(tiny_run):
    folder, _ = tiny_run
    report = json.loads((folder / "out" / "report.json").read_text())
    stages = {s["name"]: s["metrics"]["targets"]["local"] for s in report["stages"] if s["format"] == "onnx"}
    for name, entry in stages.items():
        profile = entry["profile"]
        assert profile["runs"] == 50 and profile["kernels_ms"] > 0
        assert sum(row["share"] for row in profile["by_op_type"]) == pytest.approx(1.0)
        assert sum(row["ms"] for row in profile["by_op_type"]) == pytest.approx(profile["kernels_ms"])
        assert profile["by_node"][0]["ms"] >= profile["by_node"][-1]["ms"] > 0
    int8_ops = {row["op_type"] for row in stages["ptq"]["profile"]["by_op_type"]}
    assert "QuantizeLinear" in int8_ops and not int8_ops & {"Conv", "FusedConv"}  # INT8 convolutions ran
    html = (folder / "out" / "report.html").read_text()
    slowest = stages["ptq"]["profile"]["by_op_type"][0]["op_type"]  # the plot names the largest op types
    assert slowest.startswith("QLinear") or slowest == "QGemm"
    assert f'id="{report_plots.plot_id(f"profile-{slowest}", "ptq", "local")}"' in html


def test_peak_memory_under_run_is_the_models_own_as_under_bench(tiny_run, capsys):
    """The run's runner is a child of an edgepress holding torch (hundreds of MB): its figure must be the
    model's session over the runner's baseline, as `edgepress bench` of the same file measures it."""
    from edgepress.cli.main import main

    folder, _ = tiny_run
    report = json.loads((folder / "out" / "report.json").read_text())
    ptq = next(s for s in report["stages"] if s["name"] == "ptq")["metrics"]["targets"]["local"]
    assert ptq["memory_method"] == "VmHWM"
    capsys.readouterr()
    assert main(["bench", str(folder / "out" / "03-ptq" / "model.onnx"), "--runs", "20"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert ptq["peak_memory_bytes"] == pytest.approx(alone["peak_memory_bytes"], rel=0.10)
    assert ptq["runner_baseline_bytes"] < ptq["peak_memory_bytes"] < 400 * 2**20


def test_export_parity_tolerance_grows_with_the_logits():
    """Float32 rounding scales with the numbers: a barely-trained EfficientNet-B0 (BatchNorm at its initial
    statistics) gave logits of 5e6 that torch and ONNX Runtime summed 12 apart, and its export was refused."""
    import numpy as np

    from edgepress.core.errors import UserError
    from edgepress.export.export import ExportSettings, check_parity

    logits = np.array([[5e6, -3e6, 1e6], [2e6, 4e6, -1e6]], dtype=np.float32)
    parity = check_parity(logits, logits + 12.0, ExportSettings())
    assert parity["tolerance"] == pytest.approx(1e-3 + 1e-5 * 5e6)
    with pytest.raises(UserError, match=r"max \|diff\| 12 \(tolerance 0.00105\)"):
        check_parity(logits / 1e6, logits / 1e6 + 12.0, ExportSettings())  # the same gap on ordinary logits


def test_quantized_artifact_is_a_qdq_graph(tiny_run):
    folder, _ = tiny_run
    graph = onnx.load(str(folder / "out" / "03-ptq" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 3
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis stays dynamic


def test_human_reports_show_every_stage(tiny_run):
    folder, _ = tiny_run
    md = (folder / "out" / "report.md").read_text()
    html = (folder / "out" / "report.html").read_text()
    for name in ("model", "train", "export", "ptq"):
        assert f"| {name} |" in md
        assert f"<td>{name}</td>" in html
    assert "<svg" in html and "PASSED" in html
    # report.md opens with what a pull-request comment needs: the verdict, then one row per stage and target.
    assert md.splitlines()[2] == "**Gate on stage `ptq`: PASSED**"
    on_targets = md.split("## On each target")[1].split("##")[0]
    assert [line.split(" | ")[:2] for line in on_targets.splitlines() if line.startswith("| ") and "stage" not in line] \
        == [["| model", "local"], ["| train", "local"], ["| export", "local"], ["| ptq", "local"]]
    for name in ("model", "train", "export", "ptq"):  # every stage has its bar in the size plot
        assert html.count(f'id="{report_plots.plot_id("size", name)}"') == 1
    for name in ("export", "ptq"):  # timed ONNX stages are in the latency plot
        assert f'id="{report_plots.plot_id("latency", name, "local")}"' in html
    assert f'id="{report_plots.plot_id("latency", "train", "local")}"' not in html  # torch: not timed


def test_violated_budget_exits_1_and_lists_it(tmp_path):
    recipe = write_recipe(tmp_path, epochs=1, budgets="size_bytes = 100\nagreement_min = 0.5")
    report = edgepress.run(recipe, out=tmp_path / "out").to_json_dict()
    assert report["gate"]["passed"] is False
    assert [v["budget"] for v in report["gate"]["violations"]] == ["size_bytes"]
    assert report["gate"]["violations"][0]["value"] > 100
    assert "VIOLATED" in (tmp_path / "out" / "report.md").read_text()
    # What the command line itself says of that gate: exit 1, the violated budget on stderr and not the held one,
    # and each of the report's warnings. A rerun over the finished folder keeps every stage: the same report.
    proc = run_main("run", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert "budget violated: size_bytes" in proc.stderr
    assert "agreement_min" not in proc.stderr
    for line in report["warnings"]:
        assert f"edgepress: warning: {line}" in proc.stderr


def test_check_validates_without_running(tmp_path):
    recipe = write_recipe(tmp_path)
    proc = run_cli("check", str(recipe), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_users_own_model_through_an_entry_point_runs_like_a_zoo_model(tmp_path):
    (tmp_path / "usernet.py").write_text(
        "import torch\n\n"
        "def build(*, width=6, num_classes=10):\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, num_classes))\n\n"
        "build.input_shape = (1, 8, 8)\n")
    recipe = write_recipe(tmp_path, epochs=2, budgets="agreement_min = 0.5")
    recipe.write_text(recipe.read_text().replace('name = "small_cnn_8"\nkwargs = { width = 8 }',
                                                 'entry = "usernet:build"\nkwargs = { width = 6 }'))
    proc = run_cli("run", str(recipe), "--out", str(tmp_path / "out"), env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["kind"] for s in report["stages"]] == ["model", "train", "export", "ptq"]
    assert report["stages"][0]["metrics"]["params"] == 6 * 9 + 6 + 6 * 10 + 10
    assert report["stages"][-1]["metrics"]["quantization"]["int8_nodes"] == 2


@pytest.mark.slow
def test_runs_without_checkpoint_are_reproducible(tmp_path):
    recipe = write_recipe(tmp_path, epochs=1)
    reports = []
    for out in ("a", "b"):
        assert edgepress.run(recipe, out=tmp_path / out).gate.passed
        reports.append(json.loads((tmp_path / out / "report.json").read_text()))
    for first, second in zip(*(r["stages"] for r in reports)):
        assert first["metrics"]["accuracy"] == second["metrics"]["accuracy"], first["name"]
    assert reports[0]["stages"][1]["sha256"] == reports[1]["stages"][1]["sha256"]  # trained weights identical
