"""accuracy_aware_ptq on real ONNX Runtime sessions: the goal holds on held-out images, the most
sensitive node is the one kept in FP32, the search's candidates follow the CPU, and bad input fails in one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgepress
from edgepress.compress.accuracy_aware_ptq import AccuracyAwarePtqSettings, candidates, search
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.runtime.isa import Isa, local_isa, parse_cpuinfo
from tests.conftest import requires_shared_data, write_recipe

AVX2 = Isa(arch="x86_64")


class OutlierNet(torch.nn.Module):
    """A conv net big enough for INT8 to beat FP32. Conv `c3` has one huge weight per output channel,
    on an input channel that is always zero: harmless in FP32, but per-channel INT8 then rounds the
    channel's other weights to zero, so quantizing c3 alone ruins the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.c4 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.fc = torch.nn.Linear(64, 10)
        with torch.no_grad():
            self.c2.weight[0] = 0.0
            self.c2.bias[0] = -1.0  # channel 0 of c3's input: relu(-1) = 0 everywhere
            largest = self.c3.weight.abs().amax(dim=(1, 2, 3))
            self.c3.weight[:, 0, 1, 1] = 200.0 * largest
            self.fc.bias.zero_()

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y))
        y = torch.relu(self.c3(y))
        y = torch.relu(self.c4(y))
        features = torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        # Centred, so that the untrained net's answer depends on the image rather than on one feature's bias.
        return self.fc(features - features.mean(1, keepdim=True))


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    export_onnx(model=OutlierNet().eval(), input_shape=(3, 32, 32), path=path, settings=ExportSettings(), log=lambda _: None)
    return path


