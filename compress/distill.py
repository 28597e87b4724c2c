"""`distill`: fine-tune the student with a teacher's soft targets (Hinton et al.).

loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, labels)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepress.compress.loop import LoopSettings, fit, resume_key
from edgepress.errors import UserError
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class DistillSettings(LoopSettings):
    alpha: float = 0.9
    temperature: float = 4.0
    teacher: str = "reference"  # a stage name whose model teaches; "reference" = the recipe's reference_stage

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float,
                      label_smoothing: float = 0.0):
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


def run(source: Artifact, settings: DistillSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress import torch_artifact

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
    train_set = ctx.data.training
    ctx.log(f"teacher: stage {teacher_stage!r} ({teacher_artifact.path})")

    def loss_fn(net, batch, target):
        with torch.no_grad():
            teacher_logits = teacher.to(batch.device)(batch)
        logits = net(batch)
        return distillation_loss(logits.float(), teacher_logits.float(), target, alpha=settings.alpha,
                                 temperature=settings.temperature, label_smoothing=settings.label_smoothing), logits

    history = fit(student, inputs=torch.from_numpy(train_set.inputs), labels=torch.from_numpy(train_set.labels),
                  settings=settings, loss_fn=loss_fn, resume_dir=ctx.resume_dir,
                  key=resume_key(source_sha256=ctx.source_sha256, settings=settings), log=ctx.log, label="distill")
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=student, builder=builder, input_shape=input_shape)
    return StageOutput(artifact=Artifact(path=out, format="torch"),
                       metrics={"distill": {"teacher": teacher_stage, "samples": int(len(train_set.inputs)),
                                            "epochs_run": len(history), "history": history}})


STAGE = StageDef(kind="distill", settings_type=DistillSettings, input_format="torch", output_format="torch", run=run,
                 needs=("training",), summary="knowledge distillation from a teacher stage on [data.training]")
