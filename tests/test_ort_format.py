"""ort_format: ONNX -> .ort with ONNX Runtime's converter. On tiny real graphs (float and QDQ INT8): what each
optimisation level leaves in the file (operator counts), that the required-operators config lists exactly the
operators the .ort holds, numeric parity with the source, and that the input is never touched; then the stage in a
recipe: report, budgets, resume, and the recipe errors around it."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

import edgepress
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.export.ort_format import OrtFormatSettings, convert
from edgepress.io.operators import OPERATOR_CONFIG, TYPED_OPERATOR_CONFIG, config_operators, operators
from tests.conftest import TINY_RECIPE, assert_user_error, tiny_recipe_with, write_recipe
from tests.test_ptq import export, inputs


def run(path, x) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A float conv net and its QDQ INT8 quantization."""
    folder = tmp_path_factory.mktemp("ort-models")
    fp32 = export(folder)
    int8 = folder / "int8.onnx"
    quantize(source=fp32, out=int8, calibration=inputs(64), settings=PtqSettings())
    return {"fp32": fp32, "int8": int8}


def converted(tmp_path, source, **settings):
    folder = tmp_path / "_".join([source.stem] + [f"{k}-{v}" for k, v in settings.items()])
    folder.mkdir()
    chosen = OrtFormatSettings(**settings)
    out, config = folder / "model.ort", folder / chosen.config_name
    convert(source, out=out, config=config, settings=chosen, log=lambda _: None)
    return out, config


def names(listed) -> set[str]:
    return {entry.rsplit(";", 1)[1] for entry in listed}


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("level", ["none", "basic", "extended", "layout", "all"])
def test_every_level_writes_an_ort_and_its_config_and_leaves_the_source_alone(models, tmp_path, kind, level):
    source = models[kind]
    before = sha256(source)
    out, config = converted(tmp_path, source, optimization_level=level)
    assert sha256(source) == before
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, config.name])  # no scratch left
    assert out.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier: ORT format, not ONNX
    assert config_operators(config) == operators(out)
    assert f"# - {out.name}" in config.read_text()  # the header names the file that ships, not a scratch path
    x = inputs(32, seed=3)
    expected, got = run(source, x), run(out, x)
    if kind == "fp32" or level not in ("none", "basic"):
        # Float graphs differ only in summation order; integer kernels fused as the .onnx's session fuses them are
        # the same kernels.
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 if kind == "fp32" else 0)
    else:  # Q/DQ pairs left unfused run in float: close, not equal
        assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_levels_decide_which_kernels_a_reduced_build_needs(models, tmp_path):
    basic = names(operators(converted(tmp_path, models["int8"], optimization_level="basic")[0]))
    extended = names(operators(converted(tmp_path, models["int8"], optimization_level="extended")[0]))
    fp32_basic = names(operators(converted(tmp_path, models["fp32"], optimization_level="basic")[0]))
    fp32_extended = names(operators(converted(tmp_path, models["fp32"], optimization_level="extended")[0]))
    assert {"Conv", "DequantizeLinear", "QuantizeLinear"} <= basic and "QLinearConv" not in basic
    assert "QLinearConv" in extended and "Conv" not in extended
    assert {"Conv", "Relu"} <= fp32_basic
    assert "FusedConv" in fp32_extended and "Relu" not in fp32_extended  # conv+relu fused into one kernel


def test_the_onnx_and_the_ort_operator_lists_are_read_from_the_graphs(models, tmp_path):
    listed = operators(models["int8"])
    assert {"Conv", "DequantizeLinear", "QuantizeLinear"} <= names(listed) and "QLinearConv" not in names(listed)
    assert all(entry.startswith("ai.onnx;") for entry in listed)
    out, _ = converted(tmp_path, models["int8"])
    assert any(entry.startswith("com.microsoft;1;") for entry in operators(out))


def test_operator_types_writes_the_typed_config(models, tmp_path):
    out, config = converted(tmp_path, models["int8"], operator_types=True)
    assert config.name == TYPED_OPERATOR_CONFIG and OrtFormatSettings().config_name == OPERATOR_CONFIG
    text = config.read_text()
    assert '{"inputs": {"0": ["uint8_t"]}}' in text
    assert config_operators(config) == operators(out)


