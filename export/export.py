"""`export`: torch model -> ONNX (dynamic batch axis), checked, and proven equal on real inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgepress.core.errors import UserError
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import setting
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

@dataclass(frozen=True)
class ExportSettings:
    opset: int = setting(18, help="the ONNX opset, 17 or later; 18 is the dynamo exporter's own (converting down to "
                                  "17 fails for Pad)")
    exporter: Literal["dynamo", "torchscript"] = setting(
        "dynamo", help='torch.onnx.export\'s exporter: "dynamo" (torch.export) or "torchscript" (tracing); try the '
                       "other when one fails")
    parity_atol: float = setting(1e-3, help="the largest |difference| allowed between torch's and ONNX Runtime's "
                                            "outputs on the parity samples, plus parity_rtol's share")
    # A barely-trained net with BatchNorm still at its initial statistics can give logits of 1e6, where the two
    # runtimes' different summation orders alone differ by 10.
    parity_rtol: float = setting(1e-5, help="float32 rounding grows with the numbers rounded: the allowed gap is "
                                            "parity_atol plus this share, in [0, 1), of the largest |output|")
    parity_min_agreement: float = setting(1.0, help="a classifier's least share, in [0, 1], of parity samples on "
                                                    "which torch and ONNX Runtime pick the same top-1 class")
    parity_samples: int = setting(256, help="samples of the first evaluation set on which the export is checked "
                                            "against torch")

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


def export_onnx(*, model, path, settings: ExportSettings, log, input_shape: tuple[int, ...] | None = None,
                example: dict[str, np.ndarray] | None = None) -> list[str]:
    """Export with a dynamic batch axis on every input and output, named as edgepress/io/torch_outputs.py names
    them (so every stage's outputs line up by name). `example`: a few real samples per input (any dtypes, several
    inputs); else zeros of `input_shape` for a one-input model. Returns the output names."""
    import torch

    from edgepress.io.torch_outputs import flatten, input_names

    if example is None:
        example = {"input": np.zeros((2, *input_shape), dtype=np.float32)}

    inputs = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())
    names = list(input_names(model))[:len(inputs)]
    with torch.no_grad():
        outputs = list(flatten(model(*inputs)))
    with tool_output_to(log):
        try:
            if settings.exporter == "dynamo":
                batch = torch.export.Dim("batch")
                torch.onnx.export(model, inputs, str(path), opset_version=settings.opset, dynamo=True,
                                  external_data=False,  # one self-contained file: the artifact a release ships
                                  input_names=names, output_names=outputs,
                                  dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False)
            else:
                torch.onnx.export(model, inputs, str(path), opset_version=settings.opset, dynamo=False,
                                  input_names=names, output_names=outputs,
                                  dynamic_axes={name: {0: "batch"} for name in names + outputs})
        except Exception as exc:
            reason = " ".join(str(exc).split())[:240]
            other = "torchscript" if settings.exporter == "dynamo" else "dynamo"
            raise UserError(f"torch.onnx.export ({settings.exporter}) failed: {reason}",
                            fix=f'try exporter = "{other}" in the export stage, or make the model traceable') from None
    return outputs


def check_parity(torch_outputs: np.ndarray | dict[str, np.ndarray], ort_outputs: np.ndarray | dict[str, np.ndarray],
                 settings: ExportSettings, *, class_output: str | None = "output") -> dict[str, float]:
    """The parity metrics over every output; a UserError where ONNX Runtime's outputs stray from torch's beyond
    the tolerance (atol plus rtol of the largest |output|), or, for a classifier (`class_output`), where their
    top-1 classes differ more than parity_min_agreement allows."""
    if not isinstance(torch_outputs, dict):
        torch_outputs, ort_outputs = {"output": torch_outputs}, {"output": ort_outputs}
    max_abs_diff = max(float(np.max(np.abs(torch_outputs[k].astype(np.float64) - ort_outputs[k]), initial=0.0))
                       for k in torch_outputs)
    largest = max(float(np.max(np.abs(v), initial=0.0)) for v in torch_outputs.values())
    tolerance = settings.parity_atol + settings.parity_rtol * largest
    found = {"max_abs_diff": max_abs_diff, "tolerance": tolerance}
    if class_output is not None:
        found["top1_agreement"] = float(np.mean(torch_outputs[class_output].argmax(1) == ort_outputs[class_output].argmax(1)))
    agreement = found.get("top1_agreement", 1.0)
    if max_abs_diff > tolerance or agreement < settings.parity_min_agreement:
        raise UserError(f"ONNX export differs from PyTorch: max |diff| {max_abs_diff:.3g} (tolerance {tolerance:.3g})"
                        + (f", top-1 agreement {agreement:.4f} (minimum {settings.parity_min_agreement})"
                           if class_output is not None else ""),
                        fix="check the model for ops the exporter maps differently, or raise parity_atol if the gap is expected")
    return found


def run(source: Artifact, settings: ExportSettings, ctx: StageContext) -> StageOutput:
    import onnx

    from edgepress.io import torch_artifact
    from edgepress.measure.evaluation import outputs as run_outputs

    model, _, _ = torch_artifact.load(source.path)
    out = ctx.output_path("onnx")
    reference = ctx.data.evaluation[0].head(settings.parity_samples)
    ctx.log(f"exporting with the {settings.exporter} exporter, opset {settings.opset}")
    export_onnx(model=model, example={k: v[:2] for k, v in reference.feeds.items()}, path=out, settings=settings,
                log=ctx.log)
    onnx.checker.check_model(str(out), full_check=True)

    torch_outputs = run_outputs(source, reference, batch_size=64)
    ort_outputs = run_outputs(Artifact(path=out, format="onnx"), reference, batch_size=64)
    if list(torch_outputs) != list(ort_outputs):
        raise UserError(f"the ONNX model's outputs {list(ort_outputs)} are not the torch model's {list(torch_outputs)}",
                        fix='try exporter = "torchscript" in the export stage')
    classes = ctx.task is not None and ctx.task.metric.key == "top1"
    chosen = (ctx.task.output or next(iter(torch_outputs))) if classes else None
    parity = check_parity(torch_outputs, ort_outputs, settings, class_output=chosen)
    ctx.log(f"parity on {len(reference)} inputs of {reference.name}: max |diff| {parity['max_abs_diff']:.3g} (tolerance "
            f"{parity['tolerance']:.3g})" + (f", top-1 agreement {parity['top1_agreement']:.4f}" if classes else ""))
    return StageOutput(artifact=Artifact(path=out, format="onnx"),
                       metrics={"parity": {"samples": int(len(reference)), **parity}, "opset": _opset(out)})


def _opset(path) -> int:
    import onnx

    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


STAGE = StageDef(kind="export", settings_type=ExportSettings, input_format="torch", output_format="onnx", run=run,
                 summary="torch -> ONNX, checked with onnx.checker and a parity test on real inputs")
