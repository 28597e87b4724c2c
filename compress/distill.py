"""`distill`: fine-tune the student with a teacher's soft targets (Hinton et al.).

loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, labels)
       [+ hint_weight * sum over hint pairs of MSE(adapter(student feature), teacher feature)]
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.compress.loop import LoopSettings, fit, resume_key
from edgepress.errors import UserError
from edgepress.schema import bounded, within
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class DistillSettings(LoopSettings):
    alpha: float = 0.9
    temperature: float = within(0, 1000, default=4.0, low_open=True)
    teacher: str = "reference"  # a stage name whose model teaches; "reference" = the recipe's reference_stage
    hint_layers: tuple[str, ...] = ()  # student module names whose outputs follow the teacher's (feature loss)
    hint_teacher_layers: tuple[str, ...] = ()  # the teacher's module for each; empty = the same names
    hint_weight: float = within(0, 10**6, default=1.0)

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


def run(source: Artifact, settings: DistillSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress import torch_artifact
    from edgepress.compress.hints import FeatureHints

    teacher_stage = ctx.recipe.reference_stage if settings.teacher == "reference" else settings.teacher
    teacher_artifact = ctx.artifacts.get(teacher_stage)
    if teacher_artifact is None or teacher_artifact.format != "torch":
        done = [name for name, a in ctx.artifacts.items() if a.format == "torch"]
        raise UserError(f"teacher {teacher_stage!r} is not a finished torch stage before this one",
                        fix=f"set teacher to one of {', '.join(done)}")
    teacher, _, _ = torch_artifact.load(teacher_artifact.path)
    student, input_shape, builder = torch_artifact.load(source.path)
    probe = torch.zeros(2, *input_shape)
    with torch.no_grad():
        shapes = (tuple(teacher(probe).shape), tuple(student(probe).shape))
    if shapes[0] != shapes[1]:
        raise UserError(f"teacher {teacher_stage!r} outputs {list(shapes[0])[1:]} per sample but the student "
                        f"outputs {list(shapes[1])[1:]}", fix="choose a teacher trained on the same classes")
    hints = None
    if settings.hint_layers:
        hints = FeatureHints(student=student, teacher=teacher, student_layers=settings.hint_layers,
                             teacher_layers=settings.hint_teacher_layers or settings.hint_layers, probe=probe,
                             teacher_role=f"(stage {teacher_stage!r})", seed=settings.seed)
        for pair in hints.pairs:
            ctx.log(f"hint: student {pair.student_layer} {list(pair.student_shape)} -> teacher {pair.teacher_layer} "
                    f"{list(pair.teacher_shape)}, adapter {pair.adapter}")
    train_set = ctx.data.training
    ctx.log(f"teacher: stage {teacher_stage!r} ({teacher_artifact.path})")

    loss_fn = teacher_loss_fn(teacher, alpha=settings.alpha, temperature=settings.temperature,
                              label_smoothing=settings.label_smoothing, hints=hints, hint_weight=settings.hint_weight)

    try:
        history = fit(student, inputs=torch.from_numpy(train_set.inputs), labels=torch.from_numpy(train_set.labels),
                      settings=settings, loss_fn=loss_fn, resume_dir=ctx.resume_dir,
                      key=resume_key(source_sha256=ctx.source_sha256, settings=settings), log=ctx.log, label="distill",
                      extra_modules=hints.adapters if hints is not None else None)
    finally:
        if hints is not None:
            hints.close()  # the adapters end here: the artifact is the student alone
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=student, builder=builder, input_shape=input_shape)
    metrics = {"teacher": teacher_stage, "samples": int(len(train_set.inputs)), "epochs_run": len(history),
               "history": history}
    if hints is not None:
        metrics["hints"] = {"weight": settings.hint_weight, "pairs": [pair.as_metrics() for pair in hints.pairs]}
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics={"distill": metrics})


def check_names(settings: DistillSettings, model) -> None:
    from edgepress.layer_names import require_layers

    require_layers(model, settings.hint_layers, setting="hint_layers")


STAGE = StageDef(kind="distill", settings_type=DistillSettings, input_format="torch", output_format="torch", run=run,
                 needs=("training",), check_names=check_names, summary="knowledge distillation from a teacher stage on [data.training]")
