"""The detector family (issue 18 a): recipes/fashion-detector-int8.toml, shortened, in-process. The tiny CenterNet
trains with its own loss, every stage is judged by COCO mAP of decoded boxes, and INT8 is gated on the mAP drop."""

from __future__ import annotations

import pytest

import tomllib

import onnx

import edgepress
from edgepress.recipe import from_table
from tests.conftest import ROOT, requires_shared_data


@pytest.mark.slow
@requires_shared_data
def test_the_detector_recipe_trains_quantizes_and_gates_on_map(tmp_path):
    table = tomllib.loads((ROOT / "recipes" / "fashion-detector-int8.toml").read_text())
    table["stages"][0].update(epochs=3, batch_size=32)
    table["data"]["training"]["kwargs"]["count"] = 1500
    table["data"]["evaluation"][0]["kwargs"]["count"] = 200
    table["target"]["latency"] = False  # the models are what is checked here, not their timing
    report = edgepress.run(from_table(table, path=tmp_path / "d.toml"), out=tmp_path / "out").to_json_dict()
    assert report["metric"] == "detection"
    by_name = {s["name"]: s["metrics"] for s in report["stages"]}
    untrained, trained, int8 = by_name["model"], by_name["train"], by_name["int8"]
    assert untrained["map50"] < 0.05 and trained["map50"] > 0.3  # decoded boxes that overlap the garments
    assert trained["map"] < trained["map50"]  # stricter IoU thresholds cost precision
    assert abs(trained["map50"] - int8["map50"]) < 0.05 and int8["snr_db"] > 20
    assert int8["size_bytes"] < 0.5 * by_name["fp32"]["size_bytes"]
    checks = {c["budget"]: c for c in report["gate"]["checks"]}
    assert set(checks) == {"map50_drop_points", "map_drop_points"}
    assert abs(checks["map50_drop_points"]["value"] - 100 * (trained["map50"] - int8["map50"])) < 1e-9
    model = onnx.load(str(tmp_path / "out" / "03-int8" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["heatmap", "size", "offset"]
    assert "mAP@0.5" in (tmp_path / "out" / "report.md").read_text()
