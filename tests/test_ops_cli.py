"""`edgepress ops` and `edgepress.merge_operators`: the operators of several runs' .ort models merged by ONNX Runtime's
own config writer into one config for a reduced build. In-process, on two tiny .ort models converted from one-node
graphs; runs are report.json files that name them, so no recipe runs here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from onnx import TensorProto, helper, numpy_helper

import edgepress
from edgepress.export.ort_format import OrtFormatSettings, convert
from edgepress.io.operators import config_operators, operators
from edgepress.report.model import Stage, StageMetrics
from tests.conftest import assert_user_error, main_one_line_error, one_node_model, run_main
from tests.test_report_model import _report


def _ort(folder: Path, node, initializer=()) -> Path:
    """A one-node float graph [1, 8] -> [1, 8], converted to .ort (its config beside it)."""
    source = one_node_model(folder / f"{node.op_type}.onnx", node,
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], initializer)
    out = folder / f"{node.op_type}.ort"
    convert(source, out=out, config=folder / f"{node.op_type}.config", settings=OrtFormatSettings(),
            log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("ort-models")
    relu = _ort(folder, helper.make_node("Relu", ["x"], ["y"]))
    bias = numpy_helper.from_array(np.ones((1, 8), np.float32), "b")
    add = _ort(folder, helper.make_node("Add", ["x", "b"], ["y"]), [bias])
    assert set(operators(relu)) != set(operators(add))  # two models that need different kernels
    return relu, add


def _run_folder(folder: Path, model: Path, *, name: str = "run") -> Path:
    """A run folder whose report.json names `model` as its ORT-format stage, as `edgepress run` writes it."""
    run = folder / name
    (run / "03-ort_format").mkdir(parents=True)
    shipped = run / "03-ort_format" / "model.ort"
    shipped.write_bytes(model.read_bytes())
    report = _report()
    ort_stage = Stage(name="ort_format", kind="ort_format", artifact="03-ort_format/model.ort", format="ort",
                      sha256=hashlib.sha256(shipped.read_bytes()).hexdigest(), seconds=0.1,
                      metrics=StageMetrics(size_bytes=shipped.stat().st_size, params=8, macs=8,
                                           operator_count=len(operators(shipped))))
    report = dataclasses.replace(report, stages=(*report.stages, ort_stage))
    (run / "report.json").write_text(json.dumps(report.to_json_dict()))
    return run


def test_two_runs_merge_into_the_union_of_their_operators(models, tmp_path):
    relu, add = models
    runs = [_run_folder(tmp_path, relu, name="a"), _run_folder(tmp_path, add, name="b")]
    out = tmp_path / "ops.config"
    proc = run_main("ops", str(runs[0]), str(runs[1] / "report.json"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    union = tuple(sorted(set(operators(relu)) | set(operators(add))))
    assert config_operators(out) == union
    assert "{" not in out.read_text()  # operators only: no types unless asked
    assert f"merged 2 .ort model(s) into {out}" in proc.stdout
    assert f"{len(union)} operators: ai.onnx {len(union)}" in proc.stdout
    assert "--include_ops_by_config" in proc.stdout and "--enable_reduced_operator_type_support" not in proc.stdout
    text = out.read_text()
    for run in runs:  # the header names each model as the caller named its run
        assert f"# - {run / '03-ort_format' / 'model.ort'}" in text


def test_types_when_asked_and_json_for_machines(models, tmp_path):
    relu, add = models
    out = tmp_path / "typed.config"
    proc = run_main("ops", str(relu), str(add), str(relu), "--out", str(out), "--types", "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    union = sorted(set(operators(relu)) | set(operators(add)))
    assert found == {"out": str(out), "models": [str(relu), str(add)], "types": True,  # relu named twice: once
                     "operator_count": len(union), "by_domain": {"ai.onnx": len(union)}, "operators": union}
    assert '{"inputs": {"0": ["float"]}}' in out.read_text()
    assert list(config_operators(out)) == union  # types dropped, the same operators


def test_the_python_api_returns_what_it_wrote(models, tmp_path):
    relu, add = models
    merged = edgepress.merge_operators([relu, add], tmp_path / "ops.config")
    assert isinstance(merged, edgepress.MergedOperators)
    assert merged.models == (relu, add) and merged.types is False
    assert merged.operators == config_operators(tmp_path / "ops.config") and merged.operator_count == 2
    assert merged.by_domain == {"ai.onnx": 2}


def test_an_existing_out_is_refused_unless_forced(models, tmp_path, capsys):
    relu, add = models
    out = tmp_path / "mine.config"
    out.write_text("the user's own file\n")
    main_one_line_error(capsys, ["ops", str(relu), "--out", str(out)], "mine.config exists", "--force")
    assert out.read_text() == "the user's own file\n"
    assert run_main("ops", str(relu), str(add), "--out", str(out), "--force").returncode == 0
    assert config_operators(out) == tuple(sorted(set(operators(relu)) | set(operators(add))))


def _bad_inputs(tmp_path: Path, relu: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    (tmp_path / "empty").mkdir()
    no_ort = tmp_path / "no-ort"
    no_ort.mkdir()
    (no_ort / "report.json").write_text(json.dumps(_report().to_json_dict()))
    missing = _run_folder(tmp_path, relu, name="missing")
    (missing / "03-ort_format" / "model.ort").unlink()
    changed = _run_folder(tmp_path, relu, name="changed")
    (changed / "03-ort_format" / "model.ort").write_bytes(relu.read_bytes() + b"\0")
    (tmp_path / "junk.ort").write_text("not a model")
    (tmp_path / "short.ort").write_bytes(relu.read_bytes()[:100])
    (tmp_path / "notes.txt").write_text("notes")
    return {
        "folder without report.json": ([str(tmp_path / "empty")], ("holds no report.json",)),
        "run without an ort_format stage": ([str(no_ort)], ("has no ORT-format stage", 'kind = "ort_format"')),
        "missing .ort of a run": ([str(missing)], ("model.ort", "is missing")),
        "changed .ort of a run": ([str(changed)], ("is not the file stage 'ort_format'", "sha256")),
        "missing .ort": ([str(tmp_path / "absent.ort")], ("absent.ort does not exist",)),
        "corrupt .ort": ([str(tmp_path / "junk.ort")], ("junk.ort is not an ORT format model",)),
        "truncated .ort": ([str(tmp_path / "short.ort")], ("short.ort is not an ORT format model",)),
        "a file that is no report": ([str(tmp_path / "notes.txt")], ("notes.txt is not valid JSON",)),
    }


@pytest.mark.parametrize("case", ["folder without report.json", "run without an ort_format stage",
                                  "missing .ort of a run", "changed .ort of a run", "missing .ort", "corrupt .ort",
                                  "truncated .ort", "a file that is no report"])
def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, capsys, case):
    relu, _ = models
    sources, fragments = _bad_inputs(tmp_path, relu)[case]
    out = tmp_path / "out" / "ops.config"
    main_one_line_error(capsys, ["ops", str(relu), *sources, "--out", str(out)], *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, fragments", [
    ("notes.txt/ops.config", ("lies under", "notes.txt, which is a file")),
    ("a-folder", ("a-folder is a folder", "required_operators.config")),
    ("model.ort", ("is one of the models to merge",)),
])
def test_an_out_that_cannot_be_written_is_refused(models, tmp_path, where, fragments):
    relu, _ = models
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "a-folder").mkdir()
    model = tmp_path / "model.ort"
    model.write_bytes(relu.read_bytes())
    assert_user_error(lambda: edgepress.merge_operators([model], tmp_path / where, force=True), *fragments)
    assert model.read_bytes() == relu.read_bytes() and (tmp_path / "notes.txt").read_text() == "notes"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".edgepress-tmp-")]


def test_a_write_that_fails_midway_leaves_nothing(models, tmp_path, monkeypatch):
    """A full disk while ONNX Runtime writes: one line, and neither the file nor its temporary name is left."""
    import errno

    from edgepress.io import operators as operators_module

    relu, _ = models

    def full_disk(models, path, **_):
        path.write_text("ai.onnx;17;Re")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(operators_module, "write_config", full_disk)
    assert_user_error(lambda: edgepress.merge_operators([relu], tmp_path / "ops.config"),
                      "cannot write the output file", "No space left on device")
    assert list(tmp_path.iterdir()) == []
