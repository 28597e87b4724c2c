"""`train`: supervised training or fine-tuning of a torch model on the recipe's training set."""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.compress.training.loop import LoopSettings, call, fit, resume_key
from edgepress.core.errors import UserError
from edgepress.core.schema import setting
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class TrainSettings(LoopSettings):
    loss: str | None = setting(
        None, help='your own loss, "package.module:function", called as function(outputs, targets) -> scalar tensor '
                   "(dicts of tensors by name), for a model the recipe's metric has no loss for (a detector's heads); "
                   "unset: the metric's own (cross-entropy for classes and segmentation, mean squared error for "
                   "regression)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss is not None and (":" not in self.loss or not self.loss.rpartition(":")[2].isidentifier()):
            raise ValueError(f"loss {self.loss!r} must look like 'package.module:function'")
        if self.mixup > 0:
            raise ValueError("mixup blends images but not their labels, so it needs a teacher to match: "
                             "use it in a distill or qat stage")


def cross_entropy_loss_fn(*, label_smoothing: float = 0.0, output: str | None = None):
    """The fit() loss of plain supervised training: cross-entropy against the labels (on the named output of a
    model with several)."""
    import torch

    from edgepress.io.torch_outputs import flatten

    def loss_fn(net, batch, target):
        logits = call(net, batch)
        if not isinstance(logits, torch.Tensor):
            outputs = flatten(logits)
            logits = outputs[output or next(iter(outputs))]
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=label_smoothing), logits

    return loss_fn


def task_loss_fn(task, *, label_smoothing: float = 0.0, user_loss: str | None = None):
    """The fit() loss for the recipe's task: cross-entropy for classes (per pixel for segmentation, whose label
    255 counts nowhere), mean squared error for regression, else the user's loss over all outputs by name."""
    import torch

    from edgepress.io.torch_outputs import flatten

    if user_loss is not None:
        from edgepress.models.zoo import import_entry

        function = import_entry(user_loss, role="loss")

        def user_fn(net, batch, target):
            outputs = flatten(call(net, batch))
            return function(outputs, target if isinstance(target, dict) else {"labels": target}), None

        return user_fn
    key = task.metric.key if task is not None else "top1"
    if key == "top1":
        return cross_entropy_loss_fn(label_smoothing=label_smoothing, output=task.output if task else None)

    def chosen(net, batch):
        outputs = flatten(call(net, batch))
        return outputs[task.output or next(iter(outputs))]

    if key == "regression":
        def mse(net, batch, target):
            predicted = chosen(net, batch)
            return torch.nn.functional.mse_loss(predicted, target["targets"].reshape(predicted.shape)), None
        return mse
    if key == "segmentation":
        def pixel_ce(net, batch, target):
            labels = target if not isinstance(target, dict) else target["labels"]
            return torch.nn.functional.cross_entropy(chosen(net, batch), labels.long(), ignore_index=255,
                                                     label_smoothing=label_smoothing), None
        return pixel_ce
    raise UserError(f"edgepress has no loss of its own for data.metric = {key!r}",
                    fix='set loss = "package.module:function" (outputs, targets -> loss) in this stage, or, in a '
                        'distill stage, alpha = 1 (the teacher alone)')


BUILTIN_LOSSES = ("top1", "regression", "segmentation")  # the metrics task_loss_fn has a loss of its own for


def check_loss(task, *, user_loss: str | None, needed: bool = True) -> None:
    """Before any stage: a training stage needs the metric's loss or the user's."""
    if not needed or user_loss is not None or task is None or task.metric.key in BUILTIN_LOSSES:
        return
    why = ("its outputs are not the N x K class scores top1's cross-entropy reads"
           if task.metric.key == "fidelity" else f"edgepress has no loss of its own for {task.metric.key!r}")
    raise UserError(f"a training stage cannot train this model on data.metric = {task.metric.key!r}: {why}",
                    fix='set data.output to its class scores (with labels, metric "top1"), or loss = '
                        '"package.module:function" (outputs, targets -> loss) in that stage')


def training_tensors(samples):
    """(inputs, targets) for fit(): one input as a tensor (augmentation works on it), several as a dict; class
    labels alone as a tensor (accuracy and label checks apply), other targets as a dict."""
    import torch

    feeds = {k: torch.from_numpy(v) for k, v in samples.feeds.items()}
    targets = {k: torch.from_numpy(v) for k, v in (samples.targets or {}).items()}
    if not targets:
        raise UserError(f"training set {samples.name!r} has no targets to train on",
                        fix="give it labels or targets, or train with a teacher (distill)")
    inputs = next(iter(feeds.values())) if len(feeds) == 1 else feeds
    labels = targets["labels"] if list(targets) == ["labels"] else targets
    return inputs, labels


def run(source: Artifact, settings: TrainSettings, ctx: StageContext) -> StageOutput:
    from edgepress.io import torch_artifact

    model, input_shape, builder = torch_artifact.load(source.path)
    train_set = ctx.data.training
    inputs, labels = training_tensors(train_set)
    loss_fn = task_loss_fn(ctx.task, label_smoothing=settings.label_smoothing, user_loss=settings.loss)
    history = fit(model, inputs=inputs, labels=labels,
                  settings=settings, loss_fn=loss_fn, resume_dir=ctx.resume_dir,
                  key=resume_key(source_sha256=ctx.source_sha256, settings=settings), log=ctx.log, label="train")
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=model, builder=builder, input_shape=input_shape)
    return StageOutput(artifact=Artifact(path=out, format="torch"),
                       metrics={"train": {"samples": int(len(train_set)), "epochs_run": len(history),
                                          "history": history}})


STAGE = StageDef(kind="train", settings_type=TrainSettings, input_format="torch", output_format="torch", run=run,
                 needs=("training",), check_task=lambda settings, task: check_loss(task, user_loss=settings.loss), summary="supervised training or fine-tuning on [data.training]")