def test_a_graph_onnx_runtime_cannot_load_is_one_line_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="acme")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    source = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]),
              str(source))
    folder = tmp_path / "out"
    folder.mkdir()
    assert_user_error(lambda: convert(source, out=folder / "model.ort", config=folder / OPERATOR_CONFIG,
                                      settings=OrtFormatSettings(), log=lambda _: None),
                      "could not convert", "custom.onnx")
    assert list(folder.iterdir()) == []  # neither a half-written .ort nor the scratch folder


ORT_RECIPE = TINY_RECIPE + """
[[stages]]
kind = "ort_format"
{settings}
"""


def test_the_stage_ships_an_ort_that_answers_as_its_source(ort_tiny_run):
    folder, report = ort_tiny_run
    assert report.gate.passed, report.gate.violations
    stage = report.stages[-1]
    assert (stage.kind, stage.format, stage.artifact) == ("ort_format", "ort", "04-ort_format/model.ort")
    own = stage.metrics.own["ort_format"]
    assert own["source_stage"] == "ptq" and stage.metrics.own["converted_from"] == "ptq"
    assert own["optimization_level"] == "all" and own["onnxruntime"] == ort.__version__
    assert own["evaluation"]["digits:test"] == {"samples": 360, "same_as_source": 1.0, "max_abs_error_vs_source": 0.0}
    config = folder / "out" / "04-ort_format" / own["config"]
    assert tuple(own["operators"]) == config_operators(config) == operators(folder / "out" / stage.artifact)
    assert stage.metrics.operator_count == len(own["operators"])
    ptq = report.stage_named("ptq")
    assert own["source_size_bytes"] == ptq.metrics.size_bytes
    assert stage.metrics.params == ptq.metrics.params and stage.metrics.macs == ptq.metrics.macs
    assert stage.metrics.values["accuracy"] == ptq.metrics.values["accuracy"]
    assert stage.metrics.targets["local"].latency_ms is not None  # timed like any ONNX model
    assert stage.metrics.latency_ratio is not None  # against the ONNX reference (export)
    checks = {c.budget: c for c in report.gate.checks}
    assert checks["operator_count_max"].value == len(own["operators"])
    assert checks["size_bytes"].value == (folder / "out" / stage.artifact).stat().st_size


def test_a_rerun_keeps_the_stage_and_an_operator_budget_gates_it(ort_tiny_run, tmp_path):
    shared, report = ort_tiny_run
    folder = tmp_path / "copy"
    shutil.copytree(shared, folder)
    recipe = folder / "recipe.toml"
    ptq_files = {p.name: sha256(p) for p in (folder / "out" / "03-ptq").iterdir() if p.is_file()}
    count = report.stages[-1].metrics.operator_count
    strict = recipe.read_text().replace("operator_count_max = 40", f"operator_count_max = {count - 1}")
    recipe.write_text(strict)
    again = edgepress.run(recipe, out=folder / "out")
    assert again.stages[-1].seconds == report.stages[-1].seconds  # kept, not converted again
    assert [(c.budget, c.value) for c in again.gate.violations] == [("operator_count_max", count)]
    assert {p.name: sha256(p) for p in (folder / "out" / "03-ptq").iterdir() if p.is_file()} == ptq_files
    summary = json.loads((folder / "out" / "report.json").read_text())["stages"][-1]
    assert summary["metrics"]["operator_count"] == count


def test_a_converted_model_that_answers_differently_fails_the_stage(tmp_path):
    """At "basic" Q/DQ pairs stay unfused and the CPU runs the convolutions in float where the source's session
    runs integer kernels: the outputs move, and a bound on that error refuses the file rather than ship it."""
    settings = 'optimization_level = "basic"\nmax_error_vs_source = 1e-6'
    recipe = write_recipe(tmp_path, text=ORT_RECIPE.format(epochs=1, budgets="", settings=settings))
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "differ from its source ONNX model's",
                      "max_error_vs_source 1e-06", "optimization_level 'basic'", 'optimization_level = "all"')
    assert not (tmp_path / "out" / "04-ort_format").exists()
    assert (tmp_path / "out" / "03-ptq" / "model.onnx").is_file()  # the stages before it are kept


