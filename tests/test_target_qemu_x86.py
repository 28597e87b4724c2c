"""The qemu-x86_64 target for real: this machine's Python and ONNX Runtime under qemu-user as an AVX2 CPU without
VNNI, whose U8S8 kernels add pairs of products in int16. What it checks is the saturation guard's reason to be:
on that CPU an unguarded INT8 conv saturates and a guarded one does not, while this VNNI machine runs both."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepress.compress.ptq import PtqSettings, quantize

from edgepress.compress.quant.static import resolve_guard
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.targets import TargetOptions, known_isa, open_target

pytestmark = pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (apt install qemu-user)")


class SignedInputConv(torch.nn.Module):
    """One conv on a signed input with large positive weights: neighbouring u8 x s8 products reach 255 x 127, and
    a pair of them overflows int16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(0.5, 1.0, self.conv.weight.numel()).reshape(self.conv.weight.shape))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x).flatten(1)


def predict_emulated(target: str, model: Path, inputs: Path, into: Path) -> np.ndarray:
    out = f"out-{target.replace(':', '-')}-{model.stem}.npz"
    result = open_target(target, options=TargetOptions()).run(
        files=[model, inputs], fetch=[out], into=into, timeout_s=300,
        args=["predict", model.name, "--inputs", inputs.name, "--out", out, "--batch-size", "16"])
    assert result["device"]["emulated_cpu"] == target.partition(":")[2]
    with np.load(into / out) as found:
        return next(iter(found.values()))


def predict_here(model: Path, x: np.ndarray) -> np.ndarray:
    from edgepress.runtime.session import open_session, predict

    return predict(open_session(model, threads=1), x, batch_size=16)


@pytest.mark.slow
def test_unguarded_u8s8_saturates_on_avx2_and_the_guard_holds(tmp_path):
    source = tmp_path / "conv.onnx"
    export_onnx(model=SignedInputConv().eval(), input_shape=(4, 8, 8), path=source, settings=ExportSettings(),
                log=lambda _: None)
    x = np.random.default_rng(0).uniform(-1, 1, size=(32, 4, 8, 8)).astype(np.float32)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=x)
    avx2 = known_isa("qemu-x86_64:Haswell")
    models = {}
    for guard in ("off", "uint8_weights"):
        models[guard] = tmp_path / f"int8-{guard}.onnx"
        done = quantize(source=source, out=models[guard], calibration=x, settings=PtqSettings(saturation_guard=guard))
        assert done["saturation_guard"] == guard
    error = {}
    for guard, model in models.items():
        here, emulated = predict_here(model, x), predict_emulated("qemu-x86_64:Haswell", model, inputs, tmp_path)
        error[guard] = float(np.abs(here - emulated).max() / np.abs(here).max())
    # Unguarded, the AVX2 kernel's int16 pair sums clip: far from this machine's int32 answers.
    assert error["off"] > 0.05, error
    # Guarded (uint8 weights, a kernel that widens before it adds): the same answers up to rounding.
    assert error["uint8_weights"] < 0.01, error
    # And ptq's automatic guard chooses the guard for a recipe that also names this target.
    assert resolve_guard("auto", scheme="u8s8", target_isas=[known_isa("local"), avx2])[0] == "uint8_weights"


@pytest.mark.slow
def test_bench_runs_there_and_is_marked_emulated(tmp_path):
    source = tmp_path / "conv.onnx"
    export_onnx(model=SignedInputConv().eval(), input_shape=(4, 8, 8), path=source, settings=ExportSettings(),
                log=lambda _: None)
    result = open_target("qemu-x86_64:Nehalem").run(files=[source], timeout_s=300,
                                                    args=["bench", source.name, "--runs", "12", "--warmup", "1",
                                                          "--epochs", "6"])
    assert result["device"]["emulated_cpu"] == "Nehalem" and result["runs"] == 12
    assert open_target("qemu-x86_64").emulated and open_target("qemu-x86_64").name == "qemu-x86_64:Haswell"


def test_a_misspelt_cpu_names_the_closest():
    with pytest.raises(UserError, match="did you mean qemu-x86_64:Haswell"):
        open_target("qemu-x86_64:haswel")
    with pytest.raises(UserError, match=r"qemu-x86_64\[:CPU\]"):
        open_target("qemu-x86_64:")


def test_each_target_names_the_cpu_its_kernels_run_on():
    from edgepress.runtime.isa import local_isa

    assert known_isa("local") == local_isa()
    assert known_isa("qemu-x86_64:Nehalem").u8s8_saturates and known_isa("qemu-x86_64").u8s8_saturates
    assert known_isa("qemu-aarch64:cortex-a76").dot_product and not known_isa("qemu-aarch64:cortex-a53").dot_product
    assert not known_isa("qemu-aarch64").u8s8_saturates
    assert known_isa("ssh://pi@board") is None  # not known before the device is reached: ptq's auto guard guards
