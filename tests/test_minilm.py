"""The real all-MiniLM-L6-v2 through edgepress: export, ONNX Runtime fusion, dynamic INT8, 4-bit, gate.

One recipe run (short sequences, few sentences, so it stays quick) feeds most tests; they read
its report and artifacts under real ONNX Runtime sessions.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgepress
from edgepress.gating import budgets as gate
from edgepress.compress.int4_weights import Int4WeightsSettings, quantize_int4
from edgepress.core.errors import UserError
from edgepress.measure.metrics import METRICS
from edgepress.measure.scores.fidelity import cosine_per_sample
from edgepress.models.text import PYDOC_TEST_SIZE, load_pydoc, minilm_dir, tokenize
from edgepress.recipe import Budgets, from_table
from edgepress.runtime.session import open_session, predict_feeds
from tests.conftest import assert_user_error, write_recipe


def _similarity(embeddings, reference):
    """The text metric's comparison, as the pipeline computes it (cosine from fidelity, the rest from text)."""
    return METRICS["cosine"].compare({"output": embeddings}, {"output": reference}, None) | {
        "cosine": float(cosine_per_sample(embeddings, reference).mean())}

SEQUENCE_LENGTH = 16
SENTENCES = 24

RECIPE = f"""
name = "minilm-test"

[model]
name = "minilm_l6"
input_shape = [{SEQUENCE_LENGTH}]

[data]
metric = "cosine"
evaluation = [{{ dataset = "pydoc_topics:test", limit = {SENTENCES} }}]

[[stages]]
kind = "export_transformer"

[[stages]]
kind = "fuse_transformer"

[[stages]]
kind = "dynamic_int8"

[bench]
warmup_runs = 2
runs = 200

[budgets]
cosine_min = 0.97
top5_agreement_min = 0.6
size_bytes = 25000000
"""


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("minilm")
    report = edgepress.run(write_recipe(folder, text=RECIPE), out=folder / "out")
    assert report.gate.passed, report.gate.violations
    return folder / "out"


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _op_counts(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _float_matmuls_with_weights(path: Path) -> int:
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    return sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants)


@pytest.mark.slow
def test_attention_only_fusion_fuses_attention_and_leaves_the_rest(minilm_run, tmp_path):
    from edgepress.compress.fuse_transformer import fuse_transformer

    exported = minilm_run / "01-export_transformer" / "model.onnx"
    out = tmp_path / "attention.onnx"
    fused = fuse_transformer(source=exported, out=out, model_type="bert", num_heads=12, hidden_size=384,
                             log=lambda _: None, fusions="attention")
    assert fused.get("Attention") == 6
    assert not {"SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"} & set(fused)
    feeds = _feeds(8)
    reference = predict_feeds(open_session(exported, threads=2), feeds, batch_size=8)
    found = predict_feeds(open_session(out, threads=2), feeds, batch_size=8)
    np.testing.assert_allclose(found, reference, atol=1e-4)


def _feeds(count: int = SENTENCES) -> dict[str, np.ndarray]:
    return tokenize(load_pydoc("test")[:count], tokenizer_path=minilm_dir() / "tokenizer.json",
                    sequence_length=SEQUENCE_LENGTH)


