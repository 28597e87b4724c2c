"""report.json as typed, versioned objects: /2 round-trips, both shapes of /1 read (and still gate), anything else
is refused in one line naming the file, the field and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgepress.core.errors import UserError
from edgepress.report import writer
from edgepress.report.model import (SCHEMA, EvaluationSet, Gate, GateCheck, Latency, LatencyRatio, MetricValue,
                                    Report, SessionSettings, Stage, StageMetrics, TargetEntry, TargetInfo,
                                    read_report)
from tests.conftest import assert_one_line_error, run_main

QEMU = "qemu-aarch64:cortex-a53"
TOP1_VALUES = (MetricValue(key="accuracy", label="accuracy", higher_is_better=True, unit="share"),
               MetricValue(key="agreement", label="agreement", higher_is_better=True, unit="share"))


def _report(*, metric: str = "top1", metric_values=TOP1_VALUES, user_value: str | None = None) -> Report:
    """A report with every part filled: a torch stage and an ONNX one timed on a real and an emulated target."""
    quality = {"accuracy": 0.91, "agreement": 0.99} | ({user_value: 0.25} if user_value else {})
    local = TargetEntry(
        emulated=False, latency_ms=Latency(p50=1.0, p90=1.2, p95=1.3, p99=1.5, mean=1.05, std=0.1, min=0.9, max=2.0,
                                           cv=0.1),
        p50_ci95_ms=(0.98, 1.02), runs=200, peak_memory_bytes=70_000_000,
        profile={"runs": 50, "by_op_type": [{"op_type": "QLinearConv", "ms": 0.5, "share": 1.0, "nodes": 2}]},
        samples_ms=(0.9, 1.0, 1.1), threads=1, batch=1,
        latency_ratio=LatencyRatio(p50=0.5, ci95=(0.45, 0.55), epochs=12, reference_stage="export",
                                   reference_p50_ms=2.0, reference_p50_ci95_ms=(1.9, 2.1)),
        values=quality, more={"warmup_runs": 5, "device": {"machine": "x86_64"}, "complete": True})
    emulated = TargetEntry(
        emulated=True, latency_ms=Latency(p50=30.0, p90=36.0), p50_ci95_ms=(29.0, 31.0), runs=200, threads=1, batch=1,
        values={"accuracy": 0.9, "agreement": 0.98, "same_as_host": 0.995},
        evaluation={"digits:test": EvaluationSet(samples=100, values={"accuracy": 0.9, "agreement": 0.98,
                                                                      "same_as_host": 0.995})},
        reference_scores={"accuracy": 0.92})
    export = Stage(name="export", kind="export", artifact="01-export/model.onnx", format="onnx", sha256="a" * 64,
                   seconds=3.2, metrics=StageMetrics(
                       values={"accuracy": 0.92, "agreement": 1.0}, size_bytes=20_000, size_gzip_bytes=9_000,
                       params=1_400, macs=23_000,
                       evaluation={"digits:test": EvaluationSet(samples=360, values={"accuracy": 0.92})},
                       own={"parity": {"samples": 256, "max_abs_diff": 1e-7}, "opset": 18},
                       targets={"local": dataclass_copy(local, values={"accuracy": 0.92}, latency_ratio=None)},
                       latency_ms=Latency(p50=2.0, p90=2.4, runs=200, threads=1, batch=1, target="local"),
                       peak_memory_bytes=69_000_000))
    ptq = Stage(name="ptq", kind="ptq", artifact="02-ptq/model.onnx", format="onnx", sha256="b" * 64, seconds=1.5,
                metrics=StageMetrics(
                    values=quality, size_bytes=15_000, size_gzip_bytes=8_000, params=1_400, macs=23_000,
                    evaluation={"digits:test": EvaluationSet(
                        samples=360, values=quality,
                        outputs={"logits": {"cosine": 0.99, "snr_db": 30.0, "max_abs_error": 0.1},
                                 "features": {"cosine": 0.98, "snr_db": 25.0, "max_abs_error": 0.2}})},
                    own={"quantization": {"node_precision": {"conv1": "int8", "fc": "fp32"},
                                          "fp32_fallback": [{"node": "fc", "reason": "saturation"}]}},
                    size_ratio=0.75, targets={"local": local, QEMU: emulated},
                    latency_ms=Latency(p50=1.0, p90=1.2, runs=200, threads=1, batch=1, target="local"),
                    latency_ratio=local.latency_ratio, peak_memory_bytes=70_000_000,
                    warnings=("on local this model is slower than export's",)))
    model = Stage(name="model", kind="model", artifact="00-model/model.pt", format="torch", sha256="c" * 64,
                  seconds=0.1, metrics=StageMetrics(values={"accuracy": 0.92}, size_bytes=10_000, params=1_442,
                                                    macs=26_000, own={"checkpoint": {}}))
    checks = (GateCheck("size_bytes", 1_000_000, 15_000, True), GateCheck("latency_p90_ms", 1.0, 1.2, False, "noisy run"),
              GateCheck("agreement_min", 0.99, 0.98, False, target=QEMU))
    return Report(recipe="/recipes/tiny.toml", name="tiny", reference_stage="model", onnx_reference_stage="export",
                  metric=metric, metric_values=metric_values,
                  metric_higher_is_better=False if user_value else None, metric_output="logits" if user_value else None,
                  targets=(TargetInfo(name="local", threads=1, emulated=False, evaluate=False,
                                      budgets={}),
                           TargetInfo(name=QEMU, threads=1, emulated=True, evaluate=True, budgets={"agreement_min": 0.99},
                                      session=SessionSettings(denormals="flush", disabled_optimizers=("NchwcTransformer",)))),
                  budgets={"size_bytes": 1_000_000, "latency_p90_ms": 1.0},
                  stages=(model, export, ptq), gate=Gate(stage="ptq", checks=checks))


def dataclass_copy(entry: TargetEntry, **changes) -> TargetEntry:
    import dataclasses

    return dataclasses.replace(entry, **changes)


def _through_json(report: Report) -> tuple[dict, Report]:
    written = json.loads(json.dumps(report.to_json_dict()))
    return written, read_report(written)


def test_a_report_round_trips_through_json():
    report = _report()
    written, read = _through_json(report)
    assert read == report
    assert written["schema"] == SCHEMA == "edgepress.report/2"
    assert read.to_json_dict() == written
    # The keys derived from the typed parts are written as /1 had them.
    assert written["target"] == {"name": "local", "threads": 1}
    assert written["warnings"] == ["stage ptq: on local this model is slower than export's"]
    assert written["gate"]["passed"] is False and read.gate.passed is False
    assert written["gate"]["violations"] == [{"budget": "latency_p90_ms", "limit": 1.0, "value": 1.2},
                                             {"budget": "agreement_min", "limit": 0.99, "value": 0.98, "target": QEMU}]
    assert written["gate"]["checks"][0]["note"] is None  # null, as /1 wrote it
    ptq = written["stages"][2]["metrics"]
    assert ptq["accuracy"] == 0.91 and ptq["quantization"]["node_precision"]["fc"] == "fp32"  # flat, as in /1
    assert ptq["targets"]["local"]["warmup_runs"] == 5 and ptq["targets"]["local"]["p50_ci95_ms"] == [0.98, 1.02]
    assert "targets" not in written["stages"][0]["metrics"] and "warnings" not in written["stages"][1]["metrics"]
    assert written["targets"][1]["session"] == {"denormals": "flush", "disabled_optimizers": ["NchwcTransformer"]}
    assert "session" not in written["targets"][0]


def test_a_user_metrics_values_are_typed_by_the_report_that_names_them():
    values = (MetricValue(key="score_fn", label="score_fn", higher_is_better=False, unit="target"),)
    report = _report(metric="my.metrics:score_fn", metric_values=values, user_value="score_fn")
    written, read = _through_json(report)
    assert read == report
    assert read.stages[2].metrics.values["score_fn"] == 0.25
    assert written["metric_higher_is_better"] is False and written["metric_output"] == "logits"


def test_the_typed_views_a_reader_needs():
    report = read_report(_report().to_json_dict())
    assert report.primary_target == "local" and report.target_names() == ["local", QEMU]
    final = report.final_stage
    assert final.name == "ptq" and final.metrics.values["accuracy"] == 0.91
    on = report.on_targets(final)
    assert list(on) == ["local", QEMU]
    assert on[QEMU].size_bytes == 15_000 and on[QEMU].timed_latency is None  # emulated: never latency
    assert on["local"].timed_latency.p50 == 1.0 and on["local"].to_json_dict()["size_bytes"] == 15_000
    torch_stage = report.on_targets(report.stages[0])  # not timed: the primary's entry, from its headline
    assert list(torch_stage) == ["local"] and torch_stage["local"].values == {"accuracy": 0.92}
    assert torch_stage["local"].latency_ms is None and torch_stage["local"].macs == 26_000


def _before_targets() -> dict:
    """A report as edgepress wrote it under schema /1 before targets (2026-11): one target, a stage's timing in its
    headline latency_ms with the runs, threads, batch and target, no budgets beside the gate's checks, no metric."""
    evaluation = {"digits:test": {"samples": 360, "accuracy": 0.9, "agreement": 0.99}}
    latency = {"p50": 0.5, "p90": 0.6, "p99": 0.9, "mean": 0.52, "std": 0.05, "min": 0.45, "max": 1.1, "runs": 200,
               "threads": 1, "batch": 1, "target": "local"}
    return {
        "schema": "edgepress.report/1", "recipe": "/recipes/tiny.toml", "name": "tiny", "reference_stage": "train",
        "target": {"name": "local", "threads": 1},
        "stages": [
            {"name": "model", "kind": "model", "artifact": "00-model/model.pt", "format": "torch", "sha256": "c" * 64,
             "seconds": 0.01, "metrics": {"accuracy": 0.1, "size_bytes": 10_577, "params": 1442, "macs": 26026,
                                          "evaluation": {"digits:test": {"samples": 360, "accuracy": 0.1}},
                                          "checkpoint": {}}},
            {"name": "train", "kind": "train", "artifact": "01-train/model.pt", "format": "torch", "sha256": "d" * 64,
             "seconds": 2.9, "metrics": {"accuracy": 0.92, "agreement": 1.0, "size_bytes": 10_577, "params": 1442,
                                         "macs": 26026, "evaluation": evaluation,
                                         "train": {"samples": 400, "epochs_run": 1}}},
            {"name": "ptq", "kind": "ptq", "artifact": "02-ptq/model.onnx", "format": "onnx", "sha256": "e" * 64,
             "seconds": 1.2, "metrics": {"accuracy": 0.9, "agreement": 0.99, "size_bytes": 15_389, "params": 1418,
                                         "macs": 23200, "latency_ms": latency, "evaluation": evaluation,
                                         "quantization": {"int8_nodes": 3}}},
        ],
        "gate": {"passed": True, "stage": "ptq", "violations": [],
                 "checks": [{"budget": "size_bytes", "limit": 1000000, "value": 15389, "passed": True},
                            {"budget": "agreement_min", "limit": 0.5, "value": 0.99, "passed": True}]},
    }


