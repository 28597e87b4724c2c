"""`export_transformer`: a torch text encoder -> ONNX that ONNX Runtime's transformer fusion recognises.

Inputs are int64 input_ids, attention_mask and token_type_ids of shape batch x sequence length:
the batch axis is dynamic, the sequence axis fixed at the model's input shape (padded inputs).
The TorchScript exporter is used because its graph of eager attention is the pattern
`onnxruntime.transformers` fuses; the model's head count and width go into the ONNX metadata,
so the fusion stage needs no settings. Parity with PyTorch is checked on real sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepress.core.errors import UserError
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import setting
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

# ONNX metadata keys: what onnxruntime.transformers.optimizer needs to know about the attention.
NUM_HEADS_KEY = "edgepress.num_attention_heads"
HIDDEN_SIZE_KEY = "edgepress.hidden_size"


@dataclass(frozen=True)
class TransformerExportSettings:
    opset: int = setting(17, help="the ONNX opset, 14 to 20 (the TorchScript exporter's range)")
    parity_atol: float = setting(1e-4, help="the largest |difference| allowed between torch's and ONNX Runtime's "
                                            "embeddings")
    parity_samples: int = setting(64, help="sentences of the first evaluation set on which the export is checked "
                                           "against torch")

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 20:
            raise ValueError(f"opset must be 14 to 20 (the TorchScript exporter's range), got {self.opset}")
        if self.parity_atol <= 0 or self.parity_samples <= 0:
            raise ValueError("parity_atol and parity_samples must be positive")


def export_transformer(*, model, sequence_length: int, path: Path, opset: int, log) -> None:
    """Write `model` (a SentenceEncoder-like module: input_names, output_name, example_inputs) to `path`."""
    import onnx
    import torch

    names = list(model.input_names)
    with tool_output_to(log):
        try:
            torch.onnx.export(model, model.example_inputs(batch=2, sequence_length=sequence_length), str(path),
                              dynamo=False, opset_version=opset, input_names=names, output_names=[model.output_name],
                              dynamic_axes={name: {0: "batch"} for name in [*names, model.output_name]})
        except Exception as exc:
            raise UserError(f"torch.onnx.export of the text model failed: {' '.join(str(exc).split())[:240]}",
                            fix="load the model with attn_implementation='eager', or try another opset") from None
    exported = onnx.load(str(path))
    onnx.helper.set_model_props(exported, {NUM_HEADS_KEY: str(model.num_heads),
                                           HIDDEN_SIZE_KEY: str(model.hidden_size)})
    onnx.save(exported, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def run(source: Artifact, settings: TransformerExportSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress.io import torch_artifact
    from edgepress.runtime.session import open_session, predict_feeds

    model, input_shape, _ = torch_artifact.load(source.path)
    if not hasattr(model, "example_inputs"):
        raise UserError("export_transformer takes a text encoder, and this model has no example_inputs()",
                        fix='use kind = "export" for an image model')
    out = ctx.output_path("onnx")
    ctx.log(f"exporting with the TorchScript exporter, opset {settings.opset}, sequence length {input_shape[0]}")
    export_transformer(model=model, sequence_length=input_shape[0], path=out, opset=settings.opset, log=ctx.log)

    text = ctx.data.evaluation[0]
    feeds = {name: values[:settings.parity_samples] for name, values in text.feeds.items()}
    with torch.no_grad():
        expected = model(*[torch.from_numpy(feeds[name]) for name in model.input_names]).numpy()
    got = predict_feeds(open_session(out, threads=ctx.threads), feeds, batch_size=16)
    max_abs_diff = float(np.max(np.abs(expected - got)))
    ctx.log(f"parity on {len(got)} sentences of {text.name}: max |diff| {max_abs_diff:.3g}")
    if max_abs_diff > settings.parity_atol:
        raise UserError(f"ONNX export differs from PyTorch: max |diff| {max_abs_diff:.3g} of the embeddings "
                        f"(tolerance {settings.parity_atol})",
                        fix="check the model for ops the exporter maps differently, or raise parity_atol")
    return StageOutput(artifact=Artifact(path=out, format="onnx"),
                       metrics={"parity": {"samples": int(len(got)), "max_abs_diff": max_abs_diff},
                                "opset": settings.opset, "sequence_length": int(input_shape[0])})


STAGE = StageDef(kind="export_transformer", settings_type=TransformerExportSettings, input_format="torch",
                 output_format="onnx", run=run, modalities=("text",),
                 summary="text encoder -> ONNX (TorchScript exporter, fixed sequence length), parity on real sentences")
