"""`train`: supervised training or fine-tuning of a torch model on the recipe's training set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepress.progress import Progress
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")


def run(source: Artifact, settings: TrainSettings, ctx: StageContext) -> StageOutput:
    import numpy as np
    import torch

    from edgepress import torch_artifact

    torch.manual_seed(settings.seed)
    model, input_shape, builder = torch_artifact.load(source.path)
    train_set = ctx.data.training
    inputs = torch.from_numpy(train_set.inputs)
    labels = torch.from_numpy(train_set.labels)
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                                    weight_decay=settings.weight_decay, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = (len(inputs) + settings.batch_size - 1) // settings.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate,
                                                   total_steps=settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    progress = Progress("train epochs", total=settings.epochs)
    history = []
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(inputs), settings.batch_size):
            index = order[start:start + settings.batch_size]
            logits = model(inputs[index])
            loss = torch.nn.functional.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == labels[index]).sum())
        record = {"epoch": epoch + 1, "loss": total_loss / len(inputs), "train_accuracy": correct / len(inputs)}
        history.append(record)
        ctx.log(f"epoch {epoch + 1}: loss {record['loss']:.4f}, train accuracy {record['train_accuracy']:.4f}")
        progress.update(epoch + 1, note=f"loss {record['loss']:.3f} acc {record['train_accuracy']:.3f}")
    model.eval()
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=model, builder=builder, input_shape=input_shape)
    return StageOutput(artifact=Artifact(path=out, format="torch"),
                       metrics={"train": {"samples": int(len(inputs)), "history": history,
                                          "final_loss": float(np.round(history[-1]["loss"], 6))}})


STAGE = StageDef(kind="train", settings_type=TrainSettings, input_format="torch", output_format="torch", run=run, needs=("training",),
                 summary="supervised training or fine-tuning on [data.training]")