def test_schema_1_before_targets_is_upgraded():
    report = read_report(_before_targets())
    assert report.targets == (TargetInfo(name="local", threads=1, emulated=False, evaluate=False, budgets={}),)
    assert report.budgets == {"size_bytes": 1000000, "agreement_min": 0.5}  # the limits of its checks
    assert report.metric == "top1" and [v.key for v in report.metric_values][:3] == ["accuracy", "top5_accuracy",
                                                                                      "agreement"]
    assert report.onnx_reference_stage is None and report.warnings == ()
    ptq = report.final_stage.metrics
    entry = ptq.targets["local"]  # the headline timing, as the primary target's entry
    assert entry.emulated is False and entry.threads == 1 and entry.batch == 1 and entry.runs == 200
    assert entry.latency_ms == Latency(p50=0.5, p90=0.6, p99=0.9, mean=0.52, std=0.05, min=0.45, max=1.1)
    assert entry.values == {"accuracy": 0.9, "agreement": 0.99}
    assert ptq.latency_ms.target == "local" and ptq.latency_ms.runs == 200  # the headline stays
    assert report.stages[1].metrics.targets is None  # torch: no target timed it
    assert report.gate.checks[0].note is None
    written, again = _through_json(report)
    assert written["schema"] == SCHEMA and again == report


