"""`export`: torch model -> ONNX (dynamic batch axis), checked, and proven equal on real inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgepress.errors import UserError
from edgepress.progress import tool_output_to
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportSettings:
    opset: int = 18  # the dynamo exporter's own; converting down to 17 fails for Pad
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    parity_atol: float = 1e-3
    # Float32 rounding grows with the numbers rounded: the allowed gap is parity_atol plus this share of
    # the largest |logit| (a barely-trained net with BatchNorm still at its initial statistics can give
    # logits of 1e6, where the two runtimes' different summation orders alone differ by 10).
    parity_rtol: float = 1e-5
    parity_min_agreement: float = 1.0
    parity_samples: int = 256

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"opset must be 17 or later, got {self.opset}")
        if self.parity_atol <= 0:
            raise ValueError("parity_atol must be positive")
        if not 0 <= self.parity_rtol < 1:
            raise ValueError("parity_rtol is a share in [0, 1)")
        if not 0.0 <= self.parity_min_agreement <= 1.0:
            raise ValueError("parity_min_agreement is a share in [0, 1]")
        if self.parity_samples <= 0:
            raise ValueError("parity_samples must be positive")


def export_onnx(*, model, input_shape: tuple[int, ...], path, settings: ExportSettings, log) -> None:
    import torch

    example = torch.zeros(2, *input_shape)
    with tool_output_to(log):
        try:
            if settings.exporter == "dynamo":
                torch.onnx.export(model, (example,), str(path), opset_version=settings.opset, dynamo=True,
                                  external_data=False,  # one self-contained file: the artifact a release ships
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            else:
                torch.onnx.export(model, (example,), str(path), opset_version=settings.opset, dynamo=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as exc:
            reason = " ".join(str(exc).split())[:240]
            other = "torchscript" if settings.exporter == "dynamo" else "dynamo"
            raise UserError(f"torch.onnx.export ({settings.exporter}) failed: {reason}",
                            fix=f'try exporter = "{other}" in the export stage, or make the model traceable') from None


def check_parity(torch_logits: np.ndarray, ort_logits: np.ndarray, settings: ExportSettings) -> dict[str, float]:
    """The parity metrics; a UserError where ONNX Runtime's logits stray from torch's beyond the tolerance."""
    max_abs_diff = float(np.max(np.abs(torch_logits - ort_logits)))
    tolerance = settings.parity_atol + settings.parity_rtol * float(np.max(np.abs(torch_logits)))
    agreement = float(np.mean(torch_logits.argmax(1) == ort_logits.argmax(1)))
    if max_abs_diff > tolerance or agreement < settings.parity_min_agreement:
        raise UserError(f"ONNX export differs from PyTorch: max |diff| {max_abs_diff:.3g} (tolerance {tolerance:.3g}), "
                        f"top-1 agreement {agreement:.4f} (minimum {settings.parity_min_agreement})",
                        fix="check the model for ops the exporter maps differently, or raise parity_atol if the gap is expected")
    return {"max_abs_diff": max_abs_diff, "tolerance": tolerance, "top1_agreement": agreement}


def run(source: Artifact, settings: ExportSettings, ctx: StageContext) -> StageOutput:
    import onnx
    import torch

    from edgepress import torch_artifact
    from edgepress.runtime.session import open_session, predict

    model, input_shape, _ = torch_artifact.load(source.path)
    out = ctx.output_path("onnx")
    ctx.log(f"exporting with the {settings.exporter} exporter, opset {settings.opset}")
    export_onnx(model=model, input_shape=input_shape, path=out, settings=settings, log=ctx.log)
    onnx.checker.check_model(str(out), full_check=True)

    reference = ctx.data.evaluation[0]
    inputs = reference.inputs[: settings.parity_samples]
    with torch.no_grad():
        torch_logits = torch.cat([model(torch.from_numpy(inputs[i:i + 64])) for i in range(0, len(inputs), 64)]).numpy()
    session = open_session(out, threads=ctx.recipe.target.threads)
    ort_logits = predict(session, inputs, batch_size=64)
    parity = check_parity(torch_logits, ort_logits, settings)
    ctx.log(f"parity on {len(inputs)} inputs of {reference.name}: max |diff| {parity['max_abs_diff']:.3g} (tolerance "
            f"{parity['tolerance']:.3g}), top-1 agreement {parity['top1_agreement']:.4f}")
    return StageOutput(
        artifact=Artifact(path=out, format="onnx"),
        metrics={"parity": {"samples": int(len(inputs)), **parity},
                 "opset": _opset(out)},
    )


def _opset(path) -> int:
    import onnx

    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


STAGE = StageDef(kind="export", settings_type=ExportSettings, input_format="torch", output_format="onnx", run=run,
                 summary="torch -> ONNX, checked with onnx.checker and a parity test on real inputs")
