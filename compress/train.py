"""`train`: supervised training or fine-tuning of a torch model on the recipe's training set."""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.compress.loop import LoopSettings, fit, resume_key
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class TrainSettings(LoopSettings):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixup > 0:
            raise ValueError("mixup blends images but not their labels, so it needs a teacher to match: "
                             "use it in a distill or qat stage")


def cross_entropy_loss_fn(*, label_smoothing: float = 0.0):
    """The fit() loss of plain supervised training: cross-entropy against the labels."""
    import torch

    def loss_fn(net, batch, target):
        logits = net(batch)
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=label_smoothing), logits

    return loss_fn


def run(source: Artifact, settings: TrainSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress import torch_artifact

    model, input_shape, builder = torch_artifact.load(source.path)
    train_set = ctx.data.training
    history = fit(model, inputs=torch.from_numpy(train_set.inputs), labels=torch.from_numpy(train_set.labels),
                  settings=settings, loss_fn=cross_entropy_loss_fn(label_smoothing=settings.label_smoothing), resume_dir=ctx.resume_dir,
                  key=resume_key(source_sha256=ctx.source_sha256, settings=settings), log=ctx.log, label="train")
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=model, builder=builder, input_shape=input_shape)
    return StageOutput(artifact=Artifact(path=out, format="torch"),
                       metrics={"train": {"samples": int(len(train_set.inputs)), "epochs_run": len(history),
                                          "history": history}})


STAGE = StageDef(kind="train", settings_type=TrainSettings, input_format="torch", output_format="torch", run=run,
                 needs=("training",), summary="supervised training or fine-tuning on [data.training]")