@pytest.mark.slow
def test_recipe_reports_cosine_neighbours_latency_size_and_gate(minilm_run):
    report = _report(minilm_run)
    assert report["metric"] == "cosine"
    stages = {s["name"]: s["metrics"] for s in report["stages"]}
    assert list(stages) == ["model", "export_transformer", "fuse_transformer", "dynamic_int8"]
    for name, metrics in stages.items():
        assert "accuracy" not in metrics and metrics["evaluation"]["pydoc_topics:test"]["samples"] == SENTENCES
        assert metrics["params"] > 22_000_000
    for fp32 in ("export_transformer", "fuse_transformer"):
        assert stages[fp32]["cosine_min"] > 0.9999 and stages[fp32]["top5_agreement"] == 1.0
    assert stages["export_transformer"]["parity"]["max_abs_diff"] < 1e-4
    int8 = stages["dynamic_int8"]
    assert 0.97 <= int8["cosine"] < 0.9999 and int8["cosine_min"] <= int8["cosine_p5"] <= int8["cosine"]
    assert 0.6 <= int8["top5_agreement"] <= 1.0
    assert int8["size_bytes"] < 0.3 * stages["export_transformer"]["size_bytes"]
    assert int8["latency_ms"]["p50"] > 0 and "latency_ms" not in stages["model"]
    # Weight-layer MACs: the same in the exported, fused and INT8 graphs, and as torch counts them
    # (torch-pruning adds the LayerNorms' few).
    onnx_macs = {m["macs"] for name, m in stages.items() if name != "model"}
    assert len(onnx_macs) == 1 and stages["model"]["macs"] == pytest.approx(onnx_macs.pop(), rel=0.01)
    gate_checks = {c["budget"]: c for c in report["gate"]["checks"]}
    assert report["gate"]["passed"] and gate_checks["cosine_min"]["value"] == int8["cosine"]
    assert "top5_agreement_min" in gate_checks
    markdown = (minilm_run / "report.md").read_text()
    assert "| cosine | cosine min | top-5 agreement |" in markdown


@pytest.mark.slow
def test_fusion_fuses_attention_and_int8_leaves_no_float_matmul(minilm_run):
    fused = _op_counts(minilm_run / "02-fuse_transformer" / "model.onnx")
    assert fused["Attention"] == 6 and fused["SkipLayerNormalization"] == 12
    assert fused["EmbedLayerNormalization"] == 1 and fused["BiasGelu"] == 6 and fused["Softmax"] == 0
    int8_path = minilm_run / "03-dynamic_int8" / "model.onnx"
    int8 = _op_counts(int8_path)
    assert int8["QAttention"] == 6 and int8["MatMulInteger"] == 18 and int8["QEmbedLayerNormalization"] == 1
    assert int8["Attention"] == 0 and _float_matmuls_with_weights(int8_path) == 0
    metrics = _report(minilm_run)["stages"][3]["metrics"]
    assert metrics["quantization"]["nodes"]["float_with_constant_weight"] == 0
    assert metrics["quantization"]["scheme"] == "u8s8" and metrics["quantization"]["per_channel"]


@pytest.mark.slow
def test_int4_weights_are_matmulnbits_and_keep_the_embeddings_close(minilm_run, tmp_path):
    fused = minilm_run / "02-fuse_transformer" / "model.onnx"
    out = tmp_path / "int4.onnx"
    counts = quantize_int4(source=fused, out=out, settings=Int4WeightsSettings(), log=lambda _: None)
    assert counts["MatMulNBits"] == 18 and _float_matmuls_with_weights(out) == 0
    assert out.stat().st_size < 0.8 * fused.stat().st_size  # the Q/K/V weights inside Attention stay float
    feeds = _feeds()
    reference = predict_feeds(open_session(fused, threads=2), feeds, batch_size=32)
    scores = _similarity(predict_feeds(open_session(out, threads=2), feeds, batch_size=32),
                                             reference)
    assert scores["cosine"] > 0.95


@pytest.mark.slow
def test_onnx_text_model_fed_a_longer_sequence_is_one_line_error(minilm_run, tmp_path):
    recipe = write_recipe(tmp_path, text=f"""
        name = "wrong-length"
        [model]
        onnx = "{minilm_run / '01-export_transformer' / 'model.onnx'}"
        input_shape = [{2 * SEQUENCE_LENGTH}]
        [data]
        metric = "cosine"
        tokenizer = "{minilm_dir() / 'tokenizer.json'}"
        evaluation = [{{ dataset = "pydoc_topics:test", limit = 4 }}]
        """)
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"),
                      "'input_ids' of shape [32]", "takes ['N', 16]", "input_shape")


