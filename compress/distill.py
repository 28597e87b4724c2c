"""`distill`: fine-tune the student with a teacher's soft targets (Hinton et al.).

loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, labels)
       [+ hint_weight * sum over hint pairs of MSE(adapter(student feature), teacher feature)]
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.compress.training.loop import LoopSettings, call, fit, resume_key
from edgepress.core.errors import UserError
from edgepress.core.schema import bounded, setting, within
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class DistillSettings(LoopSettings):
    alpha: float = setting(0.9, help="weight of matching the teacher (KL on class scores, squared error on other "
                                     "outputs), in [0, 1]; the rest, 1 - alpha, goes to the task's loss on the labels")
    temperature: float = within(0, 1000, default=4.0, low_open=True,
                                help="softmax temperature T of the teacher-matching KL term (scaled by T^2): higher "
                                     "spreads the teacher's probabilities, so the student learns how it ranks the "
                                     "wrong classes too")
    teacher: str = setting("reference", help='the finished torch stage whose model teaches, by name; "reference": '
                                             "the recipe's reference_stage")
    hint_layers: tuple[str, ...] = setting((), help="student module names whose outputs, through a learned adapter, "
                                                    "follow the teacher's (a feature loss); empty: no hints")
    hint_teacher_layers: tuple[str, ...] = setting(
        (), help="the teacher's module for each hint_layers entry, in order; empty: the same names")
    hint_weight: float = within(0, 10**6, default=1.0,
                                help="weight of the hint loss (the summed mean squared errors of the hint pairs)")
    loss: str | None = setting(
        None, help="the (1 - alpha) part, on the targets, for a model whose metric has no loss of its own (a "
                   "detector's heads): \"package.module:function\", called as function(outputs, targets) -> scalar "
                   "tensor, as the train stage's loss")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distillation(alpha=self.alpha, temperature=self.temperature, mixup=self.mixup)
        if self.hint_teacher_layers and len(self.hint_teacher_layers) != len(self.hint_layers):
            raise ValueError(f"hint_teacher_layers must name one teacher layer per hint_layers entry "
                             f"({len(self.hint_layers)}), got {len(self.hint_teacher_layers)}")
        if self.hint_weight < 0:
            raise ValueError(f"hint_weight must be >= 0, got {self.hint_weight}")


def check_distillation(*, alpha: float, temperature: float, mixup: float = 0.0) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if mixup > 0 and alpha < 1.0:
        raise ValueError(f"mixup blends images but not their labels: it needs alpha = 1 (the teacher's outputs only), "
                         f"got alpha = {alpha}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float,
                      label_smoothing: float = 0.0, match: str = "kl"):
    """`match` = "kl": Hinton's soft targets at `temperature`; "logits_mse": the mean squared logit error."""
    import torch.nn.functional as F

    if match == "logits_mse":
        soft = F.mse_loss(student_logits, teacher_logits)
    else:
        soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                        F.log_softmax(teacher_logits / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


def teacher_loss_fn(teacher, *, alpha: float, temperature: float, label_smoothing: float = 0.0, hints=None,
                    hint_weight: float = 0.0, match: str = "kl"):
    """The fit() loss that distills `teacher` into the trained model, with the hint loss when given."""
    import torch

    teacher.eval()

    def loss_fn(net, batch, target):
        if hints is not None:
            hints.reset()
        with torch.no_grad():
            teacher_logits = teacher.to(batch.device)(batch)
        logits = net(batch)
        loss = distillation_loss(logits.float(), teacher_logits.float(), target, alpha=alpha,
                                 temperature=temperature, label_smoothing=label_smoothing, match=match)
        if hints is not None:
            loss = loss + hint_weight * hints.loss()
        return loss, logits

    return loss_fn


def outputs_loss_fn(teacher, *, task, alpha: float, temperature: float, label_smoothing: float = 0.0,
                    hints=None, hint_weight: float = 0.0, user_loss: str | None = None):
    """The fit() loss for any model: per output, KL at `temperature` on a classifier's class scores and the mean
    squared error to the teacher on every other output; (1 - alpha) of it the task's own loss on the targets."""
    import torch
    import torch.nn.functional as F

    from edgepress.compress.train import task_loss_fn
    from edgepress.io.torch_outputs import flatten

    teacher.eval()
    classes = task.output or None if task is not None and task.metric.key == "top1" else None
    hard_fn = task_loss_fn(task, label_smoothing=label_smoothing, user_loss=user_loss) if alpha < 1.0 else None

    def loss_fn(net, batch, target):
        if hints is not None:
            hints.reset()
        with torch.no_grad():
            theirs = flatten(call(teacher, batch))
        ours = flatten(call(net, batch))
        soft = []
        for index, (name, value) in enumerate(ours.items()):
            if not value.is_floating_point():
                continue
            if task is not None and task.metric.key == "top1" and name == (classes or next(iter(ours))):
                soft.append(F.kl_div(F.log_softmax(value.float() / temperature, dim=1),
                                     F.log_softmax(theirs[name].float() / temperature, dim=1),
                                     reduction="batchmean", log_target=True) * temperature ** 2)
            else:
                soft.append(F.mse_loss(value.float(), theirs[name].float()))
        loss = alpha * torch.stack(soft).mean()
        if hard_fn is not None:
            loss = loss + (1.0 - alpha) * hard_fn(net, batch, target)[0]
        if hints is not None:
            loss = loss + hint_weight * hints.loss()
        return loss, next(iter(ours.values()))

    return loss_fn


def run(source: Artifact, settings: DistillSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress.io import torch_artifact
    from edgepress.compress.training.hints import FeatureHints
    from edgepress.compress.train import training_tensors
    from edgepress.io.torch_outputs import flatten

    teacher_stage = ctx.reference_stage if settings.teacher == "reference" else settings.teacher
    teacher_artifact = ctx.artifacts.get(teacher_stage)
    if teacher_artifact is None or teacher_artifact.format != "torch":
        done = [name for name, a in ctx.artifacts.items() if a.format == "torch"]
        raise UserError(f"teacher {teacher_stage!r} is not a finished torch stage before this one",
                        fix=f"set teacher to one of {', '.join(done)}")
    teacher, _, _ = torch_artifact.load(teacher_artifact.path)
    student, input_shape, builder = torch_artifact.load(source.path)
    train_set = ctx.data.training
    inputs, labels = training_tensors(train_set)
    probe = {k: torch.from_numpy(v[:2]) for k, v in train_set.feeds.items()}
    probe = next(iter(probe.values())) if len(probe) == 1 else probe
    with torch.no_grad():
        shapes = [{k: list(v.shape[1:]) for k, v in flatten(call(m, probe)).items()} for m in (teacher, student)]
    if shapes[0] != shapes[1]:
        shown = [s if len(s) > 1 else next(iter(s.values())) for s in shapes]
        raise UserError(f"teacher {teacher_stage!r} outputs {shown[0]} per sample but the student "
                        f"outputs {shown[1]}", fix="choose a teacher trained on the same classes")
    hints = None
    if settings.hint_layers and isinstance(probe, dict):
        raise UserError(f"hint_layers (feature distillation) probe one input, and this model takes {len(probe)}",
                        fix="drop hint_layers from this distill stage: every output is still distilled")
    if settings.hint_layers:
        hints = FeatureHints(student=student, teacher=teacher, student_layers=settings.hint_layers,
                             teacher_layers=settings.hint_teacher_layers or settings.hint_layers, probe=probe,
                             teacher_role=f"(stage {teacher_stage!r})", seed=settings.seed)
        for pair in hints.pairs:
            ctx.log(f"hint: student {pair.student_layer} {list(pair.student_shape)} -> teacher {pair.teacher_layer} "
                    f"{list(pair.teacher_shape)}, adapter {pair.adapter}")
    ctx.log(f"teacher: stage {teacher_stage!r} ({teacher_artifact.path})")

    plain = isinstance(inputs, torch.Tensor) and isinstance(labels, torch.Tensor) and len(shapes[0]) == 1 and (
        ctx.task is None or ctx.task.metric.key == "top1")
    if plain:  # a one-output classifier: Hinton's loss, as always
        loss_fn = teacher_loss_fn(teacher, alpha=settings.alpha, temperature=settings.temperature,
                                  label_smoothing=settings.label_smoothing, hints=hints, hint_weight=settings.hint_weight)
    else:
        loss_fn = outputs_loss_fn(teacher, task=ctx.task, alpha=settings.alpha, temperature=settings.temperature,
                                  label_smoothing=settings.label_smoothing, hints=hints, hint_weight=settings.hint_weight,
                                  user_loss=settings.loss)

    try:
        history = fit(student, inputs=inputs, labels=labels,
                      settings=settings, loss_fn=loss_fn, resume_dir=ctx.resume_dir,
                      key=resume_key(source_sha256=ctx.source_sha256, settings=settings), log=ctx.log, label="distill",
                      extra_modules=hints.adapters if hints is not None else None)
    finally:
        if hints is not None:
            hints.close()  # the adapters end here: the artifact is the student alone
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=student, builder=builder, input_shape=input_shape)
    metrics = {"teacher": teacher_stage, "samples": int(len(train_set)), "epochs_run": len(history),
               "history": history}
    if hints is not None:
        metrics["hints"] = {"weight": settings.hint_weight, "pairs": [pair.as_metrics() for pair in hints.pairs]}
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics={"distill": metrics})


def check_names(settings: DistillSettings, model) -> None:
    from edgepress.core.layer_names import require_layers

    require_layers(model, settings.hint_layers, setting="hint_layers")


def check_task(settings: DistillSettings, task) -> None:
    from edgepress.compress.train import check_loss

    check_loss(task, user_loss=settings.loss, needed=settings.alpha < 1.0)


STAGE = StageDef(kind="distill", settings_type=DistillSettings, input_format="torch", output_format="torch", run=run,
                 needs=("training",), check_names=check_names, check_task=check_task, summary="knowledge distillation from a teacher stage on [data.training]")