def test_schema_1_since_targets_reads_as_2():
    current = _report().to_json_dict()
    assert read_report({**current, "schema": "edgepress.report/1"}) == read_report(current)
    older = copy.deepcopy(current)  # as /1 wrote it before the reference stage, metric values and warnings
    for key in ("onnx_reference_stage", "metric_values", "warnings"):
        older.pop(key)
    older["schema"] = "edgepress.report/1"
    older["stages"][2]["metrics"]["targets"][QEMU].pop("emulated")  # a target's entry says it since later
    report = read_report(older)
    assert report.onnx_reference_stage is None and report.warnings == read_report(current).warnings
    assert report.final_stage.metrics.targets[QEMU].emulated is True  # as its target is declared
    assert [v.key for v in report.metric_values] == ["accuracy", "top5_accuracy", "agreement", "cosine", "snr_db",
                                                     "max_abs_error"]


def test_a_stored_schema_1_report_still_gates_and_renders(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_before_targets()))
    proc = run_main("gate", str(path), "--junit", str(tmp_path / "j.xml"))
    assert proc.returncode == 0, proc.stderr
    assert "gate passed on stage ptq: 2 checks, 0 failed" in proc.stdout
    (tmp_path / "b.toml").write_text("size_bytes = 100\nlatency_p90_ms = 10\n")
    proc = run_main("gate", str(path), "--budgets", str(tmp_path / "b.toml"))
    assert proc.returncode == 1 and "budget violated: size_bytes = 1.539e+04 (limit 100) on local" in proc.stderr
    baseline = _before_targets()
    baseline["stages"][2]["metrics"]["latency_ms"]["p50"] = 0.25  # half the new p50: a regression, or inconclusive
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    proc = run_main("gate", str(path), "--baseline", str(tmp_path / "baseline.json"))
    assert proc.returncode == 0 and "p50 inconclusive (not failing): stage ptq on local" in proc.stderr  # no interval
    md = writer.markdown(read_report(path))
    assert "**Gate on stage `ptq`: PASSED**" in md and "| ptq | local | 90.00% | 99.00% | 15.0 KiB | 0.500 |" in md