@pytest.mark.parametrize("text, fragments", [
    (tiny_recipe_with('[[stages]]\nkind = "ort_format"').format(epochs=1, budgets=""),
     ("stage 'ort_format' (ort_format) takes an ONNX model but gets a torch model",)),
    (ORT_RECIPE.format(epochs=1, budgets="", settings="") + '\n[[stages]]\nname = "ptq2"\nkind = "ptq"\n',
     ("stage 'ptq2' (ptq) takes an ONNX model but gets an ORT-format model (.ort)",)),
])
def test_the_stage_chains_only_after_an_onnx_stage(tmp_path, text, fragments):
    assert_user_error(lambda: edgepress.check(write_recipe(tmp_path, text=text)), *fragments)


def test_a_misspelt_setting_names_the_closest(tmp_path):
    recipe = write_recipe(tmp_path, text=ORT_RECIPE.format(epochs=1, budgets="", settings='optimisation_level = "basic"'))
    assert_user_error(lambda: edgepress.check(recipe), "optimisation_level", "did you mean 'optimization_level'")


def _add_layer_norm(path):
    """Add then LayerNormalization over the last axis: what SkipLayerNormFusion fuses into one kernel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(
        nodes, "add_layer_norm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, 8]) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])],
        initializer=[numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "scale"),
                     numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_disabled_optimizers_stay_out_of_the_ort_and_the_rest_is_the_converters_file(tmp_path):
    source = _add_layer_norm(tmp_path / "add_ln.onnx")
    fused, _ = converted(tmp_path, source)
    plain, _ = converted(tmp_path, source, disabled_optimizers=("SkipLayerNormFusion",))
    assert "SkipLayerNormalization" in names(operators(fused))
    assert {"Add", "LayerNormalization"} <= names(operators(plain)) and "SkipLayerNormalization" not in names(
        operators(plain))
    feeds = {n: np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32) for n in ("x", "skip")}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (fused, plain)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    # With nothing skipped, the session-saving path writes the converter's graph: the same operators, the same
    # answers (the bytes may differ in the names ONNX Runtime makes up for fused nodes).
    from edgepress.export.ort_format import _save_as_ort

    same = tmp_path / "same" / "model.ort"
    _save_as_ort(source, same, settings=OrtFormatSettings())
    assert operators(same) == operators(fused)
    again = ort.InferenceSession(str(same), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(again, outs[0])


def test_a_disabled_optimizer_must_be_a_transformer_name():
    with pytest.raises(ValueError, match="not an ONNX Runtime transformer name"):
        OrtFormatSettings(disabled_optimizers=("Skip LayerNorm",))


def test_an_amd64_ort_is_refused_before_any_work_where_another_cpu_runs_it(tmp_path):
    """An "amd64" .ort holds NCHWc blocks as wide as this CPU's vectors: elsewhere it answers wrongly, silently."""
    targets = '\n[[targets]]\nname = "local"\n\n[[targets]]\nname = "qemu-x86_64:Haswell"\nlatency = false\n'
    text = ORT_RECIPE.format(epochs=1, budgets="", settings='target_platform = "amd64"')
    recipe = write_recipe(tmp_path, text=text.replace("[budgets]", targets + "\n[budgets]"))
    assert_user_error(lambda: edgepress.load_recipe(recipe), "stage 'ort_format'", "qemu-x86_64:Haswell",
                      'target_platform = "any"')
    local_only = write_recipe(tmp_path, text=text, name="local.toml")
    assert edgepress.load_recipe(local_only).stages[-1].settings.target_platform == "amd64"


def test_convert_touches_nothing_beside_its_output(models, tmp_path):
    """Called as a pure function into a user's folder: their files, even one named like a scratch folder, stay."""
    mine = tmp_path / ".ort-convert"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (tmp_path / "other.txt").write_text("mine too")
    convert(models["int8"], out=tmp_path / "model.ort", config=tmp_path / OPERATOR_CONFIG,
            settings=OrtFormatSettings(), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".ort-convert", OPERATOR_CONFIG, "model.ort", "other.txt"])
    assert (mine / "notes.txt").read_text() == "mine" and (tmp_path / "other.txt").read_text() == "mine too"