@pytest.mark.slow
def test_onnx_text_model_without_a_tokenizer_is_one_line_error(minilm_run, tmp_path):
    recipe = write_recipe(tmp_path, text=f"""
        name = "no-tokenizer"
        [model]
        onnx = "{minilm_run / '03-dynamic_int8' / 'model.onnx'}"
        [data]
        metric = "cosine"
        evaluation = [{{ dataset = "pydoc_topics:test", limit = 4 }}]
        """)
    assert_user_error(lambda: edgepress.check(recipe), "names no tokenizer", "tokenizer.json")


def test_sequence_longer_than_the_model_reads_is_one_line_error(tmp_path):
    recipe = write_recipe(tmp_path, text=RECIPE.replace(f"input_shape = [{SEQUENCE_LENGTH}]", "input_shape = [600]"))
    assert_user_error(lambda: edgepress.check(recipe), "at most 512 tokens", "input_shape = [n]")


def _table(**changes) -> dict:
    table = {"model": {"name": "minilm_l6"},
             "data": {"metric": "cosine", "evaluation": [{"dataset": "pydoc_topics:test"}]},
             "stages": [{"kind": "export_transformer"}, {"kind": "dynamic_int8"}]}
    table.update(changes)
    return table


def test_text_recipe_validates_stage_kinds_budgets_and_sets(tmp_path):
    recipe = from_table(_table(budgets={"cosine_min": 0.99}), path=tmp_path / "r.toml")
    assert recipe.data.modality == "text" and recipe.budgets.cosine_min == 0.99
    with pytest.raises(UserError, match=r"stage 'ptq' \(ptq\) works on image models.*fix: use one of .*dynamic_int8"):
        from_table(_table(stages=[{"kind": "export_transformer"}, {"kind": "ptq"}]), path=tmp_path / "r.toml")
    with pytest.raises(UserError, match="works on image models.*export_transformer"):
        from_table(_table(stages=[{"kind": "export"}]), path=tmp_path / "r.toml")
    with pytest.raises(UserError, match="budgets.agreement_min needs data.metric = 'top1'"):
        from_table(_table(budgets={"agreement_min": 0.9}), path=tmp_path / "r.toml")
    with pytest.raises(UserError, match="unknown key 'budgets.cosine_mn'.*did you mean 'cosine_min'"):
        from_table(_table(budgets={"cosine_mn": 0.9}), path=tmp_path / "r.toml")
    with pytest.raises(UserError, match="op_types names 'Atention'.*did you mean 'Attention'"):
        from_table(_table(stages=[{"kind": "export_transformer"}, {"kind": "dynamic_int8", "op_types": ["Atention"]}]),
                   path=tmp_path / "r.toml")


def test_pydoc_sentences_split_and_tokenize_to_a_fixed_length():
    test, train = load_pydoc("test"), load_pydoc("train")
    assert len(test) == PYDOC_TEST_SIZE and len(train) > 1000 and not set(test) & set(train)
    feeds = _feeds(8)
    assert {k: v.shape for k, v in feeds.items()} == {k: (8, SEQUENCE_LENGTH) for k in feeds}
    assert all(v.dtype == np.int64 for v in feeds.values())
    mask = feeds["attention_mask"]
    assert (mask[:, 0] == 1).all() and (feeds["input_ids"][mask == 0] == 0).all()  # padded with [PAD] = 0


def test_neighbour_agreement_and_cosine_budget():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20, 8))
    same = _similarity(reference * 3.0, reference)  # scale does not matter
    assert same["cosine"] == pytest.approx(1.0) and same["top5_agreement"] == 1.0
    noisy = _similarity(reference + rng.standard_normal((20, 8)), reference)
    assert noisy["cosine_min"] < noisy["cosine"] < 1.0 and noisy["top5_agreement"] < 1.0
    checks = gate.evaluate(Budgets(cosine_min=0.99), final={"cosine": noisy["cosine"]}, reference={}, stage="q")
    assert [(c.budget, c.passed) for c in checks] == [("cosine_min", False)]