def images(n: int, seed: int = 0) -> np.ndarray:
    """Noise around a colour of its own per image, so the untrained net does not answer one class."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3, 32, 32)) + 2.0 * rng.normal(size=(n, 3, 1, 1))).astype(np.float32)


def conv_names(path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def top1(path, x) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)


def settings(**overrides) -> AccuracyAwarePtqSettings:
    base = dict(min_agreement=0.75, calibration_samples=128, validation_samples=300, sensitivity_samples=64,
                calibration_methods=("minmax",), latency_rounds=4, latency_runs_per_round=10)
    return AccuracyAwarePtqSettings(**{**base, **overrides})


def test_cpuinfo_decides_which_schemes_are_fast():
    avx2 = parse_cpuinfo("flags\t\t: fpu sse4_2 avx avx2 fma\n", machine="x86_64")
    vnni = parse_cpuinfo("flags\t\t: avx2 avx512f avx512_vnni\n", machine="x86_64")
    arm = parse_cpuinfo("Features\t: fp asimd asimddp\n", machine="aarch64")
    assert (avx2.vnni, avx2.u8s8_saturates, sorted(avx2.slow_schemes())) == (False, True, ["s8s8", "u8u8"])
    assert (vnni.vnni, vnni.u8s8_saturates, sorted(vnni.slow_schemes())) == (True, False, ["u8u8"])
    assert (arm.arch, arm.dot_product, arm.u8s8_saturates, arm.slow_schemes()) == ("aarch64", True, False, {})
    assert local_isa().arch in ("x86_64", "aarch64")


def test_candidates_follow_the_cpu_and_warn_about_slow_schemes():
    warnings: list[str] = []
    found = [c.name for c in candidates(settings(calibration_methods=("minmax", "percentile")), isa=AVX2,
                                        warn=warnings.append)]
    # Without VNNI: the two ways around U8S8 saturation, no S8S8 or U8U8 (slower than FP32 here).
    assert found == ["u8s8+guard minmax", "u8s8+guard percentile", "u8s8+reduce_range minmax",
                     "u8s8+reduce_range percentile"]
    assert not warnings
    on_arm = [c.name for c in candidates(settings(), isa=Isa(arch="aarch64", dot_product=True), warn=warnings.append)]
    assert on_arm == ["u8s8 minmax", "s8s8 minmax", "u8u8 minmax"]
    asked = [c.name for c in candidates(settings(schemes=("s8s8",)), isa=AVX2, warn=warnings.append)]
    assert asked == ["s8s8 minmax"]
    assert len(warnings) == 1 and "s8s8 has no fast kernel" in warnings[0] and "VNNI" in warnings[0]


@pytest.mark.slow
def test_the_sensitive_node_falls_back_and_the_goal_holds_on_held_out_images(outlier_onnx, tmp_path):
    calibration = images(600)
    labels = top1(outlier_onnx, calibration)  # FP32's own answers: accuracy drop equals disagreement
    out = tmp_path / "int8.onnx"
    log: list[str] = []
    done = search(source=outlier_onnx, out=out, calibration=calibration, validation_labels=labels,
                  settings=settings(), threads=1, isa=local_isa(), log=log.append)
    found = done["search"]
    assert found["agreement"] >= 0.75
    # Without fallback every candidate misses; the fallback keeps c3, the outlier conv, first.
    assert all(t["agreement"] < 0.75 for t in found["trials"] if t["fp32_nodes"] == 0), found["trials"]
    assert done["fp32_fallback"][0]["node"] == conv_names(outlier_onnx)[2]
    assert "output error" in done["fp32_fallback"][0]["reason"]
    fallen = {f["node"] for f in done["fp32_fallback"]}
    assert {n for n, p in done["node_precision"].items() if p == "fp32"} == fallen
    assert sum(p == "int8" for p in done["node_precision"].values()) >= 3
    assert found["p50_vs_fp32"] < 1.0  # the stage refuses to ship an INT8 model slower than FP32
    # Re-measured independently on the same held-out images (the search's seeded split).
    held_out = np.random.default_rng(0).permutation(600)[128:428]
    agreement = np.mean(top1(out, calibration[held_out]) == labels[held_out])
    assert agreement == pytest.approx(found["agreement"])


@pytest.mark.slow
def test_an_unreachable_goal_is_one_line_and_writes_nothing(outlier_onnx, tmp_path):
    out = tmp_path / "int8.onnx"
    calibration = images(600)
    with pytest.raises(UserError) as error:
        search(source=outlier_onnx, out=out, calibration=calibration, validation_labels=top1(outlier_onnx, calibration),
               settings=settings(max_fp32_nodes=0), threads=1, isa=local_isa(), log=lambda _: None)
    assert "no INT8 configuration meets the goal" in error.value.one_line() and "qat" in error.value.fix
    assert not out.exists()
    # A goal no fallback can reach (INT8 50 points more accurate than FP32): the error says that even
    # every compute node in FP32 misses, which points at the activations.
    with pytest.raises(UserError) as error:
        search(source=outlier_onnx, out=out, calibration=calibration, validation_labels=top1(outlier_onnx, calibration),
               settings=settings(min_agreement=None, max_accuracy_drop_points=-50.0, fallback_candidates=1),
               threads=1, isa=local_isa(), log=lambda _: None)
    assert "even with all 5 compute nodes in FP32" in error.value.one_line(), error.value.one_line()
    assert not out.exists()


def test_too_few_held_out_images_and_unknown_nodes_are_one_line_errors(outlier_onnx, tmp_path):
    calibration = images(300)
    with pytest.raises(UserError) as error:
        search(source=outlier_onnx, out=tmp_path / "a.onnx", calibration=calibration,
               validation_labels=np.zeros(300, dtype=np.int64), settings=settings(calibration_samples=200),
               threads=1, isa=local_isa(), log=lambda _: None)
    assert "only 100 of 300 remain" in str(error.value) and "at least 500" in error.value.fix
    with pytest.raises(UserError) as error:
        search(source=outlier_onnx, out=tmp_path / "b.onnx", calibration=images(600),
               validation_labels=np.zeros(600, dtype=np.int64), settings=settings(nodes_to_exclude=(conv_names(outlier_onnx)[2] + "x",)),
               threads=1, isa=local_isa(), log=lambda _: None)
    assert repr(conv_names(outlier_onnx)[2]) in error.value.fix
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    with pytest.raises(ValueError, match="min_agreement and/or max_accuracy_drop_points"):
        AccuracyAwarePtqSettings()


@pytest.mark.slow
@requires_shared_data
def test_stage_in_a_recipe_reports_every_node_precision(tmp_path):
    """The real ResNet-20 through export and accuracy_aware_ptq: the report names the chosen
    configuration and every compute node's precision, and the goal held on the validation images."""
    recipe = write_recipe(tmp_path, text='''
        name = "resnet20-accurate"
        [model]
        name = "cifar_resnet20"
        checkpoint = "{data}/weights/resnet20-12fca82f.th"
        [data]
        calibration = { dataset = "cifar10:train_raw_5085", limit = 1024 }
        evaluation = [{ dataset = "cifar10:test_raw_1017" }]
        preprocess = { scale = 0.00392156862745098, mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }
        [[stages]]
        kind = "export"
        [[stages]]
        kind = "accuracy_aware_ptq"
        min_agreement = 0.97
        calibration_methods = ["minmax"]
        validation_samples = 512
        [target]
        threads = 1
        ''')
    ran = edgepress.run(recipe, out=tmp_path / "out")
    assert ran.gate.passed, ran.gate.violations
    report = ran.to_json_dict()
    quantization = report["stages"][-1]["metrics"]["quantization"]
    assert quantization["search"]["agreement"] >= 0.97 and quantization["search"]["validation_samples"] == 512
    assert len(quantization["node_precision"]) == 20  # 19 convs and the linear layer
    assert quantization["int8_nodes"] + quantization["float_nodes"] == 20
    assert report["stages"][-1]["metrics"]["agreement"] >= 0.95  # on test_raw_1017, which the search never saw
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Node precision: stage `accuracy_aware_ptq`" in markdown and "Chosen: u8s8" in markdown


@pytest.mark.slow
def test_any_model_searches_against_a_goal_of_its_metrics_budgets(outlier_onnx, tmp_path):
    """No labels, no top-1: the goal is a fidelity budget (snr_db_min), met on held-out samples by falling back
    the outlier conv, exactly as an agreement goal would be."""
    from edgepress.measure.metrics import METRICS
    from edgepress.measure.task import Task

    calibration = images(600)
    log: list[str] = []
    done = search(source=outlier_onnx, out=tmp_path / "int8.onnx", calibration={"input": calibration},
                  validation_labels=None, task=Task(METRICS["fidelity"]), log=log.append, threads=1, isa=local_isa(),
                  settings=settings(min_agreement=None, goal={"snr_db_min": 25.0}))
    found = done["search"]
    assert found["goal"]["snr_db_min"] == 25.0 and found["snr_db_min"] >= 25.0 and "agreement" not in found
    assert any(t["snr_db_min"] < 25.0 for t in found["trials"] if t["fp32_nodes"] == 0), found["trials"]
    assert done["fp32_fallback"] and found["p50_vs_fp32"] < 1.0
    assert any("snr_db_min" in line for line in log)
    with pytest.raises(ValueError, match="goal names 'snr_min', no budget of a metric: did you mean 'snr_db_min'"):
        settings(goal={"snr_min": 25.0})