def _write(tmp_path: Path, data, name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("data,fragments", [
    ({**_report().to_json_dict(), "schema": "edgepress.report/3"},
     ["has schema 'edgepress.report/3'", "reads 'edgepress.report/2' and 'edgepress.report/1'"]),
    ({"stages": [], "gate": {}}, ["is not an edgepress report"]),
    ({"schema": "other.report/2", "name": "x"}, ["is not an edgepress report"]),
    ([1, 2, 3], ["is not an edgepress report"]),
    ('{"schema": "edgepress.report/2", ', ["is not valid JSON"]),
])
def test_other_files_are_refused_in_one_line(tmp_path, data, fragments):
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as caught:
        read_report(path, role="baseline")
    line = caught.value.one_line()
    assert line == str(caught.value) and "\n" not in line
    assert line.startswith(f"baseline {path} ") and all(f in line for f in fragments) and "; fix: " in line
    assert_one_line_error(run_main("gate", str(path)), f"report {path}", *fragments)


def _damaged(edit) -> dict:
    data = _report().to_json_dict()
    edit(data)
    return data


@pytest.mark.parametrize("edit,fragments", [
    (lambda d: d["stages"][1]["metrics"].pop("size_bytes"), ["stages[1].metrics.size_bytes is missing"]),
    (lambda d: d.pop("gate"), ["gate is missing"]),
    (lambda d: d["targets"][0].update(threads="one"), ["targets[0].threads must be an integer, got \"one\""]),
    (lambda d: d["stages"][2]["metrics"]["targets"]["local"]["latency_ms"].update(p50="fast"),
     ["stages[2].metrics.targets['local'].latency_ms.p50 must be a number"]),
    (lambda d: d["stages"][2]["metrics"]["targets"]["local"].update(p50_ci95_ms=[2.0, 1.0]),
     ["stages[2].metrics.targets['local'].p50_ci95_ms is not [low, high]"]),
    (lambda d: d["stages"][0]["metrics"].update(accuracy="high"), ["stages[0].metrics.accuracy must be a number"]),
    (lambda d: d["gate"]["checks"][0].pop("limit"), ["gate.checks[0].limit is missing"]),
    (lambda d: d["gate"].update(passed=True), ["gate.passed is true, but the checks have a violation"]),
    (lambda d: d.update(stages=[]), ["stages is empty"]),
    (lambda d: d.update(colour="blue"), ["colour is unknown"]),
    (lambda d: d["target"].update(name="elsewhere"), ["target.name is \"elsewhere\"", "first of targets is 'local'"]),
])
def test_a_malformed_report_is_refused_naming_the_field(tmp_path, edit, fragments):
    path = _write(tmp_path, _damaged(edit))
    with pytest.raises(UserError) as caught:
        read_report(path)
    line = caught.value.one_line()
    assert line.startswith(f"report {path} is damaged: ") and all(f in line for f in fragments), line
    assert "rerun" in caught.value.fix
    assert_one_line_error(run_main("gate", str(path)), "is damaged", *fragments)


def test_a_stage_record_of_another_shape_is_named():
    record = _report().to_json_dict()["stages"][2]
    record["metrics"]["targets"]["local"]["runs"] = "many"
    with pytest.raises(ValueError, match=r"^metrics.targets\['local'\].runs must be an integer"):
        Stage.from_json_dict(record, metric_values=("accuracy",))
