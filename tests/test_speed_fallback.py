"""compress/quant/speed_fallback.py: the units it couples, the float borders it closes, its sign test, and the search
(real quantization; a deterministic score where the test needs one, real interleaved timing where it does not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgepress.compress.ptq import PtqSettings, quantize

from edgepress.compress.quant.static import prepared_graph
from edgepress.compress.quant.speed_fallback import (faster_in_rounds, quantize_float_where_faster, search, units,
                                               with_float_neighbours)
from edgepress.export.export import ExportSettings, export_onnx


class HardSwishNet(torch.nn.Module):
    """conv + hardswish, conv + relu, a squeeze-excitation gate, a bare conv, a residual add, pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)
        self.project = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.stem(x))
        z = torch.relu(self.body(y))
        gate = torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(z.mean((2, 3), keepdim=True)))))
        z = self.project(z * gate) + y
        return self.head(z.mean((2, 3)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("speed")
    source = folder / "net.onnx"
    export_onnx(model=HardSwishNet().eval(), input_shape=(3, 12, 12), path=source, settings=ExportSettings(),
                log=lambda _: None)
    graph = folder / "graph.onnx"
    prepared_graph(source, graph, settings=PtqSettings(), log=lambda _: None)
    x = np.random.default_rng(0).normal(size=(32, 3, 12, 12)).astype(np.float32)
    return source, graph, x


def test_units_couple_each_compute_node_with_its_activation_tail(model):
    _, graph, _ = model
    found = {unit.nodes[0]: unit for unit in units(graph)}
    ops = {n.name: n.op_type for n in onnx.load(str(graph)).graph.node}
    assert sorted(ops[name] for name in found) == ["Conv"] * 5 + ["Gemm"]
    tails = sorted(unit.tail for unit in found.values())
    # stem: HardSwish as HardSigmoid + Mul; fc2: HardSigmoid and the gate's Mul; body and fc1: Relu (body's Relu
    # also feeds the gate's Mul); project and head: nothing.
    assert tails.count("") == 2 and tails.count("HardSigmoid+Mul") == 2 and "Relu" in tails
    assert all(ops[name] not in ("Conv", "Gemm") for unit in found.values() for name in unit.nodes[1:])


def test_float_neighbours_are_the_nodes_fed_only_by_float(model):
    _, graph, _ = model
    nodes = onnx.load(str(graph)).graph.node
    every_unit = tuple(name for unit in units(graph) for name in unit.nodes)
    closed = with_float_neighbours(graph, every_unit)
    assert set(closed) == {n.name for n in nodes}  # everything in float: nothing left to quantize
    first = units(graph)[0].nodes
    assert set(with_float_neighbours(graph, first)) == set(first)  # the stem's output also feeds INT8 nodes


@pytest.mark.parametrize(("speedup", "wins", "kept"), [(0.9, 20, True), (0.97, 17, True), (0.9, 12, False),
                                                       (1.0, 0, False), (1.1, 20, False)])
def test_sign_test_keeps_only_a_clear_majority_of_faster_rounds(speedup, wins, kept):
    rounds, runs = 20, 10
    best = np.random.default_rng(1).uniform(0.99, 1.01, size=(rounds, runs))
    factor = np.where(np.arange(rounds) < wins, speedup, 1.02)[:, None]
    assert faster_in_rounds((best * factor).ravel(), best.ravel(), rounds)[0] is kept


def session_nodes(path: Path) -> int:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def test_search_keeps_exactly_the_changes_its_score_prefers(model, tmp_path):
    """A deterministic score, the session's node count: the search must end no worse than all-INT8, keep only
    trials that lowered it, and hand back the model it scored."""
    source, graph, x = model
    made: list[Path] = []

    def quantize_excluding(names):
        made.append(tmp_path / f"c{len(made)}.onnx")
        quantize(source=source, out=made[-1], calibration=x, settings=PtqSettings(nodes_to_exclude=names))
        return made[-1]

    def time_pair(candidate, best):
        return (np.full(40, float(session_nodes(candidate))), np.full(40, float(session_nodes(best))))

    best, found = search(float_model=graph, quantize_excluding=quantize_excluding, time_pair=time_pair, rounds=20,
                         log=lambda _: None)
    assert session_nodes(best) <= session_nodes(made[0])
    assert found["trials"] and all((t["ratio_to_best"] < 1.0) == t["kept"] for t in found["trials"])
    if any(t["kept"] for t in found["trials"]):
        assert best != made[0] and found["float_compute_nodes"]
    assert set(found["float_compute_nodes"]) <= {unit.nodes[0] for unit in units(graph)}


def test_ptq_float_where_faster_records_its_choice(model, tmp_path):
    source, _, x = model
    out = tmp_path / "faster.onnx"
    done = quantize_float_where_faster(source=source, out=out, calibration=x,
                                       settings=PtqSettings(float_where_faster=True), threads=1, target_isas=None,
                                       log=lambda _: None)
    record = done["float_where_faster"]
    assert record["units"] == 6 and record["trials"] and all("ratio_to_best" in t for t in record["trials"])
    floats = set(record["float_compute_nodes"])
    assert {n for n, p in done["node_precision"].items() if p == "fp32"} == floats
    assert {f["node"] for f in done["fp32_fallback"]} == floats
    reference = ort.InferenceSession(str(source)).run(None, {"input": x})[0]
    found = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    assert np.mean(found.argmax(1) == reference.argmax(1)) >= 0.8
